"""Numbers that describe the attention of a causal Transformer: how spread out, how far back, how
alike the heads and the layers are.

Input. One layer's attention probabilities are a tensor `att` of shape (B, H, T, T): batch b,
head h, query position q, key position k. Row A[q, :] = att[b, h, q, :] is a probability
distribution over the keys k <= q that query q can see: entries are >= 0, zero above the diagonal
(k > q) and each row sums to 1. A model gives a list of such tensors, one per layer, all of the
same shape. Any float dtype and device is accepted; everything is computed in float64 on the
input's device. `check_attention` tests these conditions; the metric functions assume them.

Per query (each returns a (B, H, T) float64 tensor):

    query_entropy_bits   H(q) = -sum_k A[q, k] log2 A[q, k], with 0 log 0 = 0.
                         0 for a one-hot row, log2(q + 1) for a uniform row.
    normalized_entropy   H(q) / log2(q + 1), the entropy over its largest possible value (the
                         uniform row over the q + 1 visible keys), so in [0, 1]. Query 0 sees
                         one key, 0/0: it is NaN here and is left out of every mean of this
                         quantity.
    mean_distance        D(q) = sum_k A[q, k] (q - k), the expected number of positions the
                         query looks back (0 = only itself).
    span(mass=0.9)       S(q) = the smallest distance d >= 0 such that the mass on the keys
                         q - d <= k <= q is >= mass, i.e. how far back one must go to collect
                         `mass` of the attention. A sum that equals `mass` up to 1e-9 counts, so
                         that rounding in the cumulative sum does not add one to the span.

Between distributions:

    js_divergence(p, q)  JS(p, q) = 1/2 KL(p || m) + 1/2 KL(q || m), m = (p + q) / 2, with
                         KL(p || m) = sum_i p_i log2(p_i / m_i) and 0 log 0 = 0; in bits, so in
                         [0, 1]: 0 for equal distributions, 1 for disjoint supports.
    head_diversity(att)  the mean, over head pairs i < j, queries q and batch b, of
                         JS(att[b, i, q, :], att[b, j, q, :]): how differently the heads of one
                         layer distribute the same query. 0.0 for a single head.
    layer_similarity     for layers l = 1..L, with the head-averaged map M_l = att_l.mean(dim=1)
                         of shape (B, T, T), two (L, L) float64 matrices:
                           js[i, j]      mean over b and q of JS(M_i[b, q, :], M_j[b, q, :])
                           cosine[i, j]  mean over b of the cosine similarity of M_i[b] and
                                         M_j[b], each flattened to T*T numbers
                         Both are symmetric; the js diagonal is 0 and the cosine diagonal 1.

`attention_summary(atts, mass)` gathers these into a JSON-ready dict (Python floats, ints and
lists only; never NaN or inf). Per layer and head, each of entropy_bits, mean_distance and
span{100*mass} is the mean over batch and all queries; entropy_norm is the mean over batch and
queries q >= 1 (0.0 when T == 1, where no query has more than one key). The top-level values of
these four and of head_diversity_js are means over layers and heads (for head diversity, over
layers):

    {"layers": [{"entropy_bits": [per head], "entropy_norm": [per head],
                 "mean_distance": [per head], "span90": [per head],
                 "head_diversity_js": float}, ...one per layer],
     "layer_js": L x L list, "layer_cosine": L x L list,
     "entropy_bits": float, "entropy_norm": float, "mean_distance": float, "span90": float,
     "head_diversity_js": float, "n_layers": L, "n_heads": H, "n_queries": T}

The span key is f"span{round(mass * 100)}", so "span90" for the default mass 0.9.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lmscope.errors import LmscopeError

LN2 = math.log(2.0)
SPAN_TOLERANCE = 1e-9  # a cumulative mass this close below `mass` counts as reaching it
ABOVE_DIAGONAL_TOLERANCE = 1e-6  # largest entry allowed above the diagonal (future keys)
ROW_SUM_TOLERANCE = 1e-3  # largest allowed |row sum - 1|


def _as_float64_maps(att: Tensor) -> Tensor:
    """`att` in float64, after a shape check (the metrics index by position, so they need it)."""
    if not isinstance(att, Tensor) or att.dim() != 4 or att.shape[-1] != att.shape[-2]:
        shape = tuple(att.shape) if isinstance(att, Tensor) else type(att).__name__
        raise LmscopeError(f"attention must be a (batch, heads, T, T) tensor, got {shape}")
    return att.to(torch.float64)


def check_attention(att: Tensor) -> None:
    """Raise LmscopeError unless `att` is a valid (B, H, T, T) causal attention tensor."""
    if not isinstance(att, Tensor):
        raise LmscopeError(f"attention must be a tensor, got {type(att).__name__}")
    if att.dim() != 4 or att.shape[-1] != att.shape[-2]:
        raise LmscopeError(f"attention must have shape (batch, heads, T, T), "
                           f"got {tuple(att.shape)}")
    if not att.is_floating_point():
        raise LmscopeError(f"attention must be a float tensor, got {att.dtype}")
    if att.numel() == 0:
        raise LmscopeError(f"attention is empty: shape {tuple(att.shape)}")
    a = att.to(torch.float64)
    if not torch.isfinite(a).all():
        raise LmscopeError("attention has NaN or infinite entries")
    if (a < 0).any():
        raise LmscopeError(f"attention has negative entries (smallest {a.min().item():.3g})")
    above = torch.triu(a, diagonal=1).max().item()
    if above > ABOVE_DIAGONAL_TOLERANCE:
        raise LmscopeError(f"attention is not causal: {above:.3g} on a key after its query "
                           "(above the diagonal)")
    worst = (a.sum(dim=-1) - 1.0).abs().max().item()
    if worst > ROW_SUM_TOLERANCE:
        raise LmscopeError(f"attention rows do not sum to 1 (off by up to {worst:.3g})")


# --- per query -----------------------------------------------------------------------------------

def query_entropy_bits(att: Tensor) -> Tensor:
    """Entropy in bits of each query's distribution over keys: (B, H, T) float64."""
    a = _as_float64_maps(att)
    return -torch.special.xlogy(a, a).sum(dim=-1) / LN2  # xlogy(0, 0) = 0


