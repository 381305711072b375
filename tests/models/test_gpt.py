import itertools

import pytest
import torch

from lmscope.errors import ConfigError
from lmscope.models import build_model
from lmscope.models.gpt import GPT, GPTConfig

VARIANTS = list(itertools.product(["layernorm", "rmsnorm"], ["pre", "post"], ["learned", "none"]))


def tiny(norm="layernorm", norm_position="pre", pos_emb="learned", **kw) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16, norm=norm,
                    norm_position=norm_position, pos_emb=pos_emb, **kw)
    return GPT(cfg).eval()


@pytest.mark.parametrize("norm,position,pos_emb", VARIANTS)
def test_changing_a_future_token_never_changes_earlier_logits(norm, position, pos_emb):
    model = tiny(norm, position, pos_emb)
    idx = torch.randint(0, 17, (3, 16), generator=torch.Generator().manual_seed(1))
    base = model(idx)
    for t in (0, 5, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 17
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=0)
        assert not torch.allclose(out[:, t], base[:, t])  # the changed position itself does move


@pytest.mark.parametrize("norm,position,pos_emb", VARIANTS)
def test_kv_cache_decoding_matches_full_recomputation(norm, position, pos_emb):
    model = tiny(norm, position, pos_emb)
    idx = torch.randint(0, 17, (2, 16), generator=torch.Generator().manual_seed(2))
    full = model(idx)
    cache = model.new_cache(2)
    pieces = [model.decode(idx[:, :5], cache)]  # prefill 5 tokens
    pieces.append(model.decode(idx[:, 5:9], cache))  # 4 more at once after a cached prefix
    pieces += [model.decode(idx[:, t:t + 1], cache) for t in range(9, 16)]  # one at a time
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 16


def test_attention_probabilities_are_causal_distributions_and_logits_agree():
    model = tiny()
    idx = torch.randint(0, 17, (2, 10), generator=torch.Generator().manual_seed(3))
    logits, attentions = model.forward_with_attention(idx)
    torch.testing.assert_close(logits, model(idx), rtol=1e-5, atol=1e-5)
    assert len(attentions) == 2
    for a in attentions:
        assert a.shape == (2, 2, 10, 10)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, 10))
        assert torch.all(a.triu(diagonal=1) == 0)
    # the first query can only attend to itself
    assert torch.all(attentions[0][:, :, 0, 0] == 1)


def test_context_longer_than_block_size_is_refused():
    model = tiny()
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_tied_weights_and_parameter_count():
    model = tiny()
    assert model.head.weight is model.tok_emb.weight
    untied = tiny(tie_weights=False)
    assert untied.num_params() == model.num_params() + 17 * 16


@pytest.mark.parametrize("field,value,message", [
    ("n_head", 3, "divisible"),
    ("n_layer", 0, "at least 1"),
    ("dropout", 1.0, "dropout"),
    ("norm", "batchnorm", "layernorm, rmsnorm"),
    ("pos_emb", "sinusoid", "learned, none"),
])
def test_invalid_configs_are_rejected_with_the_reason(field, value, message):
    cfg = GPTConfig(vocab_size=10, n_embd=16, n_head=2)
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=message):
        build_model("gpt", cfg)


@pytest.mark.parametrize("pos_emb", ["learned", "none"])
def test_forward_from_embeddings_equals_forward(pos_emb):
    model = tiny(pos_emb=pos_emb)
    idx = torch.randint(0, 17, (2, 9), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model.forward_embeddings(model.embed(idx)), model(idx),
                               rtol=0, atol=0)
