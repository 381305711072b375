"""The public Python API, used by the command line and by notebooks alike.

    import lmscope
    run = lmscope.train(lmscope.resolve_config(preset="shakespeare-char-cpu"), "runs/demo")
    ckpt = lmscope.load("runs/demo")                       # final checkpoint, else the latest
    print(lmscope.generate(ckpt, "ROMEO:", max_new_tokens=200, seed=0))
    print(lmscope.evaluate(ckpt, "shakespeare").loss)      # whole validation split
    logits, cache = lmscope.run_with_cache(ckpt, "ROMEO:", names=["blocks.0.attn.hook_pattern"])
"""

from __future__ import annotations

import torch

from lmscope.errors import LmscopeError
from lmscope.generate import SamplingConfig
from lmscope.generate import generate as _generate
from lmscope.models.hooks import Hooks, run_batches
from lmscope.run.checkpoint import as_checkpoint, load

__all__ = ["generate", "load", "logits", "run_with_cache", "run_with_hooks"]


def generate(model_or_path, prompt: str, *, max_new_tokens: int = 200,
             temperature: float | None = None,
             top_k: int | None = None, top_p: float | None = None, greedy: bool = False,
             seed: int | None = None, stream=None, precision: str = "float32") -> str:
    """Continue `prompt` with a loaded checkpoint (or a path to one); returns the new text.

    `temperature` defaults to generate.DEFAULT_TEMPERATURE (0.8), as in `lmscope sample`; with
    `greedy=True`, giving a temperature, top_k or top_p is an error (they would change nothing).
    `precision="bfloat16"` or `"int8"` samples from a lower-precision copy of the model, 1.4x
    and 2.4x faster on a CPU for the 10.6M baby GPT (models/quantize.py); the default is exact.
    """
    ckpt = as_checkpoint(model_or_path)
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, greedy=greedy, seed=seed)
    return _generate(ckpt.sampling_model(precision), ckpt.tokenizer, prompt, cfg, stream=stream)


@torch.no_grad()
def logits(model_or_path, text: str) -> torch.Tensor:
    """Next-token logits (time, vocab) for every position of `text`."""
    ckpt = as_checkpoint(model_or_path)
    ids = ckpt.tokenizer.encode(text, unknown="error")
    if not 0 < len(ids) <= ckpt.model.context_length:
        raise LmscopeError(f"text of {len(ids)} tokens: give 1 to {ckpt.model.context_length} "
                           "(the model's context length)")
    device = next(ckpt.model.parameters()).device
    return ckpt.model(torch.tensor([ids], device=device))[0]


def _model_and_ids(model_or_path, text_or_ids):
    """(model, ids (batch, time) on the model's device) for a text (encoded by the checkpoint's
    tokenizer) or token ids (a list, a list of lists, or a 1-D or 2-D tensor)."""
    if isinstance(model_or_path, torch.nn.Module):
        model, tokenizer = model_or_path, None
    else:
        ckpt = as_checkpoint(model_or_path)
        model, tokenizer = ckpt.model, ckpt.tokenizer
    if not hasattr(model, "hook_names"):
        raise LmscopeError(f"{type(model).__name__} has no hook points (not an lmscope model)")
    if isinstance(text_or_ids, str):
        if tokenizer is None:
            raise LmscopeError("a text needs a checkpoint (its tokenizer); with a bare model, "
                               "pass token ids")
        text_or_ids = tokenizer.encode(text_or_ids, unknown="error")
    ids = torch.as_tensor(text_or_ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.numel() == 0:
        raise LmscopeError(f"token ids must be (time,) or (batch, time) and not empty, got shape "
                           f"{tuple(ids.shape)}")
    if ids.size(1) > model.context_length:
        raise LmscopeError(f"{ids.size(1)} tokens: give at most {model.context_length} (the "
                           "model's context length)")
    return model, ids.to(next(model.parameters()).device)


@torch.no_grad()
def run_with_cache(model_or_path, text_or_ids, names=None, *, batch_size: int = 64):
    """Logits (batch, time, vocab) and {hook name: activation} for a text or token ids.

    `names`: the hook points to keep (model.hook_names() lists them; None keeps every one, which
    for a long batch takes memory). Activations are detached, on the model's device, with the
    batch first; rows run `batch_size` at a time and are joined.
    """
    model, ids = _model_and_ids(model_or_path, text_or_ids)
    names = model.hook_names() if names is None else [names] if isinstance(names, str) else names
    Hooks(cache=names).check(model.hook_names(), model_name=type(model).__name__)
    logits, used = run_batches(model, ids, lambda: Hooks(cache=names), batch_size)
    return logits, {name: torch.cat([h.cache[name] for h in used]) for name in names}


@torch.no_grad()
def run_with_hooks(model_or_path, text_or_ids, hooks, *, batch_size: int = 64):
    """Logits (batch, time, vocab) with functions at hook points: `hooks` = {name: fn or [fn]},
    each called as fn(activation, name) and returning None (read) or a replacement of the same
    shape (e.g. zeros for an ablation)."""
    model, ids = _model_and_ids(model_or_path, text_or_ids)
    Hooks(hooks).check(model.hook_names(), model_name=type(model).__name__)
    return run_batches(model, ids, lambda: Hooks(hooks), batch_size)[0]
