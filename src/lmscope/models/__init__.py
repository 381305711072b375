"""Model registry: one file per architecture, each with a config dataclass and an nn.Module.

Every model maps token ids (batch, time) to logits (batch, time, vocab) and offers the
generation interface the sampler uses: `new_cache(batch_size)`, `decode(idx, cache)` and
`context_length`; and the two halves attribution differentiates between: `embed(idx)` and
`forward_embeddings(emb)`, with `last_logits(emb)` (= `forward_embeddings(emb)[:, -1]`, what
faithfulness's masked inputs read, computed at the last position only where the model can).
"""

from __future__ import annotations

from lmscope.errors import ConfigError
from lmscope.models.gpt import GPT, GPTConfig
from lmscope.models.kgram import KGram, KGramConfig
from lmscope.models.lstm import LSTM, LSTMConfig

# name -> (config dataclass, model class)
MODELS = {
    "gpt": (GPTConfig, GPT),
    "lstm": (LSTMConfig, LSTM),
    "kgram": (KGramConfig, KGram),
}


def model_config_class(name: str):
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; models are {', '.join(sorted(MODELS))}")
    return MODELS[name][0]


def build_model(name: str, config):
    """Instantiate the architecture `name` from its config (vocab_size must be set)."""
    model_config_class(name)
    return MODELS[name][1](config)
