"""Choosing where a model runs: cpu, cuda (cuda:N) or mps."""

from __future__ import annotations

import torch

from lmscope.errors import LmscopeError


def pick_device(name: str) -> torch.device:
    """A torch device from "auto" (cuda, else mps, else cpu), "cpu", "cuda", "cuda:N" or "mps"."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise LmscopeError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise LmscopeError(f"device {name} asked for, but CUDA is not available here")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise LmscopeError(f"device {name} asked for, but this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s)")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise LmscopeError(f"device {name} asked for, but MPS is not available here")
        if device.type not in ("cpu", "cuda", "mps"):
            raise LmscopeError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
