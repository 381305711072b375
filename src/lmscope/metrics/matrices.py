"""Learning-dynamics statistics of one matrix: a weight, an activation matrix (tokens x features)
or a gradient. These are the single-checkpoint metrics of pico-analyze (pico-lm,
github.com/pico-lm/pico-analyze, src/metrics/{norm,per,condition_number,gini,hoyer}.py), written
from their published definitions; tracked over checkpoints they show how a layer's parameters
grow, concentrate and sparsify during training.

Input. Any real torch tensor of any float or integer dtype and device; every number is computed
in float64 on the input's device and returned as a Python float. An empty tensor, a non-finite
entry (NaN, inf: a diverged run) or a non-tensor raises `LmscopeError`. The spectral measures
need a 2-D tensor X of shape (m, n); its singular values s_1 >= ... >= s_r >= 0, r = min(m, n),
come from `torch.linalg.svdvals`.

Size (entries):

    frobenius_norm     ||X||_F = sqrt(sum_ij X_ij^2), any shape; >= 0. Rising: the weights (or
                       the gradient) grow; weight decay pulls it down.
    spectral_norm      s_1 = max_{|v|=1} |X v|, the 2-norm of X; in [||X||_F / sqrt(r), ||X||_F].
                       The largest factor by which the layer can stretch an input; rising: the
                       layer amplifies its top direction more.

Shape of the spectrum (p_i = s_i / sum_j s_j, a distribution over the r singular values):

    effective_rank     erank(X) = exp(H), H = -sum_i p_i ln p_i with 0 ln 0 = 0 (Roy & Vetterli
                       2007, "The effective rank: a measure of effective dimensionality", EUSIPCO).
                       In [1, rank(X)] within [1, r]: 1 for a rank-1 matrix, k for k equal nonzero
                       singular values. Falling over training: the matrix concentrates on fewer
                       directions; rising: it spreads over more. A zero matrix (no distribution)
                       gives 0.0 by convention.
    proportional_effective_rank
                       PER(X) = erank(X) / r, the effective rank as a fraction of the largest rank
                       an (m, n) matrix can have, so layers of different widths compare. In
                       [1/r, 1]: 1 when all r singular values are equal, 1/r for rank 1; 0.0 for a
                       zero matrix. This is what pico-analyze's PERMetric computes (src/metrics/
                       per.py: `exp(-sum p log p) / len(s)`) and what its config cites, Diehl
                       Martinez, Lesci & Buttery 2024, "Tending Towards Stability: Convergence
                       Challenges in Small Language Models", Findings of EMNLP. (That file's
                       docstring instead writes PER as the entropy in bits, -sum p_i log2 p_i; that
                       quantity is `spectral_entropy_bits` here: H / ln 2 = log2(erank(X)), so
                       PER = 2^(spectral_entropy_bits) / r.)
    condition_number   kappa_2(X) = s_1 / s_r, the 2-norm condition number over all r = min(m, n)
                       singular values (numpy.linalg.cond(X) with its default p). In [1, inf]; inf
                       when s_r == 0 (a rank-deficient matrix whose smallest singular value is
                       exactly zero, the zero matrix included). A matrix singular only up to
                       rounding gives a large finite number (~1e16), as in numpy. Rising: the layer
                       is closer to collapsing a direction; its inverse less stable.

Sparsity of the entries (c = |x| flattened, N = numel(x) entries; both ignore sign, order and
scale, and treat a tensor of any shape as its N entries):

    gini               G(c) = 1 - 2 sum_k (c_(k) / ||c||_1) ((N - k + 1/2) / N), c_(1) <= ... <=
                       c_(N) sorted ascending, k = 1..N (Hurley & Rickard 2009, "Comparing measures
                       of sparsity", IEEE Trans. Inf. Theory). Equal to the mean-absolute-difference
                       Gini sum_i sum_j |c_i - c_j| / (2 N ||c||_1) (the same number, no
                       (N-1)/N factor). In [0, 1 - 1/N]: 0 for a constant vector, 1 - 1/N for a
                       one-hot; 0.0 for an all-zero tensor by convention. Rising: the mass
                       concentrates on fewer entries.
    hoyer              (sqrt(N) - ||x||_1 / ||x||_2) / (sqrt(N) - 1) (Hoyer 2004, "Non-negative
                       matrix factorization with sparseness constraints", JMLR). In [0, 1]: 0 for
                       a constant vector, 1 for a one-hot; 0.0 when N == 1 or the tensor is all
                       zero. Rising: the entries get sparser.

Gini, Hoyer and the effective rank are clamped to their ranges above, which only removes rounding
error (e.g. -1e-17 for a constant vector).

`matrix_statistics(x)` returns all of these (except spectral_entropy_bits) in a dict keyed by
`STATISTICS`, from one SVD. A 2-D tensor gets every key; a 1-D tensor (a bias, a norm gain) or a
0-D one (taken as one entry) gets only frobenius_norm, gini and hoyer; a tensor of more than 2
dimensions is first reshaped to (shape[0], -1), rows = its first axis. The other spectral
functions accept only 2-D tensors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lmscope.errors import LmscopeError

STATISTICS: tuple[str, ...] = (
    "frobenius_norm",
    "spectral_norm",
    "effective_rank",
    "proportional_effective_rank",
    "condition_number",
    "gini",
    "hoyer",
)
SPECTRAL = ("spectral_norm", "effective_rank", "proportional_effective_rank", "condition_number")

DEFINITIONS: dict[str, str] = {
    "frobenius_norm": "Frobenius norm sqrt(sum of squared entries)",
    "spectral_norm": "spectral norm: the largest singular value",
    "effective_rank": "effective rank exp(H) of the normalised singular values (Roy & Vetterli 2007)",
    "proportional_effective_rank": "effective rank / min(rows, cols), in (0, 1] (pico-analyze PER)",
    "condition_number": "2-norm condition number: largest / smallest singular value",
    "gini": "Gini index of |entries|: 0 equal, 1 - 1/N one-hot (Hurley & Rickard 2009)",
    "hoyer": "Hoyer sparsity of the entries: 0 equal, 1 one-hot (Hoyer 2004)",
}


def _as_float64(x: Tensor) -> Tensor:
    """`x` in float64 after the checks every measure needs: a real, non-empty, finite tensor."""
    if not isinstance(x, Tensor):
        raise LmscopeError(f"matrix statistics need a torch tensor, got {type(x).__name__}")
    if x.is_complex():
        raise LmscopeError(f"matrix statistics need a real tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise LmscopeError(f"matrix statistics need a non-empty tensor, got shape {tuple(x.shape)}")
    x = x.detach()
    x = (x.cpu() if x.device.type == "mps" else x).to(torch.float64)  # MPS has no float64
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise LmscopeError(
            f"tensor of shape {tuple(x.shape)} has {bad} NaN or inf entries; "
            "the run diverged there: use an earlier checkpoint"
        )
    return x


def _as_matrix(x: Tensor) -> Tensor:
    x = _as_float64(x)
    if x.dim() != 2:
        raise LmscopeError(
            f"spectral statistics need a 2-D tensor (rows, cols), got shape {tuple(x.shape)}; "
            "reshape it or use matrix_statistics, which flattens to (shape[0], -1)"
        )
    return x


# --- from singular values (s: 1-D float64, descending, >= 0) --------------------------------------


def _entropy_nats(s: Tensor) -> float | None:
    """H = -sum p ln p of p = s / sum(s), 0 ln 0 = 0; None for all-zero s."""
    total = s.sum()
    if total <= 0:
        return None
    p = s / total
    p = p[p > 0]
    return float(-(p * torch.log(p)).sum())


def _effective_rank(s: Tensor) -> float:
    h = _entropy_nats(s)
    if h is None:
        return 0.0
    return min(max(math.exp(h), 1.0), float(s.numel()))


def _condition_number(s: Tensor) -> float:
    smallest = float(s[-1])
    return math.inf if smallest == 0.0 else float(s[0]) / smallest


def spectral_statistics(s: Tensor) -> dict[str, float]:
    """The spectral statistics (spectral norm, effective rank, proportional effective rank,
    condition number) from a matrix's singular values `s` as `singular_values` returns them: one
    SVD for all four."""
    return _spectral(s)


def _spectral(s: Tensor) -> dict[str, float]:
    erank = _effective_rank(s)
    return {
        "spectral_norm": float(s[0]),
        "effective_rank": erank,
        "proportional_effective_rank": erank / s.numel(),
        "condition_number": _condition_number(s),
    }


# --- from entries (c: 1-D float64) ----------------------------------------------------------------


def _gini(c: Tensor) -> float:
    c, _ = torch.sort(c.abs())
    total = c.sum()
    if total <= 0:
        return 0.0
    n = c.numel()
    k = torch.arange(1, n + 1, dtype=torch.float64, device=c.device)
    g = 1.0 - 2.0 * float(((c / total) * ((n - k + 0.5) / n)).sum())
    return min(max(g, 0.0), 1.0 - 1.0 / n)


def _hoyer(c: Tensor) -> float:
    n = c.numel()
    l2 = float(torch.linalg.vector_norm(c, 2))
    if n == 1 or l2 == 0.0:
        return 0.0
    l1 = float(torch.linalg.vector_norm(c, 1))
    root = math.sqrt(n)
    return min(max((root - l1 / l2) / (root - 1.0), 0.0), 1.0)


# --- public ---------------------------------------------------------------------------------------


def frobenius_norm(x: Tensor) -> float:
    """sqrt of the sum of the squared entries, for a tensor of any shape."""
    return float(torch.linalg.vector_norm(_as_float64(x).reshape(-1), 2))


def singular_values(x: Tensor) -> Tensor:
    """The min(m, n) singular values of a 2-D tensor, descending, float64."""
    return torch.linalg.svdvals(_as_matrix(x))


def spectral_norm(x: Tensor) -> float:
    """The largest singular value (the 2-norm) of a 2-D tensor."""
    return float(singular_values(x)[0])


def effective_rank(x: Tensor) -> float:
    """exp of the entropy (nats) of the normalised singular values (Roy & Vetterli 2007);
    in [1, min(m, n)], 0.0 for a zero matrix."""
    return _effective_rank(singular_values(x))


def proportional_effective_rank(x: Tensor) -> float:
    """effective_rank(x) / min(m, n), pico-analyze's PER; in [1/min(m, n), 1], 0.0 for a zero
    matrix."""
    s = singular_values(x)
    return _effective_rank(s) / s.numel()


def spectral_entropy_bits(x: Tensor) -> float:
    """-sum p_i log2 p_i of p = s / sum(s) = log2(effective_rank(x)); in [0, log2(min(m, n))],
    0.0 for a zero matrix."""
    h = _entropy_nats(singular_values(x))
    return 0.0 if h is None else max(h, 0.0) / math.log(2.0)


def condition_number(x: Tensor) -> float:
    """The 2-norm condition number s_max / s_min over the min(m, n) singular values; inf when
    s_min == 0."""
    return _condition_number(singular_values(x))


def gini(x: Tensor) -> float:
    """The Gini index (Hurley & Rickard 2009) of |x| flattened; 0.0 for an all-zero tensor."""
    return _gini(_as_float64(x).reshape(-1))


def hoyer(x: Tensor) -> float:
    """Hoyer's (2004) sparsity of x flattened; 0.0 for one entry or an all-zero tensor."""
    return _hoyer(_as_float64(x).reshape(-1))


def matrix_statistics(x: Tensor) -> dict[str, float]:
    """Every statistic of `STATISTICS` for one tensor, from a single SVD, keys in that order.

    2-D: all keys. 0-D or 1-D: frobenius_norm, gini, hoyer only. More than 2-D: reshaped to
    (shape[0], -1) first.
    """
    x = _as_float64(x)
    entries = x.reshape(-1)
    out = {
        "frobenius_norm": float(torch.linalg.vector_norm(entries, 2)),
        "gini": _gini(entries),
        "hoyer": _hoyer(entries),
    }
    if x.dim() >= 2:
        out.update(_spectral(torch.linalg.svdvals(x.reshape(x.shape[0], -1))))
    return {key: out[key] for key in STATISTICS if key in out}
