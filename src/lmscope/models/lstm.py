"""An LSTM language model: the recurrent baseline.

    tokens -> token embedding -> n_layer stacked LSTM layers -> dropout -> linear head -> logits

The recurrent state (h, c) of every layer summarises everything read so far, so the model has
no window: `block_size` is only the length of the training sequences (and of the evaluation
windows, where the state starts from zero in each window). Generation carries the state along
forever, one token at a time, and never has to re-read its context.

- `model(idx)`: logits for every position, the state starting from zero (training, evaluation).
- `model.decode(idx, cache)`: the generation path; the state after the tokens seen so far is
  kept in an `LSTMState`. Logits equal those of a full forward pass over the whole sequence
  (tested), also beyond block_size.
- `model.embed(idx)` then `model.forward_embeddings(emb)`: the same logits in two halves, for
  gradient attribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmscope.errors import ConfigError, LmscopeError


@dataclass
class LSTMConfig:
    vocab_size: int = 0  # set from the tokenizer when a run starts
    block_size: int = 256  # length of the training sequences (the LSTM itself has no window)
    n_embd: int = 128  # token embedding width
    n_hidden: int = 256  # LSTM state width of every layer
    n_layer: int = 2  # stacked LSTM layers
    dropout: float = 0.0  # between LSTM layers and before the head
    tie_weights: bool = False  # the head shares the embedding matrix (needs n_hidden == n_embd)

    def validate(self) -> None:
        for name in ("block_size", "n_embd", "n_hidden", "n_layer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.tie_weights and self.n_hidden != self.n_embd:
            raise ConfigError(f"model.tie_weights needs model.n_hidden == model.n_embd, got "
                              f"n_hidden {self.n_hidden} and n_embd {self.n_embd}")


class LSTMState:
    """The recurrent state after the tokens seen so far: h and c, each (n_layer, batch, n_hidden).

    `capacity` is infinite: the state has a fixed size however long the sequence gets, so the
    sampler never has to throw it away and re-read a window.
    """

    def __init__(self, config: LSTMConfig, batch_size: int, device, dtype):
        shape = (config.n_layer, batch_size, config.n_hidden)
        self.h = torch.zeros(shape, device=device, dtype=dtype)
        self.c = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.capacity = math.inf


class LSTM(nn.Module):
    def __init__(self, config: LSTMConfig):
        super().__init__()
        config.validate()
        if config.vocab_size < 1:
            raise ConfigError("model.vocab_size must be set (it comes from the tokenizer)")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        # nn.LSTM applies its dropout to the outputs of every layer but the last.
        self.lstm = nn.LSTM(config.n_embd, config.n_hidden, num_layers=config.n_layer,
                            batch_first=True, dropout=config.dropout if config.n_layer > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.n_hidden, config.vocab_size)
        # Small uniform embedding and head, zero head bias (PyTorch's word_language_model example);
        # the LSTM keeps PyTorch's default uniform(-1/sqrt(n_hidden), 1/sqrt(n_hidden)).
        nn.init.uniform_(self.tok_emb.weight, -0.1, 0.1)
        nn.init.uniform_(self.head.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)
        if config.tie_weights:
            self.head.weight = self.tok_emb.weight

    def num_params(self, exclude_embeddings: bool = True) -> int:
        """Parameter count (tied weights once). There is no position embedding to exclude, so
        `exclude_embeddings` changes nothing; it is there for the common model interface."""
        return sum(p.numel() for p in self.parameters())

    def _run(self, x, state: tuple | None = None):
        """Logits from input embeddings x (batch, time, n_embd), and the state after them."""
        out, state = self.lstm(x, state)
        return self.head(self.drop(out)), state

    def hook_names(self) -> list[str]:
        """Every hook point, in the order a forward pass reaches them (docs/hooks.md)."""
        layers = [f"lstm.{i}.hook_{n}" for i in range(self.config.n_layer) for n in ("cell", "hidden")]
        return ["hook_embed", *layers]

    def lens_points(self) -> list[tuple[str, str]]:
        """(label, hook name) of every layer's hidden state, where a lens reads (the head's
        input has the same width at every layer)."""
        return [(f"lstm.{i}", f"lstm.{i}.hook_hidden") for i in range(self.config.n_layer)]

    def layer_points(self) -> list[tuple[str, str]]:
        """(label, hook name) of one representation per layer (see GPT.layer_points): the token
        embeddings, then each layer's hidden state."""
        return [("embed", "hook_embed")] + [
            (str(i), f"lstm.{i}.hook_hidden") for i in range(self.config.n_layer)]

    def unembed(self, x):
        """Logits from a hidden state (batch, time, n_hidden): the head."""
        return self.head(x)

    def _run_hooked(self, x, hooks):
        """The same logits as `_run` from a zero state, one layer and one position at a time, so
        that every layer's hidden and cell state at every position can be read; a replaced
        hidden state is what the next layer and the head read (layer L's own recurrence keeps
        the computed one). The gates follow nn.LSTM's equations and weights (tested equal)."""
        lstm = self.lstm
        x = hooks("hook_embed", x)
        for layer in range(self.config.n_layer):
            w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
            inputs = x @ w_ih.T + getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
            h = x.new_zeros(x.size(0), self.config.n_hidden)
            c = torch.zeros_like(h)
            hidden, cell = [], []
            for t in range(x.size(1)):
                i, f, g, o = (inputs[:, t] + h @ w_hh.T).chunk(4, dim=-1)  # nn.LSTM's order
                c = f.sigmoid() * c + i.sigmoid() * g.tanh()
                h = o.sigmoid() * c.tanh()
                hidden.append(h)
                cell.append(c)
            cells = torch.stack(cell, dim=1)
            if hooks(f"lstm.{layer}.hook_cell", cells) is not cells:
                raise LmscopeError(f"lstm.{layer}.hook_cell can be read, not replaced (the cell "
                                   f"state feeds only its own layer's recurrence); replace "
                                   f"lstm.{layer}.hook_hidden")
            x = hooks(f"lstm.{layer}.hook_hidden", torch.stack(hidden, dim=1))
            if layer < self.config.n_layer - 1 and self.training:
                x = F.dropout(x, lstm.dropout, True)  # as nn.LSTM, between layers
        return self.head(self.drop(x))

    def forward(self, idx, hooks=None):
        """Logits (batch, time, vocab) for token ids (batch, time), starting from a zero state;
        `hooks` (models/hooks.py) reads or replaces activations at named points on the way."""
        if hooks is not None:
            return self._run_hooked(self.tok_emb(idx), hooks)
        return self._run(self.tok_emb(idx))[0]

    def embed(self, idx):
        """The input embeddings (batch, time, n_embd) of token ids: what attribution differentiates."""
        return self.tok_emb(idx)

    def forward_embeddings(self, emb):
        """Logits from input embeddings: `forward_embeddings(embed(idx)) == forward(idx)`."""
        return self._run(emb)[0]

    def last_logits(self, emb):
        """The logits (batch, vocab) at the last position, `forward_embeddings(emb)[:, -1]` (a
        recurrence reads every position: only the head is spared)."""
        return self.forward_embeddings(emb)[:, -1]

    # --- generation -------------------------------------------------------------------------
    def new_cache(self, batch_size: int) -> LSTMState:
        p = self.tok_emb.weight
        return LSTMState(self.config, batch_size, p.device, p.dtype)

    def decode(self, idx, cache: LSTMState):
        """Logits for the new tokens `idx` (batch, time), continuing from the state in `cache`.

        Replaces the cache's state by the state after the new tokens.
        """
        logits, (cache.h, cache.c) = self._run(self.tok_emb(idx), (cache.h, cache.c))
        cache.length += idx.size(1)
        return logits

    @property
    def context_length(self) -> int:
        """The window the sampler and evaluation use: the training length (the state has none)."""
        return self.config.block_size
