"""How alike two representations of the same tokens are: linear CKA (plain and debiased), SVCCA
and PWCCA.

Input. Two activation matrices X of shape (n, p) and Y of shape (n, q) on the same n tokens: row
i of both belongs to token i, the columns are features (neurons, residual dimensions). Any real
dtype and device is accepted (array-likes are passed through torch.as_tensor); everything is
computed in float64 on X's device (Y is moved there) and the measures are returned as Python
floats. Xc = X - 1 mean(X, 0) is X with every column centered (over the tokens); a column that
is constant up to rounding (its centered norm <= 1e-12 of its raw norm, e.g. a dead neuron) is
set to exactly 0, so that rounding noise is never mistaken for a direction.

Checks (ValueError, since a wrong shape is a programming error): both 2-D with at least one
column, the same number of rows, n >= 2 (n >= 4 for the debiased CKA), every entry finite.

Measures

    linear_cka(x, y)     Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of Neural Network
                         Representations Revisited" (ICML), linear kernel:
                             CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)
                         i.e. HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for the Gram matrices
                         K = X X^T, L = Y Y^T, computed in feature space: three products of
                         cost O(n p q), O(n p^2), O(n q^2) and no n x n matrix, so n can be
                         10^5 tokens. In [0, 1]; 1 iff Yc Yc^T = c Xc Xc^T (Y is X up to an
                         orthogonal map, a scale and a shift).
    debiased_cka(x, y)   the same ratio with every HSIC replaced by the unbiased estimator of
                         Song, Smola, Gretton, Bedo & Borgwardt 2012 (JMLR), as used for CKA by
                         Nguyen, Raghu & Kornblith 2021, "Do Wide and Deep Networks Learn the
                         Same Things?" (ICLR) and in Kornblith's reference code
                         (feature_space_linear_cka(debiased=True)). With K~, L~ the Grams with
                         zeroed diagonals,
                             n(n-3) HSIC_1 = tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2))
                                             - 2/(n-2) 1^T K~ L~ 1.
                         In feature space, with r_x[i] = ||x_i||^2 the squared norm of row i,
                         R_x = sum_i r_x[i] = ||X||_F^2 and s_x = X^T 1 the column sums:
                             tr(K~ L~)     = ||X^T Y||_F^2 - r_x . r_y
                             1^T K~ 1      = ||s_x||^2 - R_x
                             1^T K~ L~ 1   = (X s_x - r_x) . (Y s_y - r_y).
                         HSIC_1 is unchanged by centering the columns (shown by the tests
                         against n x n Gram implementations), so it is computed on Xc, Yc, where
                         s = 0 and the three terms reduce to
                             n(n-3) HSIC_1 = ||Xc^T Yc||_F^2 - n/(n-2) r_x . r_y
                                             + R_x R_y / ((n-1)(n-2)).
                         The factor n(n-3) cancels in the ratio. It removes the positive bias of
                         the plain CKA on finite samples (for independent n x p and n x q
                         Gaussian features the plain value is about sqrt(pq / ((n+p)(n+q))),
                         0.11 for n = 2000, p = q = 256, where the debiased one is ~0); it is an
                         estimate, so it is near 0 but may be slightly negative for unrelated
                         representations and is not clamped. Needs n >= 4.
    svcca(x, y, keep)    Raghu, Gilmer, Yosinski & Sohl-Dickstein 2017, "SVCCA: Singular Vector
                         Canonical Correlation Analysis for Deep Learning Dynamics and
                         Interpretability" (NeurIPS). With Xc = U S V^T, keep the top d singular
                         directions, d the smallest number with
                         sum_{i<=d} s_i^2 >= keep * sum_i s_i^2 (each side separately), then
                         SVCCA = mean_i rho_i over the min(d_x, d_y) canonical correlations of
                         U_d S_d and the same for Y. In [0, 1].
    pwcca(x, y)          Morcos, Raghu & Bengio 2018, "Insights on representational similarity
                         in neural networks with canonical correlation" (NeurIPS), projection
                         weighting: with h_i the i-th canonical variate of X (i = 1..k,
                         k = min(rank X, rank Y)) and x_j the j-th centered column of X,
                             alpha_i = sum_j |<h_i, x_j>|,   PWCCA = sum_i alpha_i rho_i / sum_i
                             alpha_i.
                         X is the weighted side: PWCCA is NOT symmetric, pwcca(x, y) !=
                         pwcca(y, x) in general. Where canonical correlations are tied (or
                         nearly: rank-poor activations such as a small vocabulary's
                         embeddings), the canonical variates of the tied group are any rotation
                         of one another and the |.| of alpha_i depends on which one the SVD
                         returns: PWCCA is then determined only to about 1e-3 (0.78095 against
                         0.78039 for the same float64 inputs at 1 and 2 LAPACK threads, a quick
                         domain model's embeddings at iteration 0 against its final ones). So
                         it is computed on one thread: the same value on any machine's thread
                         count, one of the equally valid ones. (Morcos et al.'s code weights the side with
                         fewer neurons; pass that one as x to do the same.) In [0, 1].
                         Their code (github.com/google/svcca, pwcca.py) weights with
                         u_i^T (x - mean) + mean instead of the canonical variates: without
                         Sxx^(-1/2) and with the means added back. On centered, whitened
                         activations the two agree (to 3e-15, checked once beside it); otherwise
                         they differ (by 0.002 on centered correlated data with n = 3000, and the
                         code's value moves with a shift of the activations, which PWCCA as
                         defined does not). The canonical correlations themselves agree with its
                         cca_core.get_cca_similarity to 2e-14.
    canonical_correlations(x, y, eps)
                         the CCA both use: Qx, Qy orthonormal bases of the column spaces of Xc,
                         Yc (left singular vectors, dropping directions whose singular value is
                         below eps times the largest, so rank-deficient inputs are fine); the
                         canonical correlations rho_1 >= ... >= rho_k are the singular values of
                         Qx^T Qy, clamped to [0, 1]. Equal to the singular values of
                         Sxx^{-1/2} Sxy Syy^{-1/2} for full-rank covariances.
    cka_matrix(xs, ys, debiased)
                         the (len(xs), len(ys)) matrix of linear_cka (or debiased_cka) of every
                         pair, each side's centered copy and self term computed once (it holds a
                         float64 centered copy of every input); e.g. a layer x layer heatmap.

Undefined cases. A side with no variance (every column constant) has no CKA and no canonical
correlation: the functions return NaN (cka_matrix a NaN entry), and canonical_correlations an
empty tensor. A debiased self term <= 0 (tiny n) also gives NaN.

Invariances. CKA (plain and debiased) is invariant to orthogonal transforms (X -> X Q, Q^T Q = I)
and isotropic scaling (X -> c X) of either side, and to adding a constant to every row, but NOT
to general invertible linear maps (an ill-conditioned map changes it: CKA weighs directions by
their variance). The CCA-based measures are invariant to any invertible linear map of either side
(X -> X A, A invertible): the correlations depend only on the column spaces. SVCCA keeps that
invariance only with keep=1.0; its truncation depends on the singular values, so with keep < 1
it is invariant to orthogonal transforms and isotropic scaling only.

Sample size (CCA overfits). After centering, the columns live in an (n-1)-dimensional space, so
when rank X + rank Y > n - 1 at least rank X + rank Y - (n - 1) canonical correlations are exactly
1 whatever the data (n <= p + q is thus always degenerate), and all of them are 1 once
max(rank X, rank Y) >= n - 1. Well above that, independent data still give
E[sum_i rho_i^2] = p q / (n - 1) (random subspaces), i.e. a mean rho_i^2 of max(p, q) / (n - 1)
and a mean rho_i of about sqrt(max(p, q) / n) from noise alone. Use SVCCA and PWCCA only with n
far above the feature count (n >= 10 (p + q) at the very least; for SVCCA p, q are the kept
dimensions) and compare with the value for row-shuffled Y. CKA needs no such margin, and its
debiased form removes its own (smaller) finite-sample bias.
"""

