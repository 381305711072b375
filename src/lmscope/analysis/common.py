"""What the probes share: the checkpoints of a run, prompt files, character classes, CSV output."""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmscope.data import corpora
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text

# --- checkpoints ---------------------------------------------------------------------------------

def run_checkpoints(run: str | Path, which: str = "all") -> list[Path]:
    """The checkpoints a probe walks through, oldest first.

    A checkpoint folder gives itself. A run folder gives its scheduled `iter_*` checkpoints and
    `final` (which="all"), or only `final` (which="final"); `best` and `last` are copies of
    states already in that list and are left out.
    """
    from lmscope.train.checkpoint import list_checkpoints, resolve_checkpoint

    path = Path(run)
    if (path / "meta.json").is_file():
        return [path]
    if which == "final":
        return [resolve_checkpoint(path)]
    found = [p for p in list_checkpoints(path) if p.name.startswith("iter_") or p.name == "final"]
    if not found:
        if not path.exists():
            raise LmscopeError(f"{path} does not exist: give a run folder or a checkpoint folder")
        raise LmscopeError(f"{path} holds no checkpoints (no checkpoints/iter_* or final): "
                           "train it first, or give a checkpoint folder")
    return found


def corpus_label(corpus: str) -> str:
    """A short name for a corpus given by registry name or path ('shakespeare', 'notes'); a
    mixture's parts are each shortened ('tinystories:0.7+notes:0.3')."""
    try:
        parts = corpora.parse_mixture(corpus)
    except LmscopeError:
        parts = [(corpus, 1.0)]
    if len(parts) > 1:
        return corpora.mixture_spec([(corpus_label(name), w) for name, w in parts])
    path = Path(parts[0][0])
    return path.stem if path.suffix else path.name or parts[0][0]


def folder_name(corpus: str) -> str:
    """`corpus_label` made fit for a folder name: the mixture a:0.7+b:0.3 gives a0.7-b0.3."""
    return corpus_label(corpus).replace(":", "").replace("+", "-")


def trained_on(checkpoint) -> str:
    """The short name of the corpus a loaded checkpoint was trained on (last, for fine-tuned ones)."""
    if isinstance(checkpoint.meta.get("corpus"), str):  # the registry name, or the file's stem
        return checkpoint.meta["corpus"]
    corpus = checkpoint.meta.get("run_config", {}).get("data", {}).get("corpus", "")
    return corpus_label(corpus) if corpus else ""


# --- prompt files --------------------------------------------------------------------------------

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
    """Read a prompt file; every problem is one clear error. The file is TOML:

        [[prompt]]
        name = "romeo"                 # optional (default p1, p2, ...)
        text = "ROMEO:\\nBut soft, what light through yonder windo"
        domain = "shakespeare"         # optional: a corpus name, or "in" / "out"
        expected = "w"                 # optional: the true next character
    """
    from lmscope.config import load_toml

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


# --- characters ----------------------------------------------------------------------------------

VISIBLE = {" ": "<space>", "\n": "<newline>", "\t": "<tab>", "\r": "<cr>"}
CHAR_CLASSES = ("vowel", "consonant", "digit", "space/newline", "punctuation", "other symbol")


def visible(char: str) -> str:
    """A character as people can read it in a table: <space>, <newline>, U+200B, ..."""
    if char in VISIBLE:
        return VISIBLE[char]
    if len(char) == 1 and unicodedata.category(char)[0] in "CZ":
        return f"U+{ord(char):04X}"
    return char


def char_class(char: str) -> str:
    """vowel, consonant, digit, space/newline, punctuation or other symbol (the seed's classes)."""
    if len(char) != 1:
        return "other symbol"
    if char.isspace():
        return "space/newline"
    base = unicodedata.normalize("NFD", char)[0].lower()
    if base in "aeiou":
        return "vowel"
    if char.isalpha():
        return "consonant"
    if char.isdigit():
        return "digit"
    if unicodedata.category(char).startswith("P"):
        return "punctuation"
    return "other symbol"


# --- tables --------------------------------------------------------------------------------------

def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    def cell(v):
        text = f"{v:.4f}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"
