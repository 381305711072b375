"""Head detectors, induction losses and the ICL score (metrics/heads.py), checked against
hand-built attention patterns with known answers, closed forms, a loop-by-loop reimplementation
over the model's own attention maps (forward_with_attention, not the hook points), and
TransformerLens's "mul" score rebuilt from its definition."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmscope.api import run_with_cache
from lmscope.errors import LmscopeError
from lmscope.metrics.heads import (
    DETECTORS,
    forward_cached,
    head_scores,
    icl_losses,
    icl_positions,
    in_context_score,
    induction_loss,
    repeated_random_tokens,
)
from lmscope.run.checkpoint import load
from tests.test_export import CHARS, tiny_checkpoint


@pytest.fixture
def gpt(tmp_path):
    return load(tiny_checkpoint(tmp_path / "gpt"), device="cpu").model

class Patterned(torch.nn.Module):
    """A GPT whose every layer's attention pattern is replaced by `make(shape)`."""

    def __init__(self, net, make):
        super().__init__()
        self.net, self.make = net, make
        self.config = net.config

    @property
    def context_length(self):
        return self.net.context_length

    def hook_names(self):
        return self.net.hook_names()

    def forward(self, idx, hooks=None):
        for layer in range(self.config.n_layer):
            hooks.functions.setdefault(f"blocks.{layer}.attn.hook_pattern", []).insert(
                0, lambda a, name: self.make(a.shape).to(a.dtype))
        return self.net(idx, hooks=hooks)

def previous_pattern(shape):
    B, H, T, _ = shape
    a = torch.zeros(shape)
    a[:, :, 0, 0] = 1.0
    for q in range(1, T):
        a[:, :, q, q - 1] = 1.0
    return a

def induction_pattern(shape):
    B, H, T, _ = shape
    L = T // 2
    a = torch.zeros(shape)
    for q in range(T):
        a[:, :, q, q - L + 1 if q >= L else 0] = 1.0
    return a

def uniform_pattern(shape):
    B, H, T, _ = shape
    row = torch.arange(1, T + 1, dtype=torch.float32)[:, None]
    return torch.ones(T, T).tril() / row * torch.ones(B, H, 1, 1)

def full(value):
    return torch.full((2, 4), value, dtype=torch.float64)

def dup_reference(ids, mass):
    """Pooled mean over (sequence, query) with an earlier same token of mass(seq, q, dups)."""
    total, count = 0.0, 0
    for b, seq in enumerate(ids.tolist()):
        for q in range(len(seq)):
            dups = [k for k in range(q) if seq[k] == seq[q]]
            if dups:
                total += mass(b, q, dups)
                count += 1
    return total / count

def test_exact_previous_token_pattern(gpt):
    scores = head_scores(Patterned(gpt, previous_pattern), n_sequences=3, exclude=(0,))
    ids = repeated_random_tokens(CHARS.vocab_size, 32, 3, exclude=(0,))
    assert set(scores) == set(DETECTORS)
    assert all(s.shape == (2, 4) for s in scores.values())
    assert torch.allclose(scores["previous_token"], full(1.0))
    assert scores["induction"].abs().max() == 0.0  # L = 16: the key L-1 back is never q-1
    assert torch.allclose(scores["first_token"], full(1 / 31))  # only query 1
    expected = dup_reference(ids, lambda b, q, dups: float(q - 1 in dups))
    assert torch.allclose(scores["duplicate_token"], full(expected))

def test_exact_induction_pattern(gpt):
    scores = head_scores(Patterned(gpt, induction_pattern), n_sequences=3, exclude=(0,))
    assert torch.allclose(scores["induction"], full(1.0))
    assert torch.allclose(scores["previous_token"], full(1 / 31))  # query 1 only
    assert torch.allclose(scores["first_token"], full(15 / 31))  # queries 1..15

def test_uniform_causal_attention_gives_the_closed_form(gpt):
    scores = head_scores(Patterned(gpt, uniform_pattern), seq_len=20, n_sequences=4, seed=3)
    ids = repeated_random_tokens(CHARS.vocab_size, 20, 4, seed=3)
    mean_inverse = sum(1 / (i + 1) for i in range(1, 20)) / 19
    assert torch.allclose(scores["first_token"], full(mean_inverse))
    assert torch.allclose(scores["previous_token"], full(mean_inverse))
    induction = sum(1 / (i + 1) for i in range(10, 20)) / 10
    assert torch.allclose(scores["induction"], full(induction))
    expected = dup_reference(ids, lambda b, q, dups: len(dups) / (q + 1))
    assert torch.allclose(scores["duplicate_token"], full(expected))

