"""The optimizers a run may train with, and several stepped as one.

    adamw   AdamW on every parameter, decay on matrices only (nanoGPT's); fused where it can be
    muon    the modded-nanogpt speedrun's split: torch.optim.Muon (momentum orthogonalised by
            Newton-Schulz iterations; as `BatchedMuon`, which iterates once per shape) on the
            hidden weight matrices of a GPT's blocks, at train.muon_lr; AdamW on everything else
            (embeddings, the head, norms and biases)

`Optimizers` steps several torch optimizers as one: one list of param_groups (each with its
`lr_scale`, the factor of the schedule's learning rate it trains at) and one state_dict whose
parameter indices run across them as a single optimizer's would, so that a run's saved state
and its resumption do not depend on how many there are.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Optimizers:
    """Several optimizers stepped as one (module docstring)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for o in self.optimizers:
            sd = o.state_dict()
            state.update({offset + i: s for i, s in sd["state"].items()})
            groups += [{**g, "params": [offset + i for i in g["params"]]}
                       for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        offset, first = 0, 0
        for o in self.optimizers:
            groups = sd["param_groups"][first:first + len(o.param_groups)]
            first += len(o.param_groups)
            count = sum(len(g["params"]) for g in groups)
            o.load_state_dict({
                "state": {i - offset: s for i, s in sd["state"].items()
                          if offset <= int(i) < offset + count},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]}
                                 for g in groups]})
            offset += count


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon (the same arguments, state and update) whose Newton-Schulz iterations run
    once per shape rather than once per matrix: the momentum updates of every matrix of one
    shape (each turned wide, as torch's does) go through `newton_schulz` stacked, as batched
    bfloat16 matmuls. A small GPT's blocks have 4 shapes for 4 x n_layer matrices, and each
    matrix's own matmuls are too small to keep the cores busy (benchmarks/optimizer_step.py).
    The result is torch's to bfloat16 rounding (tests/train/test_optimizers.py)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            updates = []
            for grad, buf in zip(grads, bufs, strict=True):
                buf.lerp_(grad, 1 - group["momentum"])
                updates.append(grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf)
            by_shape: dict[tuple, list[int]] = {}
            for i, u in enumerate(updates):
                by_shape.setdefault(tuple(sorted(u.shape)), []).append(i)
            lr, decay = group["lr"], group["weight_decay"]
            for indices in by_shape.values():
                wide = torch.stack([updates[i].mT if updates[i].size(0) > updates[i].size(1)
                                    else updates[i] for i in indices])
                ortho = newton_schulz(wide, group["ns_coefficients"], group["ns_steps"],
                                      group["eps"])
                for i, o in zip(indices, ortho, strict=True):
                    p = params[i]
                    o = o.mT if p.size(0) > p.size(1) else o
                    p.mul_(1 - lr * decay)
                    p.add_(o, alpha=-lr * muon_lr_ratio(group["adjust_lr_fn"], p.shape))
        return loss


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz iteration (X <- aX + (bA + cA^2)X, A = XX^T, in
    bfloat16, each matrix first scaled to Frobenius norm 1) on a stack (n, rows, cols) of wide
    matrices (rows <= cols)."""
    a, b, c = coefficients
    x = g.bfloat16()
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x


def muon_lr_ratio(adjust_lr_fn: str | None, shape) -> float:
    """torch.optim.Muon's learning-rate factor for a (rows, cols) matrix: sqrt(max(1, rows/cols))
    ("original", the default), 0.2 sqrt(max(rows, cols)) ("match_rms_adamw")."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


def adamw(groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):  # no fused kernel for this device or torch version
        return torch.optim.AdamW(groups, lr=lr, betas=betas)


def make_optimizer(model: nn.Module, tc) -> torch.optim.Optimizer | Optimizers:
    """The optimizer of train.optimizer for `model` (tc: the run's TrainConfig; muon needs a GPT,
    which RunConfig.validate checks)."""
    params = [p for p in model.parameters() if p.requires_grad]
    betas = (tc.beta1, tc.beta2)
    if tc.optimizer == "adamw":
        return adamw(_decay_groups(params, tc.weight_decay), tc.lr, betas)
    hidden = {id(p) for p in model.blocks.parameters() if p.requires_grad and p.dim() == 2}
    muon = BatchedMuon([p for p in params if id(p) in hidden], lr=tc.muon_lr,
                            weight_decay=tc.weight_decay)
    muon.param_groups[0]["lr_scale"] = tc.muon_lr / tc.lr
    rest = adamw(_decay_groups([p for p in params if id(p) not in hidden], tc.weight_decay),
                 tc.lr, betas)
    return Optimizers([muon, rest])


def _decay_groups(params: list, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (embeddings, linear weights), not on gains and biases."""
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay,
             "lr_scale": 1.0},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr_scale": 1.0}]
