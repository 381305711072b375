"""Attention tracking during training: how the attention patterns of a GPT change as it learns.

Every `track.attention_every` iterations the trainer hands the model to `AttentionTracker.capture`,
which runs it in eval mode, without gradients, on a fixed probe batch (`track.attention_batch`
windows of the validation split, evenly spaced, the same at every capture and in every run on the
same text), turns the attention probabilities into the metrics of
`lmscope.metrics.attention.attention_summary` (entropy, span, head diversity, cross-layer
similarity) and appends them as one line of RUN/attention.jsonl. With `track.save_maps=true` the
raw maps are also kept, as RUN/attention/iter_XXXXXXX.safetensors (float16, one tensor per layer,
(batch, head, query, key)); they are large, so this is off by default.

The capture draws no random numbers and leaves the model in training mode, so a run with tracking
follows the same trajectory as one without.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from lmscope.io import atomic_write
from lmscope.metrics.attention import attention_summary
from lmscope.run.run_dir import RunDir


def probe_batch(tokens: np.ndarray, block_size: int, n: int) -> torch.Tensor:
    """`n` windows of `block_size` tokens, evenly spaced over `tokens` (no randomness)."""
    last = len(tokens) - block_size
    starts = np.linspace(0, max(last, 0), num=n).round().astype(np.int64)
    return torch.from_numpy(np.stack([tokens[s:s + block_size] for s in starts]).astype(np.int64))


class AttentionTracker:
    def __init__(self, run_dir: Path, probe: torch.Tensor, *, save_maps: bool):
        run = RunDir(run_dir)
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
        row["seconds"] = round(time.perf_counter() - start, 4)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self.seconds += time.perf_counter() - start
        return row
