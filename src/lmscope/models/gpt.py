"""A GPT language model in one file, in the nanoGPT tradition.

    tokens -> token embedding (+ learned positions) -> n_layer x Block -> norm -> linear head (tied) -> logits

Positions enter in one of three ways (`pos_emb`): a learned table added to the token embeddings
(GPT-2), nothing at all (causal attention alone still tells positions apart, weakly), or rotary
embeddings (RoPE, Su et al. 2021), which rotate every head's queries and keys by angles that grow
with the position, so attention scores depend on how far apart two tokens are, not where they are.

Each Block is causal self-attention followed by an MLP, each wrapped in a residual connection,
with the normalization either before the sublayer (pre-norm, GPT-2) or after the residual sum
(post-norm, the original Transformer). With `attn_only` a block is the attention alone, without
the MLP and its norm (the attention-only models of Elhage et al. 2021 and Olsson et al. 2022).

Four ways to run it:
- `model(idx)`: logits for every position, the training and evaluation path (fast, fused attention).
- `model.decode(idx, cache)`: the generation path; keys and values of earlier tokens are kept in a
  `KVCache`, so each new token costs one position's work instead of the whole context's.
- `model.forward_with_attention(idx)`: logits plus the attention probabilities of every layer and
  head, computed explicitly (slower); for analysis.
- `model.embed(idx)` then `model.forward_embeddings(emb)`: the same logits in two halves, so that
  gradient attribution can differentiate with respect to the input characters' embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmscope.errors import ConfigError


@dataclass
class GPTConfig:
    vocab_size: int = 0  # set from the tokenizer when a run starts
    block_size: int = 256  # longest context the model sees
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm layers
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_position: str = "pre"  # pre | post
    pos_emb: str = "learned"  # learned | none | rotary
    rope_base: float = 10000.0  # rotary only: pair i turns base^(-2i/head_dim) per position
    tie_weights: bool = True  # the output head shares the token embedding matrix
    attn_only: bool = False  # blocks without an MLP (attention-only models, for circuits)
    mlp_act: str = "gelu"  # gelu | relu2 (ReLU squared, the modded-nanogpt speedrun's)
    qk_norm: bool = False  # each head's queries and keys scaled to unit RMS (the speedrun's)
    zero_init_proj: bool = False  # attention and MLP output projections start at zero (speedrun)

    def validate(self) -> None:
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        if self.pos_emb == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(
                f"model.pos_emb=rotary needs an even head size, but model.n_embd ({self.n_embd}) / "
                f"model.n_head ({self.n_head}) = {self.n_embd // self.n_head}"
            )
        if not self.rope_base > 0:
            raise ConfigError(f"model.rope_base must be positive, got {self.rope_base}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        choices = {"norm": ("layernorm", "rmsnorm"), "norm_position": ("pre", "post"),
                   "pos_emb": ("learned", "none", "rotary"), "mlp_act": ("gelu", "relu2")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"model.{name} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")


class RMSNorm(nn.Module):
    """Scale each vector to unit root-mean-square, then by a learned gain (no centring, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _LayerNormSameOnAnyThreads(torch.autograd.Function):
    """torch's layer_norm, with a backward whose weight and bias gradients do not depend on the
    number of CPU threads.

    ATen's CPU backward sums the weight and bias gradients over the batch x time rows in one
    buffer per thread, so a run trained with 1 thread ends with other weights than the same
    run with 2 (they part by 1e-10 at the first step and training amplifies it). Here those two
    sums are plain reductions over the rows, which torch splits over the C outputs and so adds
    in the same order on any thread count; the input's gradient (row by row) and the forward
    are ATen's own."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        shape = (x.shape[-1],)
        out, mean, rstd = torch.native_layer_norm(x, shape, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        grad_x = torch.ops.aten.native_layer_norm_backward(
            grad, x, (x.shape[-1],), mean, rstd, weight, bias, [True, False, False])[0]
        rows = tuple(range(x.dim() - 1))
        grad_weight = (grad * ((x - mean) * rstd)).sum(rows) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(rows) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (the same parameters and forward) whose CPU training gives the same weights
    on any number of threads (`_LayerNormSameOnAnyThreads`), so that a study's runs are the same
    run one at a time on every core or side by side on a share of them."""

    def forward(self, x):
        if x.device.type != "cpu" or not torch.is_grad_enabled() or self.weight is None:
            return super().forward(x)
        return _LayerNormSameOnAnyThreads.apply(x, self.weight, self.bias, self.eps)


def unit_rms(x, eps: float = 1e-6):
    """x scaled to unit root-mean-square over its last dimension, with no learned gain (QK-norm
    as the modded-nanogpt speedrun applies it to each head's queries and keys)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd)
    return LayerNorm(config.n_embd, bias=config.bias)


def rotary_tables(n_positions: int, head_dim: int, base: float = 10000.0):
    """cos and sin of the rotary angles, each (n_positions, head_dim), in float32.

    Pair i of a head turns by m * theta_i at position m, theta_i = base^(-2i/head_dim).
    Both halves of the last dimension hold the same angles (the rotate-half layout below).
    """
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(n_positions, dtype=torch.float64), theta)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x, cos, sin):
    """Rotate x (..., time, head_dim) by the angles whose cos/sin are (time, head_dim).

    Rotate-half convention (GPT-NeoX, Llama): element i is paired with element i + head_dim/2,
    not with its neighbour i + 1 as in the paper, and each pair (a, b) becomes
    (a cos - b sin, b cos + a sin). Computed in the tables' precision, returned in x's dtype.
    """
    a, b = x.chunk(2, dim=-1)
    rotated_half = torch.cat([-b, a], dim=-1)
    return (x * cos + rotated_half * sin).to(x.dtype)


class KVCache:
    """Keys and values of the tokens seen so far, one preallocated buffer per layer.

    Shapes are (batch, n_head, block_size, head_dim); `length` positions are filled.
    Allocating once up front means no tensor is re-allocated while generating.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype):
        shape = (batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0
        self.capacity = config.block_size

    def append(self, layer: int, k, v):
        """Store this step's keys/values for `layer`; return the keys/values of the whole context."""
        start, end = self.length, self.length + k.size(2)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qk_norm = config.qk_norm
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0, return_attention=False,
                rope=None, hooks=None, last: bool = False):
        """The attention's output (and its probabilities with return_attention); with `last`,
        at the last position only (B, 1, C): its query against every key (no cache, hooks)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, T, n_head, head_dim), TransformerLens's layout at hook_q/k/v and
        # hook_z, -> (B, n_head, T, head_dim) for the attention itself
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head) for t in (q, k, v))
        if self.qk_norm:  # before the hooks: hook_q and hook_k are what the attention uses
            q, k = unit_rms(q), unit_rms(k)
        hook = _no_hook  # without hooks, no Python work beyond the computation itself
        if hooks is not None:
            hook = _hook_at(hooks, f"blocks.{layer}.attn.")
            q, k, v = hook("hook_q", q), hook("hook_k", k), hook("hook_v", v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if rope is not None:  # (cos, sin) at these tokens' absolute positions
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)  # cached keys stay rotated
            if hooks is not None:
                q = hook("hook_rot_q", q.transpose(1, 2)).transpose(1, 2)
                k = hook("hook_rot_k", k.transpose(1, 2)).transpose(1, 2)
        if last:  # one query, which sees every key: no mask
            q, T = q[:, :, -1:], 1
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(layer, k, v)
        attn = None
        dropout_p = self.dropout if self.training else 0.0
        explicit = return_attention or (hooks is not None and any(
            hooks.wants(f"blocks.{layer}.attn.{name}") for name in ("hook_attn_scores",
                                                                    "hook_pattern")))
        if explicit:  # explicit probabilities (returned before dropout)
            attn = _causal_softmax(q, k, past, hook)
            y = F.dropout(attn, dropout_p, self.training) @ v
        elif past == 0 or T == 1:
            # The whole context is new (causal mask), or one new token sees everything before it.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=past == 0 and T > 1 and not last,
                                               dropout_p=dropout_p)
        else:
            # Several new tokens after a cached prefix: an explicit mask, offset by the prefix.
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2)  # (B, T, n_head, head_dim): each head's output
        if hooks is not None:
            y = hook("hook_z", y)
        return self.resid_dropout(self.proj(y.contiguous().view(B, T, C))), attn


def _no_hook(name: str, x):
    return x


def _hook_at(hooks, prefix: str):
    """hook(name, x): x through `hooks` at `prefix + name`, or x itself when there are no hooks
    (one call that returns its argument: the forward pass without hooks pays nothing more)."""
    if hooks is None:
        return _no_hook
    return lambda name, x: hooks(prefix + name, x)


def _causal_softmax(q, k, past: int, hook=_no_hook):
    """Attention probabilities (B, n_head, T_query, T_key), each query seeing keys up to itself
    (the masked scores at hook_attn_scores, the probabilities at hook_pattern)."""
    T, S = q.size(2), k.size(2)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=past)
    scores = hook("hook_attn_scores", scores.masked_fill(~mask, float("-inf")))
    return hook("hook_pattern", scores.softmax(dim=-1))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.act = relu_squared if config.mlp_act == "relu2" else F.gelu

    def forward(self, x, hook=_no_hook):
        """hook_pre: the hidden layer before the activation, hook_post: after it
        (TransformerLens)."""
        return self.dropout(self.proj(hook("hook_post", self.act(hook("hook_pre", self.fc(x))))))


def relu_squared(x):
    """ReLU(x)^2 (So et al. 2021, "Primer"; the modded-nanogpt speedrun's MLP activation)."""
    return F.relu(x).square()


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.norm1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        # attention-only: no MLP and no norm before (pre-norm) or after (post-norm) it
        self.has_mlp = not config.attn_only  # a plain attribute: the test costs no module lookup
        self.norm2 = make_norm(config) if self.has_mlp else None
        self.mlp = MLP(config) if self.has_mlp else None

    def forward(self, x, cache=None, layer=0, return_attention=False, rope=None, hooks=None,
                last: bool = False):
        """The residual stream after this block; with `last`, at the last position only (the
        keys and values still come from every position)."""
        if hooks is not None:
            return self._forward_hooked(x, cache, layer, return_attention, rope, hooks)
        # the same computation as _forward_hooked, with no hook calls at all (benchmarks/hooks.py)
        if self.pre_norm:
            a, attn = self.attn(self.norm1(x), cache, layer, return_attention, rope, last=last)
            x = (x[:, -1:] if last else x) + a
            if self.has_mlp:
                x = x + self.mlp(self.norm2(x))
        else:  # post-norm: the residual stream is normalized after each sum
            a, attn = self.attn(x, cache, layer, return_attention, rope, last=last)
            x = self.norm1((x[:, -1:] if last else x) + a)
            if self.has_mlp:
                x = self.norm2(x + self.mlp(x))
        return x, attn

    def _forward_hooked(self, x, cache, layer, return_attention, rope, hooks):
        hook = _hook_at(hooks, f"blocks.{layer}.")
        mlp_hook = _hook_at(hooks, f"blocks.{layer}.mlp.")
        x = hook("hook_resid_pre", x)
        if self.pre_norm:
            a, attn = self.attn(hook("ln1.hook_normalized", self.norm1(x)), cache, layer,
                                return_attention, rope, hooks)
            x = hook("hook_resid_mid", x + hook("hook_attn_out", a))
            if self.mlp is not None:
                m = self.mlp(hook("ln2.hook_normalized", self.norm2(x)), mlp_hook)
                x = x + hook("hook_mlp_out", m)
            x = hook("hook_resid_post", x)
        else:  # post-norm: the residual stream is normalized after each sum
            a, attn = self.attn(x, cache, layer, return_attention, rope, hooks)
            x = hook("hook_resid_mid", self.norm1(x + hook("hook_attn_out", a)))
            if self.mlp is not None:
                x = self.norm2(x + hook("hook_mlp_out", self.mlp(x, mlp_hook)))
            x = hook("hook_resid_post", x)
        return x, attn


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        config.validate()
        if config.vocab_size < 1:
            raise ConfigError("model.vocab_size must be set (it comes from the tokenizer)")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = (nn.Embedding(config.block_size, config.n_embd)
                        if config.pos_emb == "learned" else None)
        if config.pos_emb == "rotary":
            # Fixed tables, rebuilt from the config: non-persistent, so not in the state dict.
            cos, sin = rotary_tables(config.block_size, config.n_embd // config.n_head,
                                     config.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        # Post-norm blocks already end in a norm; pre-norm needs one before the head.
        self.norm_f = make_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections down by depth so the residual stream's variance
        # stays put; or (the speedrun's) start them at zero, so that every block starts as the
        # identity and the first steps train the embeddings, the head and the projections only.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                if config.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, exclude_embeddings: bool = True) -> int:
        """Parameter count; by convention without the position embedding (nanoGPT does the same)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings and self.pos_emb is not None:
            n -= self.pos_emb.weight.numel()
        return n

    def hook_names(self) -> list[str]:
        """Every hook point, in the order a forward pass reaches them (docs/hooks.md)."""
        c = self.config
        names = ["hook_embed"] + (["hook_pos_embed"] if c.pos_emb == "learned" else [])
        for layer in range(c.n_layer):
            b = f"blocks.{layer}."
            attn = [f"{b}attn.hook_{n}" for n in ("q", "k", "v")]
            if c.pos_emb == "rotary":
                attn += [f"{b}attn.hook_rot_q", f"{b}attn.hook_rot_k"]
            attn += [f"{b}attn.hook_{n}" for n in ("attn_scores", "pattern", "z")]
            pre = c.norm_position == "pre"
            names += [f"{b}hook_resid_pre", *([f"{b}ln1.hook_normalized"] if pre else []), *attn,
                      f"{b}hook_attn_out", f"{b}hook_resid_mid"]
            if not c.attn_only:  # attention-only: no MLP, and hook_resid_post = hook_resid_mid
                names += [*([f"{b}ln2.hook_normalized"] if pre else []), f"{b}mlp.hook_pre",
                          f"{b}mlp.hook_post", f"{b}hook_mlp_out"]
            names.append(f"{b}hook_resid_post")
        return [*names, "ln_final.hook_normalized"]

    def lens_points(self) -> list[tuple[str, str]]:
        """(label, hook name) of every place of the residual stream a lens reads, in order: the
        embeddings, then each block after its attention and after its MLP (attention-only: after
        its attention, the block's output)."""
        points = [("embed", "blocks.0.hook_resid_pre")]
        for layer in range(self.config.n_layer):
            points.append((f"{layer}.attn", f"blocks.{layer}.hook_resid_mid"))
            if not self.config.attn_only:
                points.append((f"{layer}.mlp", f"blocks.{layer}.hook_resid_post"))
        return points

    def layer_points(self) -> list[tuple[str, str]]:
        """(label, hook name) of one representation per layer, where representation similarity
        and activation statistics read: the embeddings (the residual stream entering block 0),
        then the residual stream leaving each block."""
        return [("embed", "blocks.0.hook_resid_pre")] + [
            (str(layer), f"blocks.{layer}.hook_resid_post") for layer in range(self.config.n_layer)]

    def unembed(self, x):
        """Logits from a residual stream (batch, time, n_embd): the final norm and the head,
        what the logit lens applies at every layer."""
        return self.head(self.norm_f(x))

    def _run(self, idx, cache=None, return_attention=False, tok_emb=None, hooks=None,
             last: bool = False):
        hook = _hook_at(hooks, "")
        x = hook("hook_embed", self.tok_emb(idx) if tok_emb is None else tok_emb)
        T = x.shape[1]
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"context of {past + T} tokens exceeds block_size {self.config.block_size}")
        if self.pos_emb is not None:
            positions = self.pos_emb(torch.arange(past, past + T, device=x.device))
            x = x + (positions if hooks is None else hook("hook_pos_embed", positions.expand_as(x)))
        rope = None
        if self.config.pos_emb == "rotary":
            rope = (self.rope_cos[past:past + T], self.rope_sin[past:past + T])
        x = self.drop(x)
        attentions = []
        for layer, block in enumerate(self.blocks):
            x, attn = block(x, cache, layer, return_attention, rope, hooks,
                            last=last and layer == len(self.blocks) - 1)
            attentions.append(attn)
        if cache is not None:
            cache.length += T
        return self.head(hook("ln_final.hook_normalized", self.norm_f(x))), attentions

    def forward(self, idx, hooks=None):
        """Logits (batch, time, vocab) for token ids (batch, time); `hooks` (models/hooks.py)
        reads or replaces activations at named points on the way."""
        return self._run(idx, hooks=hooks)[0]

    def forward_with_attention(self, idx):
        """Logits and a list, one per layer, of attention probabilities (batch, head, query, key)."""
        return self._run(idx, return_attention=True)

    def embed(self, idx):
        """The input embeddings (batch, time, n_embd) of token ids: what attribution differentiates."""
        return self.tok_emb(idx)

    def forward_embeddings(self, emb):
        """Logits from input embeddings: `forward_embeddings(embed(idx)) == forward(idx)`."""
        return self._run(None, tok_emb=emb)[0]

    def last_logits(self, emb):
        """The logits (batch, vocab) at the last position from input embeddings, equal to
        `forward_embeddings(emb)[:, -1]`: the last block's query, MLP and the head run at that
        position only (the masked inputs of lmscope.analysis.faithfulness need nothing else;
        its float32 bits differ from the full pass's in the last places, so it is computed on one
        thread there: device.one_thread_each)."""
        if not self.blocks:
            return self.forward_embeddings(emb)[:, -1]
        return self._run(None, tok_emb=emb, last=True)[0][:, -1]

    # --- generation -------------------------------------------------------------------------
    def new_cache(self, batch_size: int) -> KVCache:
        p = self.tok_emb.weight
        return KVCache(self.config, batch_size, p.device, p.dtype)

    def decode(self, idx, cache: KVCache):
        """Logits for the new tokens `idx` (batch, time), given the context held in `cache`.

        Appends the new tokens' keys and values to the cache. Logits equal those of a full
        forward pass over the whole context (tested).
        """
        return self._run(idx, cache)[0]

    @property
    def context_length(self) -> int:
        return self.config.block_size
