"""Learning dynamics of a model's parameters: which layer a parameter belongs to, the gradients of
the loss on a fixed probe batch, and the cheap per-matrix statistics tracked during training.

The statistics themselves (norms, effective rank, condition number, Gini and Hoyer sparsity) are
defined in lmscope.metrics.matrices; this module applies them to a model.

Layers. A parameter's layer is read from its name: `tok_emb`, `pos_emb` -> "embed"; a block or
layer number (`blocks.3.`, `mlp.3.`, nn.LSTM's `weight_ih_l3`) -> "3"; anything else (the final
norm, the head) -> "head". The GPT's head shares the token embedding's matrix (weight tying), so
that matrix appears once, as `tok_emb.weight`, and its gradient (from both of its uses, reading
the input and scoring the output) counts in the "embed" layer; a GPT's "head" layer is then only
the final norm.

Probe gradients. The gradient of the mean next-token cross-entropy (nats) over a fixed batch of
token windows, the targets that are not the unknown id (`mask`), with the model in eval mode (no
dropout: no random numbers drawn), computed with torch.autograd.grad, which returns the gradients
without writing any parameter's `.grad`: the training state is untouched. pico-analyze
(github.com/pico-lm/pico-analyze) reads the gradients the training run stored at its checkpoints;
here they are recomputed on the same probe batch at every checkpoint, so they compare across
checkpoints and runs.

Tracked during training (`track.dynamics_every`, RUN/dynamics.jsonl), per 2-D parameter matrix:
its Frobenius norm, spectral norm and effective rank, and its probe gradient's Frobenius norm;
per layer: the Frobenius norm of the gradient of all its parameters together (sqrt of the sum of
squares); the probe loss and the whole model's gradient norm. To keep a capture cheap, the
singular values come from the eigenvalues of the smaller Gram matrix (W W^T or W^T W, float64),
s_i = sqrt(lambda_i): about 5 times faster than an SVD on a CPU, and the same to ~1e-12 relative
for the large singular values the spectral norm and the effective rank depend on (small ones
lose precision, which is why the condition number, which needs the smallest, is not tracked).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

from lmscope.metrics.matrices import frobenius_norm, spectral_statistics

_NUMBERED = re.compile(r"(?:^|\.)(?:blocks|mlp|lstm|layers)\.(\d+)\.|_l(\d+)(?:$|_)")


def parameter_layer(name: str) -> str:
    """The layer a parameter belongs to, from its name: "embed", "0", "1", ... or "head"."""
    if name.split(".")[0] in ("tok_emb", "pos_emb"):
        return "embed"
    match = _NUMBERED.search(name)
    if match:
        return match.group(1) or match.group(2)
    return "head"


def layer_order(layer: str) -> tuple[int, int]:
    """A sort key putting "embed" first, then the numbered layers, then "head"."""
    if layer == "embed":
        return (0, 0)
    return (1, int(layer)) if layer.isdigit() else (2, 0)


def matrices(model) -> dict[str, torch.Tensor]:
    """The model's 2-D parameters (weight matrices and embeddings) by name, in model order."""
    return {name: p for name, p in model.named_parameters() if p.dim() == 2}


def probe_gradients(model, ids: torch.Tensor, mask: torch.Tensor | None = None, *,
                    batch_size: int = 16) -> tuple[float, dict[str, torch.Tensor]]:
    """(loss, {parameter name: gradient}) of the mean next-token cross-entropy over the windows
    `ids` (batch, time), targets ids[:, 1:] where `mask` (batch, time - 1) is true; eval mode,
    no `.grad` written (see the module docstring), `batch_size` windows at a time (each batch's
    summed loss over all the targets, so the result is the whole mean's gradient). cuDNN is off
    inside: its RNN kernels have no backward pass in eval mode. A mask with no true entry:
    (nan, {})."""
    device = next(model.parameters()).device
    ids = ids.to(device)
    keep = (torch.ones_like(ids[:, 1:], dtype=torch.bool) if mask is None
            else mask.to(device))
    total = int(keep.sum())
    if not total:
        return math.nan, {}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sums: list[torch.Tensor | None] = [None] * len(named)
    loss_sum = 0.0
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            for start in range(0, ids.size(0), batch_size):
                x, k = ids[start:start + batch_size], keep[start:start + batch_size]
                if not bool(k.any()):
                    continue
                logits = model(x[:, :-1]).float()
                loss = F.cross_entropy(logits[k], x[:, 1:][k], reduction="sum")
                grads = torch.autograd.grad(loss / total, [p for _, p in named],
                                            allow_unused=True)
                loss_sum += loss.item()
                sums = [s if g is None else (g if s is None else s + g)
                        for s, g in zip(sums, grads, strict=True)]
    finally:
        model.train(was_training)
    return loss_sum / total, {n: g.detach() for (n, _), g in zip(named, sums, strict=True)
                              if g is not None}


def gram_singular_values(w: torch.Tensor) -> torch.Tensor:
    """The singular values of a 2-D tensor, descending, float64, from the eigenvalues of its
    smaller Gram matrix (module docstring: fast, precise for the large ones)."""
    w = _f64(w)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return torch.linalg.eigvalsh(gram).clamp_min(0.0).sqrt().flip(0)


def training_dynamics(model, ids: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    """The cheap statistics tracked during training (module docstring), as one JSON-ready row:

        {"probe_loss", "grad_norm", "weight_norm": {matrix: .}, "spectral_norm": {matrix: .},
         "effective_rank": {matrix: .}, "matrix_grad_norm": {matrix: .},
         "layer_grad_norm": {layer: .}}
    """
    loss, grads = probe_gradients(model, ids, mask)
    row = {"probe_loss": _finite(loss), "grad_norm": None, "weight_norm": {},
           "spectral_norm": {}, "effective_rank": {}, "matrix_grad_norm": {},
           "layer_grad_norm": {}}
    with torch.no_grad():
        for name, p in matrices(model).items():
            finite = bool(torch.isfinite(p).all())  # a diverged matrix: nulls, not an error
            spectral = spectral_statistics(gram_singular_values(p)) if finite else {}
            row["weight_norm"][name] = frobenius_norm(p) if finite else None
            for key in ("spectral_norm", "effective_rank"):
                row[key][name] = spectral.get(key)
            if name in grads:
                row["matrix_grad_norm"][name] = _finite(_f64(grads[name]).norm().item())
        squares: dict[str, float] = {}
        for name, g in grads.items():
            layer = parameter_layer(name)
            squares[layer] = squares.get(layer, 0.0) + _f64(g).square().sum().item()
    row["layer_grad_norm"] = {layer: _finite(math.sqrt(squares[layer]))
                              for layer in sorted(squares, key=layer_order)}
    if squares:
        row["grad_norm"] = _finite(math.sqrt(sum(squares.values())))
    return row


def _f64(t: torch.Tensor) -> torch.Tensor:
    """`t` in float64, on the CPU when it is on an MPS device (which has no float64)."""
    t = t.detach()
    return (t.cpu() if t.device.type == "mps" else t).double()


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
