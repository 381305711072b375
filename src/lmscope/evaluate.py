"""Whole-split evaluation of a checkpoint on a corpus: `lmscope.evaluate(model_or_path, corpus)`.

The loss itself (non-overlapping windows, unknown characters left out, bits per character) is
metrics/losses.py; this module finds the corpus, encodes the split with the checkpoint's
tokenizer and names the result.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from lmscope.data import corpora
from lmscope.data.tokens import encode_to_file, spaced_windows
from lmscope.errors import LmscopeError
from lmscope.metrics.losses import EvalResult, evaluate_token_file
from lmscope.run.checkpoint import as_checkpoint


def _split_tokens(ckpt, corpus: str, split: str, val_fraction: float | None, what: str):
    """The token file of a corpus split encoded with the checkpoint's tokenizer."""
    if val_fraction is None:  # the split the model was trained with, where the checkpoint says
        val_fraction = ckpt.meta.get("run_config", {}).get("data", {}).get("val_fraction", 0.1)
    try:
        found = corpora.resolve(corpus, val_fraction=val_fraction)
    except LmscopeError as e:  # name what the user asked for
        raise LmscopeError(f"cannot {what} on {corpus} ({split} split): {e}") from None
    if split not in found.splits:
        raise LmscopeError(f"corpus {found.name} has no split {split!r}; "
                           f"it has {', '.join(found.splits)}")
    return found, encode_to_file(found, split, ckpt.tokenizer)


def evaluate(model_or_path, corpus: str, split: str = "val", *, batch_size: int = 32,
             val_fraction: float | None = None) -> EvalResult:
    """Whole-split loss of a checkpoint (or a path to one) on a corpus (a name or a path).

    A run's final checkpoint holds its trainer's whole-split evaluation of its own validation
    split (meta "val_evals", each with the name of the token file it read): asked for that
    same token file (the same text, split and tokenizer), the result is read back, not computed
    a second time (`reused_eval`)."""
    ckpt = as_checkpoint(model_or_path)
    found, token_file = _split_tokens(ckpt, corpus, split, val_fraction, "evaluate")
    result = reused_eval(ckpt.meta, token_file.path.name, found.name, split)
    if result is None:
        result = evaluate_token_file(ckpt.model, token_file,
                                     block_size=ckpt.model.context_length,
                                     unk_id=ckpt.tokenizer.unk_id, corpus=found.name,
                                     split=split, batch_size=batch_size)
    result.checkpoint = str(ckpt.path)
    return result


def reused_eval(meta: dict, token_file: str, corpus: str, split: str) -> EvalResult | None:
    """The EvalResult a checkpoint's meta holds for `token_file` (a token file's name: the
    fingerprints of the corpus's text and splits and of the tokenizer), named `corpus`; None
    when it holds none."""
    names = {f.name for f in fields(EvalResult)}
    for held in meta.get("val_evals", ()):
        if held.get("token_file") == token_file and held.get("split") == split:
            return EvalResult(**{k: v for k, v in held.items() if k in names} | {
                "corpus": corpus, "checkpoint": ""})
    return None


@dataclass
class Windows:
    """Token windows cut from a corpus split, for the probes that read text (lens, ablation, ...)."""

    corpus: str  # the corpus's name
    split: str
    ids: torch.Tensor  # (windows, length) token ids, on the CPU
    starts: list[int]  # where each window starts in the split's tokens
    oov_rate: float  # the split's fraction of characters outside the checkpoint's vocabulary
    unk_id: int | None  # the tokenizer's unknown id: a probe leaves such targets out

    def oov_note(self) -> str | None:
        """What a probe's summary says when some targets were left out (None: none were)."""
        if not self.oov_rate:
            return None
        return (f"{self.corpus}: {self.oov_rate:.2%} of the {self.split} split's characters are "
                "outside the vocabulary; those targets are left out")

    def target_mask(self) -> torch.Tensor:
        """(windows, length - 1): True where the next token is a known one (a probe's targets)."""
        targets = self.ids[:, 1:]
        return torch.ones_like(targets, dtype=torch.bool) if self.unk_id is None \
            else targets != self.unk_id


def corpus_windows(model_or_path, corpus: str, split: str = "val", *, windows: int = 16,
                   length: int | None = None, max_oov_rate: float = 0.05,
                   val_fraction: float | None = None) -> Windows:
    """`windows` windows of `length` tokens (default: the model's context length) from a corpus
    split encoded with the checkpoint's tokenizer, starting at evenly spaced places over the
    whole split (deterministic, no seed). A split whose characters are more than
    `max_oov_rate` outside the vocabulary is an error; a shorter one, too short for one window,
    is an error naming its length."""
    ckpt = as_checkpoint(model_or_path)
    length = ckpt.model.context_length if length is None else length
    if windows < 1 or length < 2:
        raise LmscopeError(f"need at least 1 window of at least 2 tokens, got {windows} of "
                           f"{length}")
    if length > ckpt.model.context_length:
        raise LmscopeError(f"windows of {length} tokens: give at most "
                           f"{ckpt.model.context_length} (the model's context length)")
    found, token_file = _split_tokens(ckpt, corpus, split, val_fraction, "read windows")
    if token_file.oov_rate > max_oov_rate:
        raise LmscopeError(
            f"corpus {found.name}: {token_file.oov_rate:.1%} of the {split} split's characters are "
            f"outside the vocabulary of the checkpoint {ckpt.path} (a probe allows "
            f"{max_oov_rate:.0%}); probe a model whose vocabulary covers this text (trained with "
            "data.vocab_from=[...] or data.tokenizer=byte)")
    n = len(token_file.tokens)
    if n < length:
        raise LmscopeError(f"corpus {found.name}: the {split} split has {n} tokens, fewer than "
                           f"one window of {length}; give a shorter length or a larger corpus")
    starts, ids = spaced_windows(token_file.tokens, length, windows)
    return Windows(found.name, split, ids, starts, token_file.oov_rate, ckpt.tokenizer.unk_id)