from __future__ import annotations

import math

import torch

from lmscope.device import one_thread

CONSTANT_TOL = 1e-12  # a centered column this small relative to the raw column counts as constant


def _as_matrix(a, name: str) -> torch.Tensor:
    t = torch.as_tensor(a)
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (tokens, features) tensor, got shape "
                         f"{tuple(t.shape)}")
    if t.shape[1] < 1:
        raise ValueError(f"{name} has no feature columns (shape {tuple(t.shape)})")
    if t.is_complex():
        raise ValueError(f"{name} must be real, got dtype {t.dtype}")
    t = t.detach()
    return (t.cpu() if t.device.type == "mps" else t).to(torch.float64)  # MPS has no float64


def _rank_eps(x, y) -> float:
    """The relative singular value below which a direction is rounding noise: 1e-10 for float64
    inputs, max(n, p) times the machine epsilon of a lower precision (float32 activations keep
    noise directions at about 1e-8 of the largest)."""
    eps = 1e-10
    for t in (x, y):
        dtype = getattr(t, "dtype", torch.float64)
        if isinstance(dtype, torch.dtype) and dtype.is_floating_point and dtype != torch.float64:
            eps = max(eps, max(t.shape) * torch.finfo(dtype).eps)
    return eps


def _check(x, y, min_rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as float64 (n, p), (n, q) matrices on x's device, after the input checks."""
    xt = _as_matrix(x, "x")
    yt = _as_matrix(y, "y").to(xt.device)
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(f"x and y must have the same number of rows (tokens): "
                         f"{xt.shape[0]} != {yt.shape[0]}")
    _check_one(xt, "x", min_rows)
    _check_one(yt, "y", min_rows)
    return xt, yt


def _check_one(t: torch.Tensor, name: str, min_rows: int) -> None:
    if t.shape[0] < min_rows:
        raise ValueError(f"{name} has {t.shape[0]} rows; at least {min_rows} tokens are needed")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} has non-finite entries (NaN or inf)")


