"""Next-token cross-entropy: summed over batches in float64, and a whole split as an EvalResult.

A whole split is cut into non-overlapping windows of the model's context length
(`data.tokens.eval_windows`); every token after the first is predicted exactly once, from the
tokens before it in its window. Targets that are the tokenizer's unknown character (text outside a
char model's vocabulary) are left out of the mean and reported as the out-of-vocabulary rate.

bits per character = total nats / ln 2 / characters of text the predicted tokens cover, so models
with different tokenizers (char, byte, BPE) are comparable.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lmscope.data.tokens import eval_windows
from lmscope.device import one_thread_each
from lmscope.errors import LmscopeError


@dataclass
class EvalResult:
    corpus: str
    split: str
    loss: float  # mean cross-entropy, nats per predicted token
    bits_per_char: float
    n_tokens: int  # predicted tokens counted in the loss
    n_chars: int  # characters of text in the split
    n_unknown: int  # characters outside the vocabulary (left out of the loss)
    checkpoint: str = ""

    @property
    def oov_rate(self) -> float:
        return self.n_unknown / max(self.n_chars, 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "oov_rate": self.oov_rate}


def summed_nll(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sum (float64) of the cross-entropies of logits (batch, time, vocab) against targets
    (batch, time), and how many targets were counted: targets of -1 are left out."""
    total = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1,
                            reduction="sum").double()
    return total, (targets >= 0).sum()


def batches_nll(model, batches: Iterable, *, device, unk_id: int | None = None,
                autocast=None, threaded: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed cross-entropy (float64) of `model` over batches of (inputs, targets), and how
    many targets were counted (float64), `unk_id` targets left out. With `threaded`, on a CPU
    each batch is computed on one thread, several at once (device.one_thread_each), so the sums
    are the same whatever the thread count; without, one after another in this thread (what a
    torch.compile'd model needs). `autocast` (a context manager) is entered around each forward
    pass."""
    autocast = contextlib.nullcontext() if autocast is None else autocast

    @torch.no_grad()
    def batch_nll(batch):
        x, y = (t.to(device) for t in batch)
        if unk_id is not None:
            y = y.masked_fill(y == unk_id, -1)
        with autocast:
            return summed_nll(model(x), y)

    sums = (one_thread_each(batch_nll, batches, device) if threaded
            else [batch_nll(batch) for batch in batches])
    zero = torch.zeros((), dtype=torch.float64, device=device)
    return sum((nll for nll, _ in sums), zero), sum((n.double() for _, n in sums), zero)


def token_nll(model, tokens: np.ndarray, *, block_size: int, batch_size: int = 32,
              unk_id: int | None = None, device=None) -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods (nats) over a token array, and how many were
    counted; the same whatever the thread count (batches_nll)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    try:
        total, count = batches_nll(model, eval_windows(tokens, block_size, batch_size),
                                   device=device, unk_id=unk_id)
    finally:
        model.train(was_training)
    return float(total), int(count)


def evaluate_token_file(model, token_file, *, block_size: int, unk_id: int | None,
                        corpus: str = "", split: str = "val", batch_size: int = 32) -> EvalResult:
    """The whole-split loss of `model` on an encoded split (a data.tokens.TokenFile)."""
    nats, count = token_nll(model, token_file.tokens, block_size=block_size,
                            batch_size=batch_size, unk_id=unk_id)
    if count == 0:
        raise LmscopeError(f"nothing to score in corpus {corpus or '?'} split {split}: "
                           f"{len(token_file.tokens)} tokens, {token_file.n_unknown} characters "
                           "outside the model's vocabulary")
    n_tok = len(token_file.tokens)
    # The first token of the split is never predicted: count the characters the predictions cover.
    chars_covered = token_file.n_chars * (n_tok - 1) / max(n_tok, 1)
    return EvalResult(
        corpus=corpus, split=split, loss=nats / max(count, 1),
        bits_per_char=nats / math.log(2) / max(chars_covered - token_file.n_unknown, 1),
        n_tokens=count, n_chars=token_file.n_chars, n_unknown=token_file.n_unknown,
    )