@pytest.mark.parametrize("config", [{}, {"norm_position": "post"}])
def test_vectorised_scores_equal_a_loop_over_positions(tmp_path, config):
    net = load(tiny_checkpoint(tmp_path / "ckpt", **config), device="cpu").model
    scores = head_scores(net, seq_len=24, n_sequences=3, seed=5, exclude=(0,))
    ids = repeated_random_tokens(CHARS.vocab_size, 24, 3, seed=5, exclude=(0,))
    with torch.no_grad():
        _, attentions = net.forward_with_attention(ids)  # the fused path's own maps
    T, L = 24, 12
    for layer, att in enumerate(attentions):
        for h in range(4):
            a = att[:, h].double().tolist()
            prev = [a[b][q][q - 1] for b in range(3) for q in range(1, T)]
            first = [a[b][q][0] for b in range(3) for q in range(1, T)]
            induc = [a[b][q][q - L + 1] for b in range(3) for q in range(L, T)]
            dup = dup_reference(ids, lambda b, q, dups, a=a: sum(a[b][q][k] for k in dups))
            for name, want in (("previous_token", sum(prev) / len(prev)),
                               ("first_token", sum(first) / len(first)),
                               ("induction", sum(induc) / len(induc)),
                               ("duplicate_token", dup)):
                assert scores[name][layer, h].item() == pytest.approx(want, abs=1e-6), name
    for s in scores.values():
        assert s.min() >= 0.0 and s.max() <= 1.0

def test_relation_to_transformerlens_mul_score(gpt):
    """TL's score sum(A * D) / sum(A) over one sequence = (queries with a target / T) x ours."""
    ids = repeated_random_tokens(CHARS.vocab_size, 16, 1, seed=2, exclude=(0,))
    scores = head_scores(gpt, seq_len=16, n_sequences=1, seed=2, exclude=(0,))
    with torch.no_grad():
        _, attentions = gpt.forward_with_attention(ids)
    seq = ids[0].tolist()
    T = 16
    previous = torch.zeros(T, T)
    duplicate = torch.zeros(T, T)
    for q in range(T):
        for k in range(q):
            previous[q, k] = float(k == q - 1)
            duplicate[q, k] = float(seq[k] == seq[q])
    for name, d in (("previous_token", previous), ("duplicate_token", duplicate)):
        with_target = int((d.sum(1) > 0).sum())
        for layer, att in enumerate(attentions):
            a = att[0].double()  # (head, q, k)
            tl = (a * d.double()).sum((1, 2)) / a.sum((1, 2))
            assert torch.allclose(tl, scores[name][layer] * with_target / T, atol=1e-6)

def test_repeated_random_tokens():
    ids = repeated_random_tokens(10, 12, 50, seed=1, exclude=(0, 3))
    assert ids.shape == (50, 12)
    assert torch.equal(ids[:, :6], ids[:, 6:])
    assert set(ids.unique().tolist()) == {1, 2, 4, 5, 6, 7, 8, 9}  # 300 draws cover all 8
    assert torch.equal(ids, repeated_random_tokens(10, 12, 50, seed=1, exclude=(0, 3)))
    assert not torch.equal(ids, repeated_random_tokens(10, 12, 50, seed=2, exclude=(0, 3)))

def test_induction_loss_against_cross_entropy(gpt):
    losses = induction_loss(gpt, seq_len=20, n_sequences=3, seed=4, exclude=(0,))
    ids = repeated_random_tokens(CHARS.vocab_size, 20, 3, seed=4, exclude=(0,))
    with torch.no_grad():
        logits = gpt(ids)
    first = [F.cross_entropy(logits[b, t], ids[b, t + 1]).item()
             for b in range(3) for t in range(0, 9)]  # targets x_1 .. x_9
    second = [F.cross_entropy(logits[b, t], ids[b, t + 1]).item()
              for b in range(3) for t in range(10, 19)]  # targets x_11 .. x_19
    assert losses.first_half == pytest.approx(sum(first) / len(first), abs=1e-5)
    assert losses.second_half == pytest.approx(sum(second) / len(second), abs=1e-5)
    assert losses.uniform == pytest.approx(math.log(CHARS.vocab_size - 1))
    assert losses.gap == pytest.approx(losses.first_half - losses.second_half)