def normalized_entropy(att: Tensor) -> Tensor:
    """Entropy over log2(q + 1), the entropy of the uniform row: (B, H, T); NaN at query 0."""
    entropy = query_entropy_bits(att)
    visible_keys = torch.arange(1, entropy.shape[-1] + 1, dtype=torch.float64,
                                device=entropy.device)
    normalized = entropy / torch.log2(visible_keys)
    normalized[..., 0] = math.nan  # one visible key: the ratio is 0/0
    return normalized


def _distances(t: int, device: torch.device) -> Tensor:
    """D[q, k] = q - k as a (T, T) float64 tensor."""
    positions = torch.arange(t, dtype=torch.float64, device=device)
    return positions[:, None] - positions[None, :]


def mean_distance(att: Tensor) -> Tensor:
    """sum_k A[q, k] (q - k), how far back each query looks on average: (B, H, T) float64."""
    a = _as_float64_maps(att)
    return (a * _distances(a.shape[-1], a.device)).sum(dim=-1)


def span(att: Tensor, mass: float = 0.9) -> Tensor:
    """Smallest d >= 0 with mass >= `mass` on keys q - d..q, per query: (B, H, T) float64."""
    if not 0.0 < mass <= 1.0:
        raise LmscopeError(f"mass must be in (0, 1], got {mass}")
    a = _as_float64_maps(att)
    t = a.shape[-1]
    # by_distance[..., q, d] = A[q, q - d], and 0 where q - d < 0 (no such key)
    q = torch.arange(t, device=a.device)[:, None]
    d = torch.arange(t, device=a.device)[None, :]
    key = (q - d).clamp(min=0).expand(*a.shape[:-2], t, t)
    by_distance = torch.gather(a, -1, key) * (d <= q)
    within = by_distance.cumsum(dim=-1)  # within[..., q, d] = mass on keys q - d..q
    # `within` does not decrease with d, so the number of d that fall short is the first d that
    # reaches `mass`.
    return (within < mass - SPAN_TOLERANCE).sum(dim=-1).to(torch.float64)


# --- between distributions -----------------------------------------------------------------------

def js_divergence(p: Tensor, q: Tensor, dim: int = -1) -> Tensor:
    """Jensen-Shannon divergence in bits between distributions along `dim` (broadcasting)."""
    p = p.to(torch.float64)
    q = q.to(torch.float64)
    m = (p + q) / 2
    # p log(p / m) = xlogy(p, p) - xlogy(p, m); both terms are 0 where p = 0, and m > 0 where p > 0
    kl_p = (torch.special.xlogy(p, p) - torch.special.xlogy(p, m)).sum(dim=dim)
    kl_q = (torch.special.xlogy(q, q) - torch.special.xlogy(q, m)).sum(dim=dim)
    js = (kl_p + kl_q) / (2 * LN2)
    return js.clamp(0.0, 1.0)  # only trims rounding (about 1e-16) outside the true range


