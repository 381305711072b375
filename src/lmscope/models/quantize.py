"""Lower-precision copies of a model for fast sampling (inference only).

Generating one token at a time multiplies every weight matrix by a single vector, so the time
goes into reading the weights from memory, not into arithmetic: on a 2-core CPU the 10.6M-parameter
baby GPT reads 42 MB of float32 weights per token. Smaller weights are read faster:

- "bfloat16": every parameter in bfloat16 (half the bytes).
- "int8": the weights of every Linear layer as int8 with one scale per output row (a quarter of
  the bytes; weight-only quantization, activations stay bfloat16), the rest in bfloat16.

Both change the numbers slightly (logits differ at the 1e-2 level), so they are opt-in for
sampling (`lmscope sample --precision ...`); training and evaluation always use the model as
trained.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from lmscope.errors import LmscopeError

PRECISIONS = ("float32", "bfloat16", "int8")


class Int8Linear(nn.Module):
    """y = x @ (scale * W_int8)^T + b, with W stored as int8 and one float scale per output row."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127)
                             .to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.bias = None if linear.bias is None else nn.Parameter(
            linear.bias.detach().to(torch.bfloat16), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def _fused_kernel_fits(self, x) -> bool:
        # PyTorch's fused int8 kernel (private, CPU) crashes the process, rather than raising,
        # unless the inner dimension is a multiple of 16; other shapes take the plain path.
        return (x.device.type == "cpu" and self.in_features % 16 == 0
                and hasattr(torch, "_weight_int8pack_mm"))

    def forward(self, x):
        shape = x.shape[:-1]
        x = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self._fused_kernel_fits(x):
            y = torch._weight_int8pack_mm(x, self.weight, self.scale)
        else:  # correct but slower: dequantize, then multiply
            y = x @ (self.weight.to(torch.bfloat16) * self.scale[:, None]).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape, self.out_features)


def for_sampling(model: nn.Module, precision: str) -> nn.Module:
    """A copy of `model` in `precision` for generation (the original is left untouched)."""
    if precision not in PRECISIONS:
        raise LmscopeError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "float32":
        return model
    fast = copy.deepcopy(model).to(torch.bfloat16).eval()
    if precision == "int8":
        _replace_linears(fast)
    return fast


def _replace_linears(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child))
        else:
            _replace_linears(child)