def _center(t: torch.Tensor) -> torch.Tensor:
    """Columns centered over the rows; columns constant up to rounding set to exactly 0."""
    c = t - t.mean(dim=0, keepdim=True)
    constant = c.norm(dim=0) <= CONSTANT_TOL * t.norm(dim=0)
    if bool(constant.any()):
        c[:, constant] = 0.0
    return c


# ---------------------------------------------------------------------------------------------
# CKA


class _Side:
    """One representation's centered copy and the CKA self quantities, computed once."""

    def __init__(self, t: torch.Tensor, debiased: bool):
        self.c = _center(t)
        self.n = t.shape[0]
        self.debiased = debiased
        self.rows = (self.c * self.c).sum(dim=1)  # r[i] = ||xc_i||^2
        self.total = float(self.rows.sum())  # R = ||Xc||_F^2
        gram = self.c.T @ self.c
        self.self_term = _hsic(float((gram * gram).sum()), self, self)

    @property
    def norm(self) -> float:
        return math.sqrt(self.self_term) if self.self_term > 0 else math.nan


def _hsic(cross_sq: float, a: _Side, b: _Side) -> float:
    """||Xc^T Yc||_F^2, or n(n-3) times the unbiased HSIC_1 (see the module docstring)."""
    if not a.debiased:
        return cross_sq
    n = a.n
    return (cross_sq - n / (n - 2) * float(a.rows @ b.rows)
            + a.total * b.total / ((n - 1) * (n - 2)))


def _cka(a: _Side, b: _Side) -> float:
    cross = a.c.T @ b.c
    value = _hsic(float((cross * cross).sum()), a, b) / (a.norm * b.norm)
    return float(value)


def linear_cka(x, y) -> float:
    """Linear CKA of Kornblith et al. 2019: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F).

    In [0, 1]; NaN if a side has no variance. Feature-space form, O(n p q), no n x n matrix."""
    xt, yt = _check(x, y)
    return _cka(_Side(xt, False), _Side(yt, False))


def debiased_cka(x, y) -> float:
    """Linear CKA with the unbiased HSIC estimator (Song et al. 2012; Nguyen et al. 2021).

    Near 0 for unrelated representations (may be slightly negative), 1 for X against itself.
    Needs n >= 4; NaN if a side has no variance."""
    xt, yt = _check(x, y, min_rows=4)
    return _cka(_Side(xt, True), _Side(yt, True))


def cka_matrix(xs: list, ys: list, debiased: bool = False) -> torch.Tensor:
    """(len(xs), len(ys)) float64 matrix M[i, j] = linear_cka(xs[i], ys[j]) (debiased_cka with
    debiased=True). All inputs must have the same number of rows. Each input is centered and its
    self term computed once; when ys is xs only the upper triangle is computed."""
    min_rows = 4 if debiased else 2
    same = ys is xs
    mats_x = [_as_matrix(x, f"xs[{i}]") for i, x in enumerate(xs)]
    mats_y = mats_x if same else [_as_matrix(y, f"ys[{j}]") for j, y in enumerate(ys)]
    if mats_x:
        mats_y = [m.to(mats_x[0].device) for m in mats_y]
    rows = {m.shape[0] for m in mats_x + mats_y}
    if len(rows) > 1:
        raise ValueError(f"every input must have the same number of rows (tokens), got "
                         f"{sorted(rows)}")
    for name, mats in (("xs", mats_x), ("ys", mats_y)):
        for i, m in enumerate(mats):
            _check_one(m, f"{name}[{i}]", min_rows)
    sides_x = [_Side(m, debiased) for m in mats_x]
    sides_y = sides_x if same else [_Side(m, debiased) for m in mats_y]
    out = torch.full((len(sides_x), len(sides_y)), math.nan, dtype=torch.float64)
    for i, a in enumerate(sides_x):
        for j, b in enumerate(sides_y):
            if same and j < i:
                out[i, j] = out[j, i]
            else:
                out[i, j] = _cka(a, b)
    return out


