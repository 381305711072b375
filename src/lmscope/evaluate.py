"""Whole-split evaluation of a checkpoint on a corpus: `lmscope.evaluate(model_or_path, corpus)`.

The loss itself (non-overlapping windows, unknown characters left out, bits per character) is
metrics/losses.py; this module finds the corpus, encodes the split with the checkpoint's
tokenizer and names the result.
"""

from __future__ import annotations

from lmscope.data import corpora
from lmscope.data.tokens import encode_to_file
from lmscope.errors import LmscopeError
from lmscope.metrics.losses import EvalResult, evaluate_token_file
from lmscope.run.checkpoint import as_checkpoint


def evaluate(model_or_path, corpus: str, split: str = "val", *, batch_size: int = 32,
             val_fraction: float | None = None) -> EvalResult:
    """Whole-split loss of a checkpoint (or a path to one) on a corpus (a name or a path)."""
    ckpt = as_checkpoint(model_or_path)
    if val_fraction is None:  # the split the model was trained with, where the checkpoint says
        val_fraction = ckpt.meta.get("run_config", {}).get("data", {}).get("val_fraction", 0.1)
    try:
        found = corpora.resolve(corpus, val_fraction=val_fraction)
    except LmscopeError as e:  # name what the user asked for: an evaluation
        raise LmscopeError(f"cannot evaluate on {corpus} ({split} split): {e}") from None
    if split not in found.splits:
        raise LmscopeError(f"corpus {found.name} has no split {split!r}; "
                           f"it has {', '.join(found.splits)}")
    token_file = encode_to_file(found, split, ckpt.tokenizer)
    result = evaluate_token_file(ckpt.model, token_file, block_size=ckpt.model.context_length,
                                 unk_id=ckpt.tokenizer.unk_id, corpus=found.name, split=split,
                                 batch_size=batch_size)
    result.checkpoint = str(ckpt.path)
    return result