def head_diversity(att: Tensor) -> float:
    """Mean JS divergence (bits) between the heads of a layer on the same query, over head pairs
    i < j, queries and batch; 0.0 for one head."""
    a = _as_float64_maps(att)
    n_heads = a.shape[1]
    if n_heads < 2:
        return 0.0
    # index the pairs rather than broadcast H x H: H(H-1)/2 maps in memory instead of H^2
    first, second = torch.triu_indices(n_heads, n_heads, offset=1, device=a.device)
    return js_divergence(a[:, first], a[:, second]).mean().item()  # (B, pairs, T) -> mean


def layer_similarity(atts: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(js, cosine): (L, L) float64 matrices comparing the head-averaged maps of the layers."""
    if len(atts) == 0:
        raise LmscopeError("no attention layers given")
    maps = torch.stack([_as_float64_maps(att).mean(dim=1) for att in atts])  # (L, B, T, T)
    n_layers = maps.shape[0]
    js = torch.empty(n_layers, n_layers, dtype=torch.float64, device=maps.device)
    for i in range(n_layers):  # one layer against all: (L, B, T) -> mean over b and q
        js[i] = js_divergence(maps[i].unsqueeze(0), maps).mean(dim=(1, 2))
    flat = maps.flatten(start_dim=2)  # (L, B, T*T)
    unit = flat / flat.norm(dim=-1, keepdim=True)  # rows sum to 1, so no map is all zeros
    cosine = torch.einsum("ibn,jbn->ij", unit, unit) / maps.shape[1]  # mean over b
    # both are symmetric with a known diagonal by definition; make rounding agree
    js = (js + js.T) / 2
    cosine = (cosine + cosine.T) / 2
    js.fill_diagonal_(0.0)
    cosine.fill_diagonal_(1.0)
    return js, cosine


# --- summary -------------------------------------------------------------------------------------

def attention_summary(atts: list[Tensor], mass: float = 0.9) -> dict:
    """A JSON-ready dict of per-head, per-layer and whole-model attention statistics (see the
    module docstring for every key)."""
    if len(atts) == 0:
        raise LmscopeError("no attention layers given")
    for i, att in enumerate(atts):
        try:
            check_attention(att)
        except LmscopeError as e:
            raise LmscopeError(f"layer {i}: {e}") from None
    shape = tuple(atts[0].shape)
    for i, att in enumerate(atts):
        if tuple(att.shape) != shape:
            raise LmscopeError(f"layer {i} has attention of shape {tuple(att.shape)}, layer 0 "
                               f"has {shape}: all layers need the same (batch, heads, T, T)")
    _, n_heads, t, _ = shape
    span_key = f"span{round(mass * 100)}"

    layers = []
    for att in atts:
        if t > 1:  # query 0 (NaN) left out
            entropy_norm = normalized_entropy(att)[..., 1:].mean(dim=(0, 2))
        else:
            entropy_norm = torch.zeros(n_heads, dtype=torch.float64)
        layers.append({
            "entropy_bits": query_entropy_bits(att).mean(dim=(0, 2)).tolist(),
            "entropy_norm": entropy_norm.tolist(),
            "mean_distance": mean_distance(att).mean(dim=(0, 2)).tolist(),
            span_key: span(att, mass).mean(dim=(0, 2)).tolist(),
            "head_diversity_js": head_diversity(att),
        })
    js, cosine = layer_similarity(atts)

    def mean_over_layers_and_heads(key: str) -> float:
        values = [v for layer in layers for v in layer[key]]
        return math.fsum(values) / len(values)

    summary: dict = {"layers": layers, "layer_js": js.tolist(), "layer_cosine": cosine.tolist()}
    for key in ("entropy_bits", "entropy_norm", "mean_distance", span_key):
        summary[key] = mean_over_layers_and_heads(key)
    summary["head_diversity_js"] = math.fsum(la["head_diversity_js"] for la in layers) / len(layers)
    summary.update(n_layers=len(atts), n_heads=n_heads, n_queries=t)
    return summary