class PositionModel(torch.nn.Module):
    """Not causal, for the test: the true next token gets logit t at position t, others 0."""

    context_length = 64

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.vocab)
        for t in range(T - 1):
            logits[torch.arange(B), t, idx[:, t + 1]] = float(t)
        return logits

def test_icl_positions():
    assert icl_positions(32) == (range(2, 5), range(28, 31))
    early, late = icl_positions(512)  # Olsson et al.: the 50th and the 500th token of 512
    assert 50 in early and 500 in late and len(early) == len(late) == 51
    assert icl_positions(4) == (range(0, 1), range(2, 3))

def test_in_context_score_closed_form():
    V = 7
    model = PositionModel(V)
    windows = torch.randint(0, V, (5, 32), generator=torch.Generator().manual_seed(0))

    def loss(t):  # -log(e^t / (e^t + V - 1))
        return math.log(math.exp(t) + V - 1) - t

    expected = sum(map(loss, (28, 29, 30))) / 3 - sum(map(loss, (2, 3, 4))) / 3
    assert in_context_score(model, windows) == pytest.approx(expected, abs=1e-9)
    assert expected < 0  # later positions are easier for this model
    mask = torch.ones(5, 31, dtype=torch.bool)
    mask[:, 2] = False  # the first early prediction's targets unknown: left out
    early, late = icl_losses(model, windows, mask)
    assert early == pytest.approx((loss(3) + loss(4)) / 2, abs=1e-9)
    mask[:, 28:31] = False
    assert math.isnan(icl_losses(model, windows, mask)[1])

def test_bad_inputs(gpt):
    with pytest.raises(LmscopeError, match="longer than the model's context of 32"):
        head_scores(gpt, seq_len=34)
    with pytest.raises(LmscopeError, match="even and at least 4"):
        head_scores(gpt, seq_len=15)
    with pytest.raises(LmscopeError, match="even and at least 4"):
        induction_loss(gpt, seq_len=2)
    with pytest.raises(LmscopeError, match="n_sequences must be at least 1"):
        head_scores(gpt, n_sequences=0)
    with pytest.raises(LmscopeError, match="batch_size must be at least 1"):
        induction_loss(gpt, batch_size=0)
    with pytest.raises(LmscopeError, match="at least 2 token ids"):
        head_scores(gpt, exclude=range(1, CHARS.vocab_size))
    with pytest.raises(LmscopeError, match="windows of at least 4 tokens"):
        in_context_score(gpt, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(LmscopeError, match="give at most 32"):
        in_context_score(gpt, torch.ones(2, 40, dtype=torch.long))
    with pytest.raises(LmscopeError, match="target mask must be"):
        in_context_score(gpt, torch.ones(2, 10, dtype=torch.long), torch.ones(2, 10))


def test_forward_cached_equals_run_with_cache_and_restores_the_mode(gpt):
    ids = repeated_random_tokens(CHARS.vocab_size, 20, 5, seed=6, exclude=(0,))
    names = ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    gpt.train()
    logits, cache = forward_cached(gpt, ids, names, batch_size=2)  # 3 batches, joined
    assert gpt.training
    want_logits, want = run_with_cache(gpt, ids, names, batch_size=5)
    torch.testing.assert_close(logits, want_logits)
    for n in names:
        torch.testing.assert_close(cache[n], want[n])
    bare, empty = forward_cached(gpt, ids, batch_size=4)
    assert empty == {}
    torch.testing.assert_close(bare, want_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", ["lstm", "kgram"])
def test_models_without_heads_have_no_scores_but_induction_losses(tmp_path, model):
    net = load(tiny_checkpoint(tmp_path / "ckpt", model=model), device="cpu").model
    with pytest.raises(LmscopeError, match="no attention heads to score"):
        head_scores(net)
    losses = induction_loss(net, n_sequences=2)
    assert math.isfinite(losses.first_half) and math.isfinite(losses.second_half)
