"""A k-gram MLP language model: the next token from the last k tokens only (Bengio et al. 2003).

    the k tokens t-k+1..t -> k input vectors, concatenated (k * width)
        -> n_layer x (Linear -> GELU -> dropout) -> linear head -> logits for token t+1

The input vectors are either learned embeddings of width n_embd (input = "embedding") or
one-hot vectors (input = "onehot"); with one-hot inputs the first Linear layer is itself a
table of one n_hidden-vector per (slot, token), so both variants learn a lookup of the k tokens.
k = 1 is a bigram model (the previous token only).

Positions before the start of the sequence are filled with a padding id, `vocab_size`: an extra
embedding row (or an extra one-hot slot) that no real token uses, so the model can tell "no
token here" from every real token. All positions are computed at once: the sequence is
left-padded with k-1 padding ids and `unfold` gathers each position's k tokens; there is no
Python loop over positions.

- `model(idx)`: logits for every position (training, evaluation).
- `model.decode(idx, cache)`: the generation path; the cache keeps the last k-1 tokens (padding
  at the start). Logits equal those of a full forward pass (tested), also beyond block_size:
  the model has no window of its own, `block_size` is only the training sequence length.
- `model.embed(idx)` then `model.forward_embeddings(emb)`: the same logits in two halves, for
  gradient attribution. With one-hot input, `embed` gives the one-hot vectors of the real
  tokens (width vocab_size, without the padding slot).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmscope.errors import ConfigError

INPUTS = ("embedding", "onehot")


@dataclass
class KGramConfig:
    vocab_size: int = 0  # set from the tokenizer when a run starts
    block_size: int = 256  # length of the training sequences (the model sees only k tokens)
    k: int = 3  # tokens the prediction depends on (1: bigram)
    input: str = "embedding"  # embedding | onehot
    n_embd: int = 32  # embedding width (unused with one-hot input)
    n_hidden: int = 256  # width of every hidden layer
    n_layer: int = 1  # hidden layers between the input and the head
    dropout: float = 0.0  # after every hidden layer

    def validate(self) -> None:
        for name in ("block_size", "k", "n_embd", "n_hidden", "n_layer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.input not in INPUTS:
            raise ConfigError(f"model.input must be one of {', '.join(INPUTS)}, "
                              f"got {self.input!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


class KGramCache:
    """The last k-1 token ids (batch, k-1); padding ids until that many tokens have been seen.

    `capacity` is infinite: the model only ever needs these k-1 tokens, so the sampler never has
    to re-read a window.
    """

    def __init__(self, config: KGramConfig, batch_size: int, device):
        self.tokens = torch.full((batch_size, config.k - 1), config.vocab_size,
                                 dtype=torch.long, device=device)
        self.length = 0
        self.capacity = math.inf


class KGram(nn.Module):
    def __init__(self, config: KGramConfig):
        super().__init__()
        config.validate()
        if config.vocab_size < 1:
            raise ConfigError("model.vocab_size must be set (it comes from the tokenizer)")
        self.config = config
        self.pad_id = config.vocab_size  # one past the last real token
        if config.input == "embedding":
            self.tok_emb = nn.Embedding(config.vocab_size + 1, config.n_embd)
            width = config.n_embd
        else:
            self.tok_emb = None
            width = config.vocab_size + 1  # one-hot, the last slot for padding
        layers = []
        n_in = config.k * width
        for _ in range(config.n_layer):
            layers += [nn.Linear(n_in, config.n_hidden), nn.GELU(), nn.Dropout(config.dropout)]
            n_in = config.n_hidden
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(n_in, config.vocab_size)

    def num_params(self, exclude_embeddings: bool = True) -> int:
        """Parameter count. There is no position embedding to exclude, so `exclude_embeddings`
        changes nothing; it is there for the common model interface."""
        return sum(p.numel() for p in self.parameters())

    def _dtype(self):
        """The floating dtype the model computes in (float32, or bfloat16 for fast sampling)."""
        for t in (*self.parameters(), *self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    def _vectors(self, ids):
        """Input vectors (batch, time, width) of token ids, the padding id included."""
        if self.tok_emb is not None:
            return self.tok_emb(ids)
        return F.one_hot(ids, self.config.vocab_size + 1).to(self._dtype())

    def _mlp_on(self, x, hooks=None):
        """Logits for every position of x (batch, k-1+T, width), whose first k-1 are context only.

        unfold gives (batch, T, width, k): the window of k vectors ending at each position, oldest
        first once transposed, concatenated into one k * width input per position.
        """
        B, L, C = x.shape
        k = self.config.k
        windows = x.unfold(1, k, 1).transpose(2, 3).reshape(B, L - k + 1, k * C)
        if hooks is not None:
            return self._mlp_hooked(windows, hooks)
        return self.head(self.mlp(windows))

    def hook_names(self) -> list[str]:
        """Every hook point, in the order a forward pass reaches them (docs/hooks.md)."""
        layers = [f"mlp.{i}.hook_{n}" for i in range(self.config.n_layer) for n in ("pre", "post")]
        return ["hook_input", *layers]

    def lens_points(self) -> list[tuple[str, str]]:
        """(label, hook name) of every hidden layer's output, where a lens reads (all n_hidden
        wide, as the head's input)."""
        return [(f"mlp.{i}", f"mlp.{i}.hook_post") for i in range(self.config.n_layer)]

    def layer_points(self) -> list[tuple[str, str]]:
        """(label, hook name) of one representation per layer (see GPT.layer_points): the k
        input embeddings concatenated, then each hidden layer's output."""
        return [("embed", "hook_input")] + [
            (str(i), f"mlp.{i}.hook_post") for i in range(self.config.n_layer)]

    def unembed(self, x):
        """Logits from a hidden layer's output (batch, time, n_hidden): the head."""
        return self.head(x)

    def _mlp_hooked(self, windows, hooks):
        """`head(mlp(windows))` layer by layer: hook_input is each position's k input vectors
        concatenated (batch, time, k * width), mlp.L.hook_pre a hidden layer before its GELU,
        mlp.L.hook_post after it."""
        x = hooks("hook_input", windows)
        for layer in range(self.config.n_layer):
            linear, gelu, dropout = self.mlp[3 * layer:3 * layer + 3]
            x = hooks(f"mlp.{layer}.hook_pre", linear(x))
            x = dropout(hooks(f"mlp.{layer}.hook_post", gelu(x)))
        return self.head(x)

    def _pad_vectors(self, batch: int):
        """The input vectors of k-1 padding tokens, (batch, k-1, width)."""
        device = self.head.bias.device
        pad = torch.full((batch, self.config.k - 1), self.pad_id, dtype=torch.long, device=device)
        return self._vectors(pad)

    def forward(self, idx, hooks=None):
        """Logits (batch, time, vocab) for token ids (batch, time); the first k-1 positions see
        padding in place of the tokens before the start. `hooks` (models/hooks.py) reads or
        replaces activations at named points on the way."""
        pad = torch.full((idx.size(0), self.config.k - 1), self.pad_id, dtype=idx.dtype,
                         device=idx.device)
        return self._mlp_on(self._vectors(torch.cat([pad, idx], dim=1)), hooks)

    def embed(self, idx):
        """The input vectors of token ids: embeddings (batch, time, n_embd), or one-hot vectors
        (batch, time, vocab_size) with one-hot input. What attribution differentiates."""
        if self.tok_emb is not None:
            return self.tok_emb(idx)
        return F.one_hot(idx, self.config.vocab_size).to(self._dtype())

    def forward_embeddings(self, emb):
        """Logits from input vectors: `forward_embeddings(embed(idx)) == forward(idx)`."""
        if self.tok_emb is None:
            emb = F.pad(emb, (0, 1))  # the padding slot, never set for a real token
        pad = self._pad_vectors(emb.size(0)).to(emb.dtype)
        return self._mlp_on(torch.cat([pad, emb], dim=1))

    def last_logits(self, emb):
        """The logits (batch, vocab) at the last position, `forward_embeddings(emb)[:, -1]`:
        the MLP on the last window only."""
        if self.tok_emb is None:
            emb = F.pad(emb, (0, 1))
        pad = self._pad_vectors(emb.size(0)).to(emb.dtype)
        return self._mlp_on(torch.cat([pad, emb], dim=1)[:, -self.config.k:])[:, -1]

    # --- generation -------------------------------------------------------------------------
    def new_cache(self, batch_size: int) -> KGramCache:
        return KGramCache(self.config, batch_size, self.head.bias.device)

    def decode(self, idx, cache: KGramCache):
        """Logits for the new tokens `idx` (batch, time), given the last k-1 tokens in `cache`.

        Keeps the last k-1 tokens of the whole sequence in the cache.
        """
        seq = torch.cat([cache.tokens, idx], dim=1)
        logits = self._mlp_on(self._vectors(seq))
        cache.tokens = seq[:, seq.size(1) - (self.config.k - 1):]
        cache.length += idx.size(1)
        return logits

    @property
    def context_length(self) -> int:
        """The window the sampler and evaluation use: the training length (the model itself
        reads only the last k tokens)."""
        return self.config.block_size
