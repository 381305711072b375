from __future__ import annotations

import json
import math

import pytest
import torch

from lmscope.errors import LmscopeError
from lmscope.metrics.attention import (
    attention_summary,
    check_attention,
    head_diversity,
    js_divergence,
    layer_similarity,
    mean_distance,
    normalized_entropy,
    query_entropy_bits,
    span,
)

# --- hand-built maps, each (B, H, T, T) float64 ---------------------------------------------------


def uniform(t: int, b: int = 1, h: int = 1) -> torch.Tensor:
    """Row q is 1/(q+1) on every key k <= q."""
    rows = torch.tril(torch.ones(t, t, dtype=torch.float64))
    return (rows / rows.sum(dim=-1, keepdim=True)).expand(b, h, t, t).clone()


def one_hot_on(keys: list[int], b: int = 1, h: int = 1) -> torch.Tensor:
    """Row q puts all its mass on key keys[q]."""
    t = len(keys)
    rows = torch.zeros(t, t, dtype=torch.float64)
    rows[torch.arange(t), torch.tensor(keys)] = 1.0
    return rows.expand(b, h, t, t).clone()


def previous_token(t: int, b: int = 1, h: int = 1) -> torch.Tensor:
    return one_hot_on([max(q - 1, 0) for q in range(t)], b, h)


def first_token(t: int, b: int = 1, h: int = 1) -> torch.Tensor:
    return one_hot_on([0] * t, b, h)


def identity(t: int, b: int = 1, h: int = 1) -> torch.Tensor:
    return one_hot_on(list(range(t)), b, h)