# ---------------------------------------------------------------------------------------------
# CCA


def _basis(c: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors of a centered matrix with singular value >= eps * largest, and
    those singular values (descending). No columns if the matrix is 0."""
    u, s, _ = torch.linalg.svd(c, full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return u[:, :0], s[:0]
    keep = s >= eps * s[0]
    return u[:, keep], s[keep]


def _correlate(qx: torch.Tensor, qy: torch.Tensor):
    """Canonical correlations (descending, clamped to [0, 1]) of two orthonormal bases, and the
    rotation u of qx whose columns qx u are X's canonical variates."""
    u, rho, _ = torch.linalg.svd(qx.T @ qy, full_matrices=False)
    return rho.clamp(0.0, 1.0), u[:, : rho.numel()]  # min(rank X, rank Y) of them


def _cca(x: torch.Tensor, y: torch.Tensor, eps: float):
    """Canonical correlations (descending) of two checked float64 matrices, X's canonical
    variates h_i (n, k) as unit-norm columns, and centered X."""
    xc = _center(x)
    qx, _ = _basis(xc, eps)
    qy, _ = _basis(_center(y), eps)
    rho, u = _correlate(qx, qy)
    return rho, qx @ u, xc


def canonical_correlations(x, y, eps: float | None = None) -> torch.Tensor:
    """Canonical correlations of X and Y, descending, as a float64 tensor of length
    min(rank Xc, rank Yc): the singular values of Qx^T Qy (orthonormal bases of the centered
    column spaces, directions with singular value < eps * largest dropped; eps by default
    1e-10 for float64 input, max(n, p) machine epsilons for float32), clamped to [0, 1].
    Empty if a side has no variance."""
    xt, yt = _check(x, y)
    rho, _, _ = _cca(xt, yt, _rank_eps(x, y) if eps is None else eps)
    return rho


def _truncated_basis(t: torch.Tensor, keep: float, eps: float) -> torch.Tensor:
    """An orthonormal basis U_d of the top d singular directions of centered t that explain
    `keep` of its variance (sum of squared singular values): the column space of U_d S_d."""
    u, s = _basis(_center(t), eps)
    if s.numel() == 0:
        return u
    frac = torch.cumsum(s * s, dim=0) / (s * s).sum()
    d = int((frac < keep - 1e-12).sum()) + 1  # the smallest d with frac[d-1] >= keep
    return u[:, : min(d, s.numel())]


def svcca(x, y, keep: float = 0.99) -> float:
    """SVCCA of Raghu et al. 2017: each side reduced to its top singular directions explaining
    `keep` of its variance, then the mean canonical correlation. In [0, 1]; NaN if a side has
    no variance. keep=1.0 keeps every direction (then invariant to invertible linear maps)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be a fraction of variance in (0, 1], got {keep}")
    xt, yt = _check(x, y)
    eps = _rank_eps(x, y)
    rho, _ = _correlate(_truncated_basis(xt, keep, eps), _truncated_basis(yt, keep, eps))
    return float(rho.mean()) if rho.numel() else math.nan


def pwcca(x, y) -> float:
    """Projection-weighted CCA of Morcos et al. 2018, weighted on X's side (not symmetric):
    sum_i alpha_i rho_i with alpha_i proportional to sum_j |<h_i, x_j>| (h_i X's i-th canonical
    variate, x_j X's j-th centered column). In [0, 1]; NaN if a side has no variance."""
    xt, yt = _check(x, y)
    with one_thread():  # tied correlations: the SVD's choice of variates moves alpha (above)
        rho, h, xc = _cca(xt, yt, _rank_eps(x, y))
    if rho.numel() == 0:
        return math.nan
    alpha = (h.T @ xc).abs().sum(dim=1)
    return float((alpha * rho).sum() / alpha.sum())
