"""Sampling: greedy, temperature, top-k and nucleus (top-p), seeded, streamed, with the model's cache.

The loop feeds the prompt once (prefill), then one token at a time through `model.decode`, so
each new token costs one position's work. When the context fills the model's window
(`context_length`), it keeps the last three quarters of the tokens and prefills them again: the
model then sees at least 3/4 of a window of context, and the re-prefill happens once every
quarter window rather than at every token, as it would if the window slid one token at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lmscope.errors import LmscopeError

# The one default temperature of every sampler: `lmscope sample`, `lmscope.generate`, the samples
# written at checkpoints and the probes that sample, so the same seed gives the same text.
DEFAULT_TEMPERATURE = 0.8


@dataclass
class SamplingConfig:
    max_new_tokens: int = 200
    temperature: float | None = None  # None: DEFAULT_TEMPERATURE (and nothing with greedy)
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set of tokens whose probability reaches p
    greedy: bool = False  # always take the most likely token
    seed: int | None = None

    @property
    def effective_temperature(self) -> float:
        return DEFAULT_TEMPERATURE if self.temperature is None else self.temperature

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise LmscopeError(f"--max-new-tokens must not be negative, got {self.max_new_tokens}")
        if self.greedy:  # settings that would change nothing are an error, not ignored
            given = [f"--{name.replace('_', '-')} {value:g}" for name, value in (
                ("temperature", self.temperature), ("top_k", self.top_k),
                ("top_p", self.top_p)) if value is not None]
            if given:
                raise LmscopeError(f"--greedy always takes the most likely token, so {given[0]} "
                                   "would have no effect: give one or the other")
            return
        t = self.effective_temperature
        if not (math.isfinite(t) and t > 0):
            raise LmscopeError(f"--temperature must be positive, got {t} "
                               "(use --greedy for the most likely token)")
        if self.top_k is not None and self.top_k < 1:
            raise LmscopeError(f"--top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise LmscopeError(f"--top-p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Set to -inf the logits outside the top-k and outside the nucleus of mass top_p (last dim)."""
    if top_k is not None and top_k < logits.size(-1):
        top = torch.topk(logits, top_k, dim=-1).indices  # exactly k, even with ties
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        # A token stays if the tokens ranked above it hold less than p: the smallest set reaching p.
        # The first token always stays, even for a p below float32 resolution (0 >= p there).
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None,
               banned: Sequence[int] = ()):
    """Pick one token per row from logits (batch, vocab); `banned` ids are never picked."""
    logits = logits.float()
    if banned:
        logits = logits.index_fill(-1, torch.tensor(list(banned), device=logits.device),
                                   float("-inf"))
    if cfg.greedy:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / cfg.effective_temperature, cfg.top_k, cfg.top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_ids(model, prompt: torch.Tensor, cfg: SamplingConfig,
                 on_tokens: Callable[[torch.Tensor], None] | None = None,
                 banned: Sequence[int] = ()) -> torch.Tensor:
    """Continue each row of `prompt` (batch, time) by `cfg.max_new_tokens` tokens; return only the new ones.

    `on_tokens` is called with each new column (batch,) as soon as it is sampled (for streaming).
    `banned` ids are never sampled (`generate` bans the tokenizer's `<unk>`).
    """
    cfg.validate()
    if prompt.dim() != 2 or prompt.size(1) == 0:
        raise LmscopeError("the prompt is empty: give at least one token")
    was_training = model.training
    model.eval()
    device = prompt.device
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    window = model.context_length
    keep = max(1, window * 3 // 4)
    context = prompt
    cache = model.new_cache(prompt.size(0))
    logits = model.decode(context[:, -window:], cache)[:, -1]
    out = []
    try:
        for _ in range(cfg.max_new_tokens):
            token = next_token(logits, cfg, generator, banned)
            out.append(token)
            if on_tokens is not None:
                on_tokens(token)
            context = torch.cat([context, token[:, None]], dim=1)
            if cache.length >= cache.capacity:  # window full: prefill the recent tokens afresh
                cache = model.new_cache(prompt.size(0))
                logits = model.decode(context[:, -keep:], cache)[:, -1]
            else:
                logits = model.decode(token[:, None], cache)[:, -1]
    finally:
        model.train(was_training)
    if not out:
        return prompt.new_zeros(prompt.size(0), 0)
    return torch.stack(out, dim=1)


def generate(model, tokenizer, prompt: str, cfg: SamplingConfig | None = None,
             stream: Callable[[str], None] | None = None) -> str:
    """Continue `prompt` (text) and return the generated text (without the prompt).

    With `stream`, each piece of text is passed to it as soon as it can be decoded.
    """
    cfg = cfg or SamplingConfig()
    ids = tokenizer.encode(prompt, unknown="error")
    if not ids:
        raise LmscopeError("the prompt is empty: give at least one character")
    device = next(model.parameters()).device
    prompt_ids = torch.tensor([ids], dtype=torch.long, device=device)
    callback = None
    if stream is not None:
        streamer = _TextStreamer(tokenizer, stream)
        callback = streamer.push
    # <unk> stands for characters the model never saw: it is never a sample (it decodes to "�")
    banned = () if tokenizer.unk_id is None else (tokenizer.unk_id,)
    new = generate_ids(model, prompt_ids, cfg, callback, banned)
    text = tokenizer.decode(new[0].tolist())
    if stream is not None:
        streamer.flush(text)
    return text


class _TextStreamer:
    """Decode tokens as they come; hold back text that may still change (a split multi-byte
    character ends in U+FFFD until its last byte arrives). Only the tokens not yet shown are
    decoded each time, so streaming costs O(length)."""

    def __init__(self, tokenizer, emit: Callable[[str], None]):
        self.tokenizer, self.emit = tokenizer, emit
        self.pending: list[int] = []
        self.shown = 0  # characters emitted so far

    def push(self, token: torch.Tensor) -> None:
        self.pending.append(int(token[0]))
        text = self.tokenizer.decode(self.pending)
        if not text.endswith("\ufffd"):
            self.emit(text)
            self.shown += len(text)
            self.pending = []

    def flush(self, text: str) -> None:
        if len(text) > self.shown:
            self.emit(text[self.shown:])
            self.shown = len(text)
