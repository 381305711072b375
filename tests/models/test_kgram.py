import math

import pytest
import torch

import lmscope
from lmscope.errors import ConfigError
from lmscope.generate import SamplingConfig, generate_ids
from lmscope.models import build_model
from lmscope.models.kgram import KGram, KGramConfig

V = 17
INPUTS = ["embedding", "onehot"]


def tiny(input="embedding", k=3, **kw) -> KGram:
    torch.manual_seed(0)
    cfg = KGramConfig(vocab_size=V, block_size=8, k=k, input=input, n_embd=8, n_hidden=16,
                      n_layer=2, **kw)
    return KGram(cfg).eval()


def ids(batch, length, seed):
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("input", INPUTS)
def test_forward_shapes_and_embedding_split(input):
    model = tiny(input)
    idx = ids(3, 10, 1)
    assert model(idx).shape == (3, 10, V)
    emb = model.embed(idx)
    assert emb.shape == (3, 10, 8 if input == "embedding" else V)
    torch.testing.assert_close(model.forward_embeddings(emb), model(idx), rtol=0, atol=0)
    torch.testing.assert_close(model.last_logits(emb), model(idx)[:, -1], rtol=1e-6,
                               atol=1e-6)  # the last position alone
    torch.testing.assert_close(model.last_logits(emb[:, :1]), model(idx[:, :1])[:, -1],
                               rtol=1e-6, atol=1e-6)
    assert model.context_length == 8


@pytest.mark.parametrize("input", INPUTS)
@pytest.mark.parametrize("k", [1, 3])
def test_each_position_sees_exactly_the_last_k_tokens(input, k):
    model = tiny(input, k)
    idx = ids(2, 12, 2)
    base = model(idx)
    for t in (0, 1, 5, 11):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % V
        out = model(changed)
        moved = (out - base).abs().amax(dim=(0, 2)) > 0  # per position
        expected = torch.zeros(12, dtype=torch.bool)
        expected[t:t + k] = True  # positions t..t+k-1 read token t; no other position does
        assert torch.equal(moved, expected), (t, moved)


def test_padding_before_the_start_is_not_a_real_token():
    model = tiny(k=3)
    idx = ids(1, 8, 3)
    base = model(idx)
    # Position 0 depends on token 0 only; position 1 on tokens 0 and 1 (not on 2 and later).
    for token in range(V):
        changed = idx.clone()
        changed[0, 0] = token
        if token != idx[0, 0]:
            assert not torch.allclose(model(changed)[0, 0], base[0, 0])
    changed = idx.clone()
    changed[0, 2:] = (changed[0, 2:] + 1) % V
    torch.testing.assert_close(model(changed)[0, :2], base[0, :2], rtol=0, atol=0)
    # Position 5 reads tokens 3, 4, 5: tokens 0..2 do not matter.
    changed = idx.clone()
    changed[0, :3] = (changed[0, :3] + 1) % V
    torch.testing.assert_close(model(changed)[0, 5:], base[0, 5:], rtol=0, atol=0)
    # The padding id (vocab_size) is no real token: a sequence that starts with any real token
    # twice differs at position 1 from one that starts after padding.
    for token in range(V):
        seq = torch.tensor([[token, token]])
        padded = model._mlp_on(model._vectors(torch.tensor([[V, V, token]])))[0, 0]
        torch.testing.assert_close(model(seq)[0, 0], padded, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(model(seq)[0, 1], padded)


@pytest.mark.parametrize("input", INPUTS)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_decoding_with_the_cache_matches_the_full_forward_beyond_block_size(input, k):
    model = tiny(input, k)
    idx = ids(2, 20, 4)  # block_size is 8
    full = model(idx)
    cache = model.new_cache(2)
    assert cache.capacity == math.inf
    pieces = [model.decode(idx[:, :1], cache)]  # the first positions see padding in the cache
    pieces.append(model.decode(idx[:, 1:3], cache))
    pieces += [model.decode(idx[:, t:t + 1], cache) for t in range(3, 20)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 20 and cache.tokens.shape == (2, k - 1)


@pytest.mark.parametrize("input", INPUTS)
def test_greedy_sampling_matches_recomputation_and_seeded_sampling_repeats(input):
    model = tiny(input, k=4)
    prompt = ids(2, 5, 5)
    new = generate_ids(model, prompt, SamplingConfig(max_new_tokens=20, greedy=True))
    seq = prompt
    for _ in range(20):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(new, seq[:, 5:])
    cfg = SamplingConfig(max_new_tokens=15, seed=7, temperature=1.5)
    a = generate_ids(model, prompt, cfg)
    assert a.shape == (2, 15)
    assert torch.equal(a, generate_ids(model, prompt, cfg))


def test_parameter_count():
    model = tiny("onehot", k=3)
    assert model.num_params() == (3 * (V + 1) * 16 + 16) + (16 * 16 + 16) + (16 * V + V)
    model = tiny("embedding", k=3)
    assert model.num_params() == ((V + 1) * 8 + (3 * 8 * 16 + 16) + (16 * 16 + 16)
                                  + (16 * V + V))


@pytest.mark.parametrize("field,value,message", [
    ("k", 0, "model.k must be at least 1, got 0"),
    ("input", "bag", "model.input must be one of embedding, onehot"),
    ("n_hidden", 0, "model.n_hidden"),
    ("n_embd", 0, "model.n_embd"),
    ("n_layer", 0, "model.n_layer"),
    ("dropout", -0.1, "model.dropout"),
    ("vocab_size", 0, "model.vocab_size"),
])
def test_invalid_configs_are_rejected_with_the_reason(field, value, message):
    cfg = KGramConfig(vocab_size=10)
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=message):
        build_model("kgram", cfg)


@pytest.mark.parametrize("input", INPUTS)
def test_quantized_copy_for_sampling_runs(input):
    from lmscope.models.quantize import for_sampling

    model = tiny(input)
    prompt = ids(1, 4, 6)
    for precision in ("bfloat16", "int8"):
        fast = for_sampling(model, precision)
        new = generate_ids(fast, prompt, SamplingConfig(max_new_tokens=10, greedy=True))
        assert new.shape == (1, 10)
        torch.testing.assert_close(fast(prompt).float(), model(prompt), rtol=0, atol=5e-2)


@pytest.mark.parametrize("input", INPUTS)
def test_trains_saves_reloads_samples_and_evaluates(tiny_corpus, tmp_path, input):
    from lmscope.config import resolve_config
    from lmscope.train.trainer import train

    config = resolve_config(data=str(tiny_corpus), model="kgram", overrides=[
        "model.k=3", f"model.input={input}", "model.n_embd=16", "model.n_hidden=32",
        "model.block_size=32", "train.batch_size=8", "train.max_iters=20",
        "train.eval_interval=10", "train.eval_iters=2", "train.warmup_iters=2",
        "train.log_interval=5", "train.sample_tokens=10", "train.checkpoint_at=10",
        "train.device=cpu"])
    train(config, tmp_path / "r", progress=False, log=lambda *a: None)
    ckpt = lmscope.load(tmp_path / "r", device="cpu")
    assert isinstance(ckpt.model, KGram) and ckpt.model_name == "kgram"
    assert ckpt.model.config.input == input and ckpt.model.config.k == 3
    text = lmscope.generate(ckpt, "First", max_new_tokens=20, seed=0)
    assert isinstance(text, str) and text
    assert text == lmscope.generate(ckpt, "First", max_new_tokens=20, seed=0)
    result = lmscope.evaluate(ckpt, str(tiny_corpus))
    assert math.isfinite(result.loss)