def random_causal(b: int, h: int, t: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(b, h, t, t, generator=g, dtype=torch.float64)
    future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    return torch.softmax(logits.masked_fill(future, -math.inf), dim=-1).to(dtype)


def slow_js(p: list[float], q: list[float]) -> float:
    """JS divergence in bits by the textbook formula, one term at a time."""
    total = 0.0
    for pi, qi in zip(p, q, strict=True):
        mi = (pi + qi) / 2
        if pi > 0:
            total += 0.5 * pi * math.log2(pi / mi)
        if qi > 0:
            total += 0.5 * qi * math.log2(qi / mi)
    return total


# --- per-query metrics ----------------------------------------------------------------------------

T = 40  # includes q + 1 = 10, 20, 30, 40, where 0.9 (q + 1) is a whole number


def test_uniform_map():
    att = uniform(T, b=2, h=3)
    q = torch.arange(T, dtype=torch.float64)
    expected_entropy = torch.log2(q + 1).expand(2, 3, T)
    torch.testing.assert_close(query_entropy_bits(att), expected_entropy, atol=1e-12, rtol=0)
    norm = normalized_entropy(att)
    assert torch.isnan(norm[..., 0]).all()
    torch.testing.assert_close(norm[..., 1:], torch.ones(2, 3, T - 1, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(mean_distance(att), (q / 2).expand(2, 3, T), atol=1e-12, rtol=0)
    spans = span(att)
    assert spans.shape == (2, 3, T) and spans.dtype == torch.float64
    for query in range(T):
        expected = -(-9 * (query + 1) // 10) - 1  # ceil(0.9 (q + 1)) - 1, in whole numbers
        assert (spans[..., query] == expected).all(), query


def test_previous_token_map():
    att = previous_token(T)
    assert query_entropy_bits(att).abs().max() == 0
    expected_distance = torch.ones(T, dtype=torch.float64)
    expected_distance[0] = 0
    assert torch.equal(mean_distance(att)[0, 0], expected_distance)
    assert torch.equal(span(att)[0, 0], expected_distance)  # span90 = 1 for q >= 1, 0 at q = 0


def test_first_token_map():
    att = first_token(T)
    q = torch.arange(T, dtype=torch.float64)
    assert query_entropy_bits(att).abs().max() == 0
    assert torch.equal(mean_distance(att)[0, 0], q)
    assert torch.equal(span(att)[0, 0], q)
    assert torch.equal(span(att, mass=0.01)[0, 0], q)


def test_identity_map():
    att = identity(T)
    zeros = torch.zeros(1, 1, T, dtype=torch.float64)
    assert torch.equal(query_entropy_bits(att), zeros)
    assert torch.equal(mean_distance(att), zeros)
    assert torch.equal(span(att, mass=1.0), zeros)
    assert (normalized_entropy(att)[..., 1:] == 0).all()


def test_span_edges_and_mass():
    att = uniform(10)
    assert torch.equal(span(att, mass=1.0)[0, 0], torch.arange(10, dtype=torch.float64))
    assert torch.equal(span(att, mass=1e-6)[0, 0], torch.zeros(10, dtype=torch.float64))
    # mass exactly 0.5 on row 3 (four keys) is reached at d = 1 despite rounding
    assert span(att, mass=0.5)[0, 0, 3] == 1
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(LmscopeError):
            span(att, mass=bad)


def test_random_map_matches_slow_loops():
    att = random_causal(2, 2, 7, seed=3)
    entropy, distance, spans = query_entropy_bits(att), mean_distance(att), span(att, mass=0.8)
    for b in range(2):
        for h in range(2):
            for q in range(7):
                row = att[b, h, q].tolist()
                assert entropy[b, h, q] == pytest.approx(
                    -sum(p * math.log2(p) for p in row if p > 0), abs=1e-12)
                assert distance[b, h, q] == pytest.approx(
                    sum(p * (q - k) for k, p in enumerate(row)), abs=1e-12)
                d = 0
                while sum(row[q - d:q + 1]) < 0.8 - 1e-9:
                    d += 1
                assert spans[b, h, q] == d


def test_any_float_dtype_gives_float64():
    att64 = random_causal(1, 2, 6, seed=1)
    att32 = att64.float()
    for fn in (query_entropy_bits, normalized_entropy, mean_distance, span):
        out = fn(att32)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, fn(att64), atol=1e-5, rtol=1e-5, equal_nan=True)


# --- JS divergence and head diversity -------------------------------------------------------------

def test_js_divergence_basic_values():
    p = torch.tensor([0.2, 0.3, 0.5])
    assert js_divergence(p, p).item() == 0.0
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    assert js_divergence(a, b).item() == pytest.approx(1.0, abs=1e-15)
    assert js_divergence(a, b).dtype == torch.float64


def test_js_divergence_matches_formula_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(5, 8, generator=g, dtype=torch.float64)
    q = torch.rand(5, 8, generator=g, dtype=torch.float64)
    p[:, :2] = 0  # some zeros, some shared zeros
    q[:, 1:3] = 0
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    js = js_divergence(p, q)
    assert torch.equal(js, js_divergence(q, p))
    assert ((js >= 0) & (js <= 1)).all()
    for i in range(5):
        assert js[i].item() == pytest.approx(slow_js(p[i].tolist(), q[i].tolist()), abs=1e-12)
    # along another dimension
    torch.testing.assert_close(js_divergence(p.T, q.T, dim=0), js, atol=1e-15, rtol=0)


def test_head_diversity_known_values():
    t = 12
    assert head_diversity(uniform(t, h=1)) == 0.0
    assert head_diversity(random_causal(2, 1, t)) == 0.0
    same = random_causal(2, 1, t).expand(2, 2, t, t)
    assert head_diversity(same) == 0.0
    # previous-token vs first-token: 1 bit on every q >= 2, 0 on q = 0 and q = 1
    two = torch.cat([previous_token(t, b=3), first_token(t, b=3)], dim=1)
    assert head_diversity(two) == pytest.approx((t - 2) / t, abs=1e-12)


def test_head_diversity_is_mean_over_pairs():
    att = random_causal(2, 4, 5, seed=7)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    expected = sum(js_divergence(att[:, i], att[:, j]).mean().item() for i, j in pairs) / 6
    assert head_diversity(att) == pytest.approx(expected, abs=1e-12)


def test_head_diversity_runs_at_model_size():
    value = head_diversity(random_causal(8, 6, 256, seed=2, dtype=torch.float32))
    assert 0.0 < value < 1.0


# --- layers -----------------------------------------------------------------------------------------

def test_layer_similarity_identical_layers():
    att = random_causal(2, 3, 9, seed=4)
    js, cosine = layer_similarity([att, att.clone(), att.float()])
    assert js.shape == cosine.shape == (3, 3)
    assert js.dtype == cosine.dtype == torch.float64
    torch.testing.assert_close(js, torch.zeros(3, 3, dtype=torch.float64), atol=1e-7, rtol=0)
    torch.testing.assert_close(cosine, torch.ones(3, 3, dtype=torch.float64), atol=1e-7, rtol=0)


def test_layer_similarity_uniform_vs_previous_token():
    t, b = 6, 2
    layers = [uniform(t, b=b, h=2), previous_token(t, b=b, h=2), random_causal(b, 2, t)]
    js, cosine = layer_similarity(layers)
    assert torch.equal(js, js.T) and torch.equal(cosine, cosine.T)
    assert (js.diagonal() == 0).all() and (cosine.diagonal() == 1).all()
    # by hand, one query and one flattened map at a time
    u, p = uniform(t)[0, 0].tolist(), previous_token(t)[0, 0].tolist()
    expected_js = sum(slow_js(u[q], p[q]) for q in range(t)) / t
    flat_u, flat_p = sum(u, []), sum(p, [])
    dot = sum(x * y for x, y in zip(flat_u, flat_p, strict=True))
    expected_cos = dot / math.sqrt(sum(x * x for x in flat_u) * sum(y * y for y in flat_p))
    assert js[0, 1].item() == pytest.approx(expected_js, abs=1e-12)
    assert cosine[0, 1].item() == pytest.approx(expected_cos, abs=1e-12)


def test_layer_similarity_averages_heads_and_batch():
    a, c = random_causal(3, 2, 5, seed=5), random_causal(3, 4, 5, seed=6)
    js, cosine = layer_similarity([a, c])
    ma, mc = a.mean(dim=1), c.mean(dim=1)
    assert js[0, 1].item() == pytest.approx(js_divergence(ma, mc).mean().item(), abs=1e-12)
    cos = torch.nn.functional.cosine_similarity(ma.flatten(1), mc.flatten(1), dim=-1).mean()
    assert cosine[0, 1].item() == pytest.approx(cos.item(), abs=1e-12)


# --- summary ----------------------------------------------------------------------------------------

def test_attention_summary_random_model():
    atts = [random_causal(2, 3, 8, seed=10), random_causal(2, 3, 8, seed=11)]
    summary = attention_summary(atts)
    json.dumps(summary, allow_nan=False)
    assert summary["n_layers"] == 2 and summary["n_heads"] == 3 and summary["n_queries"] == 8
    per_head = ("entropy_bits", "entropy_norm", "mean_distance", "span90")
    assert len(summary["layers"]) == 2
    for layer in summary["layers"]:
        assert set(layer) == {*per_head, "head_diversity_js"}
        for key in per_head:
            assert len(layer[key]) == 3
            assert all(isinstance(v, float) and math.isfinite(v) for v in layer[key])
        assert isinstance(layer["head_diversity_js"], float)
    for key in per_head:
        values = [v for layer in summary["layers"] for v in layer[key]]
        assert summary[key] == pytest.approx(sum(values) / len(values), abs=1e-12)
    diversities = [layer["head_diversity_js"] for layer in summary["layers"]]
    assert summary["head_diversity_js"] == pytest.approx(sum(diversities) / 2, abs=1e-12)
    assert len(summary["layer_js"]) == 2 and len(summary["layer_cosine"][0]) == 2
    # per-head values agree with the functions
    first = summary["layers"][0]
    assert first["entropy_bits"] == pytest.approx(
        query_entropy_bits(atts[0]).mean(dim=(0, 2)).tolist(), abs=1e-12)
    assert first["entropy_norm"] == pytest.approx(
        normalized_entropy(atts[0])[..., 1:].mean(dim=(0, 2)).tolist(), abs=1e-12)


def test_attention_summary_known_values_and_mass_key():
    t = 10
    summary = attention_summary([uniform(t, h=2), previous_token(t, h=2)], mass=0.5)
    assert "span50" in summary and "span90" not in summary
    assert "span50" in summary["layers"][0]
    uni, prev = summary["layers"]
    assert uni["entropy_norm"] == pytest.approx([1.0, 1.0], abs=1e-12)
    assert uni["mean_distance"] == pytest.approx([(t - 1) / 4] * 2, abs=1e-12)  # mean of q/2
    assert prev["entropy_bits"] == [0.0, 0.0]
    assert prev["mean_distance"] == pytest.approx([(t - 1) / t] * 2, abs=1e-12)
    assert uni["head_diversity_js"] == 0.0 and prev["head_diversity_js"] == 0.0


def test_attention_summary_single_query():
    summary = attention_summary([torch.ones(1, 2, 1, 1)])
    json.dumps(summary, allow_nan=False)
    assert summary["entropy_norm"] == 0.0 and summary["layers"][0]["entropy_norm"] == [0.0, 0.0]
    assert summary["span90"] == 0.0 and summary["layer_cosine"] == [[1.0]]


def test_attention_summary_rejects_bad_input():
    with pytest.raises(LmscopeError):
        attention_summary([])
    with pytest.raises(LmscopeError, match="same"):
        attention_summary([uniform(5, h=2), uniform(5, h=3)])
    with pytest.raises(LmscopeError, match="layer 1"):
        attention_summary([uniform(5), 2 * uniform(5)])


# --- validation -----------------------------------------------------------------------------------

def test_check_attention_accepts_valid_maps():
    check_attention(uniform(5, b=2, h=3))
    check_attention(random_causal(2, 2, 16, dtype=torch.float32))


@pytest.mark.parametrize("bad", [
    uniform(4)[0],  # 3-D
    torch.ones(1, 1, 3, 4) / 4,  # not square
    torch.full((1, 1, 4, 4), 0.25),  # not causal
    2 * uniform(4),  # rows sum to 2
    uniform(4).masked_fill(torch.eye(4, dtype=torch.bool), math.nan),  # NaN
    previous_token(4) - 0.5 * identity(4) + 0.5 * first_token(4),  # a negative entry
    torch.ones(1, 1, 4, 4, dtype=torch.int64),  # not float
    torch.ones(1, 0, 4, 4),  # empty
])
def test_check_attention_rejects(bad):
    with pytest.raises(LmscopeError):
        check_attention(bad)
