"""Prompt files: the texts the probes (softmax, attribution) read, with what is known about them.

A prompt file is TOML, one [[prompt]] table per prompt:

    [[prompt]]
    name = "romeo"                 # optional (default p1, p2, ...)
    text = "ROMEO:\\nBut soft, what light through yonder windo"
    domain = "shakespeare"         # optional: a corpus name, or "in" / "out"
    expected = "w"                 # optional: the true next character
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lmscope.data.corpora import REGISTRY, corpus_label
from lmscope.errors import LmscopeError
from lmscope.io import path_exists, user_path
from lmscope.settings import load_toml


@dataclass
class Prompt:
    name: str
    text: str
    domain: str = ""  # a corpus name, or "in" / "out"; "" when not given
    expected: str | None = None  # the true next character (or token), when known

    def in_domain(self, corpus: str) -> bool | None:
        """Whether the prompt is in the domain of a model trained on `corpus` (None: unknown)."""
        if self.domain in ("in", "out"):
            return self.domain == "in"
        if not self.domain or not corpus:
            return None
        return corpus_label(self.domain) == corpus_label(corpus)

    def domain_of(self, corpus: str) -> str:
        return {True: "in-domain", False: "out-of-domain", None: "unknown"}[self.in_domain(corpus)]


def load_prompts(path: str | Path) -> list[Prompt]:
    """Read a prompt file (see the module docstring); every problem is one clear error."""
    raw = load_toml(path, "prompt file")
    unknown = set(raw) - {"prompt"}
    if unknown:
        raise LmscopeError(f"prompt file {path}: unknown table {sorted(unknown)[0]!r}; "
                           "write each prompt as a [[prompt]] table")
    items = raw.get("prompt", [])
    if not isinstance(items, list) or not items:
        raise LmscopeError(f"prompt file {path} has no prompts: add [[prompt]] tables with "
                           "text = \"...\"")
    prompts, names = [], set()
    for i, item in enumerate(items, 1):
        where = f"prompt file {path}, prompt {i}"
        if not isinstance(item, dict):
            raise LmscopeError(f"{where}: must be a [[prompt]] table")
        extra = set(item) - {"name", "text", "domain", "expected"}
        if extra:
            raise LmscopeError(f"{where}: unknown key {sorted(extra)[0]!r} "
                               "(keys: name, text, domain, expected)")
        for key in ("name", "text", "domain", "expected"):
            if key in item and not isinstance(item[key], str):
                raise LmscopeError(f"{where}: {key} must be a string")
        text = item.get("text", "")
        if not text:
            raise LmscopeError(f"{where}: text is missing or empty")
        name = item.get("name") or f"p{i}"
        if name in names:
            raise LmscopeError(f"{where}: the name {name!r} is used twice")
        names.add(name)
        expected = item.get("expected")
        if expected is not None and expected == "":
            raise LmscopeError(f"{where}: expected is empty (leave it out, or give the character)")
        prompts.append(Prompt(name=name, text=text, domain=item.get("domain", ""),
                              expected=expected))
    return prompts


def check_domains(prompts: list[Prompt], corpora: Iterable[str], path) -> list[str]:
    """A domain that is not "in", "out", a corpus of the registry, one of `corpora` (the models'
    own) or an existing path, but is close to one of those names, is a typo: an error with the
    suggestion (it would count the prompt as out-of-domain). Other unknown names are corpora
    of another model (a prompt file written for a study): returned, for the probe to say that
    it counted them as out-of-domain."""
    known = {corpus_label(c) for c in [*REGISTRY, *corpora] if c}
    other = []
    for prompt in prompts:
        domain = prompt.domain
        if domain in ("", "in", "out") or corpus_label(domain) in known or \
                path_exists(user_path(domain)):
            continue
        close = difflib.get_close_matches(corpus_label(domain), sorted(known) + ["in", "out"],
                                          n=1, cutoff=0.75)
        if close:
            raise LmscopeError(f"prompt file {path}, prompt {prompt.name!r}: domain {domain!r} is "
                               f"not a corpus name; did you mean {close[0]!r}? (give a corpus of "
                               "`lmscope data list`, the model's own corpus, or \"in\" / \"out\")")
        other.append(domain)
    return sorted(set(other))


def check_prompt_fits(prompt: Prompt, tokenizer, context_length: int) -> list[int]:
    """The prompt's token ids, or an error naming the prompt (unknown characters, too long)."""
    try:
        ids = tokenizer.encode(prompt.text, unknown="error")
    except LmscopeError as e:
        raise LmscopeError(f"prompt {prompt.name!r}: {e}") from None
    if len(ids) > context_length:
        raise LmscopeError(f"prompt {prompt.name!r} has {len(ids)} tokens, more than the model's "
                           f"context of {context_length}")
    return ids


def expected_id(prompt: Prompt, tokenizer) -> int | None:
    """The token id of the prompt's expected next character (None when it gives none)."""
    if prompt.expected is None:
        return None
    try:
        ids = tokenizer.encode(prompt.expected, unknown="error")
    except LmscopeError as e:
        raise LmscopeError(f"prompt {prompt.name!r}: expected {prompt.expected!r}: {e}") from None
    if len(ids) != 1:
        raise LmscopeError(f"prompt {prompt.name!r}: expected {prompt.expected!r} is "
                           f"{len(ids)} tokens for this tokenizer; give one")
    return ids[0]
