"""Hook points: named places in a model's forward pass where an activation can be read or replaced.

Every architecture names its points (`model.hook_names()`); GPT uses TransformerLens's names
where the concept is the same (`blocks.0.attn.hook_pattern`, `blocks.1.hook_resid_post`, ...),
so that what people know about TransformerLens carries over. docs/hooks.md lists them all and
says where each one sits in a post-norm block, an LSTM and a k-gram MLP.

A `Hooks` object goes down one forward pass (`model(idx, hooks=Hooks(...))`). At each point the
model calls `hooks(name, x)`, which runs the functions registered for that name, each as
`fn(activation, name)` returning None (to read) or a tensor of the same shape (to replace), and
keeps a copy in `hooks.cache` when the name was asked to be cached. Nothing is registered on the
modules, so nothing outlives the call, and a forward pass without a Hooks object pays one
`hooks is not None` test per point (benchmarks/hooks.py measures it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from lmscope.errors import LmscopeError
from lmscope.settings import suggest

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]


class Hooks:
    """The functions to run at named points, and the activations to keep, for one forward pass.

    `functions`: {name: fn or [fn, ...]}; `cache`: names whose activation (after any function
    replaced it) is kept, detached, in `self.cache[name]`.
    """

    def __init__(self, functions: Mapping[str, HookFn | Iterable[HookFn]] | None = None,
                 cache: Iterable[str] = ()):
        self.functions: dict[str, list[HookFn]] = {
            name: [fns] if callable(fns) else list(fns) for name, fns in (functions or {}).items()}
        self.cache_names = set(cache)
        self.cache: dict[str, torch.Tensor] = {}

    def names(self) -> set[str]:
        """Every name this object acts on."""
        return set(self.functions) | self.cache_names

    def wants(self, name: str) -> bool:
        return name in self.functions or name in self.cache_names

    def check(self, known: Iterable[str], model_name: str) -> None:
        """Raise a one-line error for a name the model does not have."""
        known = list(known)
        for name in sorted(self.names()):
            if name not in known:
                raise LmscopeError(f"{model_name} has no hook point {name!r}"
                                   f"{suggest(name, known)}; model.hook_names() lists them")

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        for fn in self.functions.get(name, ()):
            out = fn(x, name)
            if out is not None:
                if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise LmscopeError(f"the hook function at {name} returned {got}, not a tensor "
                                       f"of the activation's shape {tuple(x.shape)}")
                x = out.to(x.dtype)
        if name in self.cache_names:
            self.cache[name] = x.detach()
        return x


@torch.no_grad()
def run_batches(model, ids: torch.Tensor, make_hooks: Callable[[], Hooks | None],
                batch_size: int) -> tuple[torch.Tensor, list[Hooks | None]]:
    """The logits of `model` on token ids (batch, time), `batch_size` rows at a time on the
    model's device, in eval mode (its training mode restored after), each batch with a fresh
    Hooks object from `make_hooks` (None: no hooks, the plain forward pass); returns the joined
    logits and the Hooks of each batch, for their caches."""
    if batch_size < 1:
        raise LmscopeError(f"batch_size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    ids = torch.as_tensor(ids, dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        logits, used = [], []
        for start in range(0, ids.size(0), batch_size):
            hooks = make_hooks()
            batch = ids[start:start + batch_size].to(device)
            logits.append(model(batch) if hooks is None else model(batch, hooks=hooks))
            used.append(hooks)
    finally:
        model.train(was_training)
    return torch.cat(logits), used
