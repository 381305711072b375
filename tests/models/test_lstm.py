import math

import pytest
import torch

import lmscope
from lmscope.errors import ConfigError
from lmscope.generate import SamplingConfig, generate_ids
from lmscope.models import build_model
from lmscope.models.lstm import LSTM, LSTMConfig

V = 17


def tiny(**kw) -> LSTM:
    torch.manual_seed(0)
    cfg = LSTMConfig(vocab_size=V, block_size=8, n_embd=12, n_hidden=16, n_layer=2, **kw)
    return LSTM(cfg).eval()


def ids(batch, length, seed):
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_forward_shapes_and_embedding_split():
    model = tiny()
    idx = ids(3, 10, 1)
    assert model(idx).shape == (3, 10, V)
    assert model.embed(idx).shape == (3, 10, 12)
    torch.testing.assert_close(model.forward_embeddings(model.embed(idx)), model(idx),
                               rtol=0, atol=0)
    torch.testing.assert_close(model.last_logits(model.embed(idx)), model(idx)[:, -1], rtol=1e-6,
                               atol=1e-6)  # the last position alone
    torch.testing.assert_close(model.last_logits(model.embed(idx)[:, :1]), model(idx[:, :1])[:, -1],
                               rtol=1e-6, atol=1e-6)
    assert model.context_length == 8


def test_changing_a_future_token_never_changes_earlier_logits():
    model = tiny()
    idx = ids(3, 12, 2)
    base = model(idx)
    for t in (0, 5, 11):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % V
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=0)
        assert not torch.allclose(out[:, t], base[:, t])


def test_decoding_with_the_state_matches_the_full_forward_beyond_block_size():
    model = tiny()
    idx = ids(2, 20, 3)  # block_size is 8: the state goes on past it
    full = model(idx)
    cache = model.new_cache(2)
    assert cache.capacity == math.inf
    pieces = [model.decode(idx[:, :5], cache)]  # prefill
    pieces.append(model.decode(idx[:, 5:9], cache))  # several at once after a prefix
    pieces += [model.decode(idx[:, t:t + 1], cache) for t in range(9, 20)]  # one at a time
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 20


def test_greedy_sampling_carries_the_state_through_the_whole_sequence():
    model = tiny()
    prompt = ids(2, 5, 4)
    new = generate_ids(model, prompt, SamplingConfig(max_new_tokens=20, greedy=True))
    # Reference: recompute the full forward over the whole growing sequence at every step.
    seq = prompt
    for _ in range(20):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(new, seq[:, 5:])  # 25 tokens > block_size 8: no window was applied


def test_seeded_sampling_is_deterministic():
    model = tiny()
    prompt = ids(1, 3, 5)
    cfg = SamplingConfig(max_new_tokens=15, seed=7, temperature=1.5)
    a = generate_ids(model, prompt, cfg)
    assert a.shape == (1, 15)
    assert torch.equal(a, generate_ids(model, prompt, cfg))


def test_tied_weights_and_parameter_count():
    model = tiny(tie_weights=False)
    torch.manual_seed(0)
    tied = LSTM(LSTMConfig(vocab_size=V, n_embd=16, n_hidden=16, n_layer=2, tie_weights=True))
    assert tied.head.weight is tied.tok_emb.weight
    untied = LSTM(LSTMConfig(vocab_size=V, n_embd=16, n_hidden=16, n_layer=2))
    assert untied.num_params() == tied.num_params() + V * 16
    lstm = 4 * 16 * (12 + 16 + 2) + 4 * 16 * (16 + 16 + 2)  # two layers, two bias vectors each
    assert model.num_params() == V * 12 + lstm + 16 * V + V


@pytest.mark.parametrize("field,value,message", [
    ("n_layer", 0, "model.n_layer must be at least 1"),
    ("n_hidden", 0, "model.n_hidden"),
    ("dropout", 1.0, "model.dropout"),
    ("tie_weights", True, "model.tie_weights needs model.n_hidden == model.n_embd"),
    ("vocab_size", 0, "model.vocab_size"),
])
def test_invalid_configs_are_rejected_with_the_reason(field, value, message):
    cfg = LSTMConfig(vocab_size=10, n_embd=16, n_hidden=32)
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=message):
        build_model("lstm", cfg)


def test_quantized_copy_for_sampling_runs():
    from lmscope.models.quantize import for_sampling

    model = tiny()
    prompt = ids(1, 4, 6)
    for precision in ("bfloat16", "int8"):
        fast = for_sampling(model, precision)
        new = generate_ids(fast, prompt, SamplingConfig(max_new_tokens=10, greedy=True))
        assert new.shape == (1, 10)
        close = fast(prompt).float()
        torch.testing.assert_close(close, model(prompt), rtol=0, atol=5e-2)


def test_trains_saves_reloads_samples_and_evaluates(tiny_corpus, tmp_path):
    from lmscope.config import resolve_config
    from lmscope.train.trainer import train

    config = resolve_config(data=str(tiny_corpus), model="lstm", overrides=[
        "model.n_embd=16", "model.n_hidden=32", "model.block_size=32", "train.batch_size=8",
        "train.max_iters=20", "train.eval_interval=10", "train.eval_iters=2",
        "train.warmup_iters=2", "train.log_interval=5", "train.sample_tokens=10",
        "train.checkpoint_at=10", "train.device=cpu"])
    train(config, tmp_path / "r", progress=False, log=lambda *a: None)
    ckpt = lmscope.load(tmp_path / "r", device="cpu")
    assert isinstance(ckpt.model, LSTM) and ckpt.model_name == "lstm"
    assert ckpt.model.config.n_hidden == 32
    text = lmscope.generate(ckpt, "First", max_new_tokens=20, seed=0)
    assert isinstance(text, str) and text
    assert text == lmscope.generate(ckpt, "First", max_new_tokens=20, seed=0)
    result = lmscope.evaluate(ckpt, str(tiny_corpus))
    assert math.isfinite(result.loss)
