"""lmscope: train small language models on corpora of different domains and look inside them.

This package face is for users (`import lmscope`); lmscope's own modules never import it, they
import the module that defines what they need (the layers are in pyproject.toml).

The face is lazy: each name below is imported on first use (PEP 562), so that `import
lmscope.cli` (the command line's `--help`, `data list`, usage errors) does not import torch.
"""

from __future__ import annotations

import importlib
import sys
import types

# name -> the module that defines it
_EXPORTS = {
    "Checkpoint": "lmscope.run.checkpoint",
    "EvalResult": "lmscope.metrics.losses",
    "LmscopeError": "lmscope.errors",
    "RunConfig": "lmscope.config",
    "TrainResult": "lmscope.run.run_dir",
    "evaluate": "lmscope.evaluate",
    "export_hf": "lmscope.export",
    "generate": "lmscope.api",
    "load": "lmscope.api",
    "logits": "lmscope.api",
    "read_metrics": "lmscope.run.run_dir",
    "resolve_config": "lmscope.config",
    "run_with_cache": "lmscope.api",
    "run_with_hooks": "lmscope.api",
    "train": "lmscope.train.trainer",
}

__all__ = [
    "Checkpoint", "EvalResult", "LmscopeError", "RunConfig", "TrainResult",
    "evaluate", "export_hf", "generate", "load", "logits", "read_metrics", "resolve_config",
    "run_with_cache", "run_with_hooks", "train",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next lookup finds it without coming here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Face(types.ModuleType):
    """`lmscope.train`, `lmscope.evaluate` and `lmscope.generate` are functions of the face, and
    also the names of submodules. Importing a submodule sets it as an attribute of its package;
    the face ignores that for these names, so they stay the functions whichever is imported
    first (as when the face imported everything eagerly)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Face
