"""Attention tracking during training: how the attention patterns of a GPT change as it learns.

Every `track.attention_every` iterations the trainer hands the model to `AttentionTracker.capture`,
which runs it in eval mode, without gradients, on a fixed probe batch (`track.attention_batch`
windows of the validation split, evenly spaced, the same at every capture and in every run on the
same text), turns the attention probabilities into the metrics of
`lmscope.metrics.attention.attention_summary` (entropy, span, head diversity, cross-layer
similarity) and appends them as one line of RUN/attention.jsonl. With `track.save_maps=true` the
raw maps are also kept, as RUN/attention/iter_XXXXXXX.safetensors (float16, one tensor per layer,
(batch, head, query, key)); they are large, so this is off by default.

Every `track.heads_every` iterations (and at iteration 0 and the end) `HeadsTracker.capture`
measures what lmscope.metrics.heads defines, in eval mode without gradients, and appends one line
to RUN/heads.jsonl:

    {"iter", "seq_len", "n_sequences", "first_half_loss", "second_half_loss", "uniform_loss",
     "windows", "early_loss", "late_loss", "icl_score", "seconds",
     "previous_token", "duplicate_token", "induction", "first_token"}

The induction losses (nats) are on `HEADS_SEQUENCES` sequences of seq_len // 2 random tokens
repeated once (seq_len: the largest even length <= model.block_size), drawn once, when the
tracker is made, from their own generator seeded with `HEADS_SEED` (never from the training
generator), without the unknown id: the same sequences as `lmscope probe heads` reads with its
defaults (--n-sequences 8 --seed 0), so the two agree on a checkpoint of the same iteration. The ICL
score (late minus early loss, nats) is on the fixed probe batch above (`track.attention_batch`
windows of the validation split; unknown targets left out). Each detector key (GPT only; absent
for the LSTM and the k-gram MLP) holds the scores per layer and head, [[layer 0's heads], ...].
A number that cannot be computed (an ICL band whose targets are all unknown) is null.

Every `track.dynamics_every` iterations (and at iteration 0 and the end) `DynamicsTracker.capture`
appends to RUN/dynamics.jsonl what lmscope.metrics.dynamics.training_dynamics measures on the same
fixed probe batch (unknown targets left out): each weight matrix's Frobenius norm, spectral norm
and effective rank, the norm of its gradient on the probe batch, each layer's gradient norm, the
probe loss and the whole gradient's norm:

    {"iter", "seconds", "probe_loss", "grad_norm", "weight_norm": {matrix: .},
     "spectral_norm": {matrix: .}, "effective_rank": {matrix: .}, "matrix_grad_norm": {matrix: .},
     "layer_grad_norm": {layer: .}}

The gradients come from torch.autograd.grad, in eval mode: no parameter's .grad is written.

The captures draw no random numbers and leave the model in training mode, so a run with tracking
follows the same trajectory as one without. Each tracker has `kind` (its TensorBoard logger's
method), `every` (its interval) and `path` (its JSON-lines file).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmscope.io import atomic_write
from lmscope.metrics.attention import attention_summary
from lmscope.metrics.dynamics import training_dynamics
from lmscope.metrics.heads import (
    allowed_ids,
    check_seq_len,
    has_heads,
    icl_losses,
    repeated_random_tokens,
    repeated_run,
)
from lmscope.run.run_dir import RunDir


class AttentionTracker:
    kind = "attention"

    def __init__(self, run_dir: Path, probe: torch.Tensor, *, save_maps: bool, every: int = 0):
        run = RunDir(run_dir)
        self.every = every
        self.path = run.attention_file
        self.maps_dir = run.attention_maps_dir if save_maps else None
        self.probe = probe
        self.seconds = 0.0  # time spent capturing, for the overhead in summary.json

    @torch.no_grad()
    def capture(self, model, it: int) -> dict:
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        _, attentions = model.forward_with_attention(self.probe.to(device))
        attentions = [a.float() for a in attentions]
        model.train(was_training)
        row = {"iter": it, **attention_summary(attentions)}
        if self.maps_dir is not None:
            tensors = {f"layer_{i}": a.to(torch.float16).cpu().contiguous()
                       for i, a in enumerate(attentions)}
            path = self.maps_dir / f"iter_{it:07d}.safetensors"
            atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
        self.seconds += _append_row(self.path, row, start)
        return row


HEADS_SEQUENCES = 8  # repeated random sequences the head detectors read
HEADS_SEED = 0  # their generator's seed


class HeadsTracker:
    """Head detectors, induction losses and the ICL score of the model being trained."""

    kind = "heads"

    def __init__(self, run_dir: Path, model, windows: torch.Tensor, *, unk_id: int | None,
                 every: int = 0):
        self.path = RunDir(run_dir).heads_file
        self.every = every
        exclude = () if unk_id is None else (unk_id,)
        self.seq_len = check_seq_len(model, None)
        vocab = model.config.vocab_size
        self.ids = repeated_random_tokens(vocab, self.seq_len, HEADS_SEQUENCES, seed=HEADS_SEED,
                                          exclude=exclude)
        self.n_allowed = allowed_ids(vocab, exclude).numel()
        self.heads = has_heads(model)
        self.windows = windows
        self.mask = None if unk_id is None else windows[:, 1:] != unk_id
        self.seconds = 0.0  # time spent capturing

    def capture(self, model, it: int) -> dict:
        start = time.perf_counter()
        scores, losses = repeated_run(model, self.ids, n_allowed=self.n_allowed,
                                      heads=self.heads)
        early, late = icl_losses(model, self.windows, self.mask)
        row = {"iter": it, "seq_len": self.seq_len, "n_sequences": HEADS_SEQUENCES,
               "first_half_loss": losses.first_half, "second_half_loss": losses.second_half,
               "uniform_loss": losses.uniform, "windows": self.windows.size(0),
               "early_loss": _finite(early), "late_loss": _finite(late),
               "icl_score": _finite(late - early)}
        for detector, values in (scores or {}).items():
            row[detector] = values.tolist()
        self.seconds += _append_row(self.path, row, start)
        return row


class DynamicsTracker:
    """Weight and probe-gradient statistics of the model being trained (lmscope.metrics.dynamics)."""

    kind = "dynamics"

    def __init__(self, run_dir: Path, windows: torch.Tensor, *, unk_id: int | None,
                 every: int = 0):
        self.path = RunDir(run_dir).dynamics_file
        self.every = every
        self.windows = windows
        self.mask = None if unk_id is None else windows[:, 1:] != unk_id
        self.seconds = 0.0  # time spent capturing

    def capture(self, model, it: int) -> dict:
        start = time.perf_counter()
        row = {"iter": it, **training_dynamics(model, self.windows, self.mask)}
        self.seconds += _append_row(self.path, row, start)
        return row


def _append_row(path: Path, row: dict, start: float) -> float:
    """Append `row`, with the seconds since `start` that the capture took, to a JSON-lines file;
    returns the seconds, writing included."""
    row["seconds"] = round(time.perf_counter() - start, 4)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    return time.perf_counter() - start


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
