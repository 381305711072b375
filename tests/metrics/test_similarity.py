"""Representation similarity (metrics/similarity.py): CKA checked against ckatorch (Kornblith et
al.'s formulas on n x n Gram matrices), SVCCA and PWCCA against a covariance-matrix CCA
(Sxx^{-1/2} Sxy Syy^{-1/2}) written here from the papers, a hand-built subspace case with known
canonical correlations, and the invariances each measure should and should not have."""

import math

import numpy as np
import pytest
import torch
from ckatorch.core import cka_base

from lmscope.metrics.similarity import (
    canonical_correlations,
    cka_matrix,
    debiased_cka,
    linear_cka,
    pwcca,
    svcca,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(g, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def orthogonal(g, d: int) -> torch.Tensor:
    q, r = torch.linalg.qr(randn(g, d, d))
    return q * torch.sign(torch.diagonal(r))


def related(seed: int, n: int = 400, p: int = 12, q: int = 9):
    """X and a Y that shares part of X's signal, with its own noise."""
    g = gen(seed)
    x = randn(g, n, p) @ randn(g, p, p) + 2.0
    y = x @ randn(g, p, q) + 3.0 * randn(g, n, q) - 1.0
    return x, y


# ------------------------------------------------------------------------------------------
# CKA


def test_cka_of_a_representation_with_itself_is_one():
    x, _ = related(0)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert debiased_cka(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("measure", [linear_cka, debiased_cka])
def test_cka_invariant_to_orthogonal_maps_scaling_and_shifts_and_symmetric(measure):
    x, y = related(1)
    g = gen(11)
    base = measure(x, y)
    assert 0.2 < base < 0.99
    assert measure(x @ orthogonal(g, x.shape[1]), y) == pytest.approx(base, abs=1e-10)
    assert measure(x, y @ orthogonal(g, y.shape[1])) == pytest.approx(base, abs=1e-10)
    assert measure(7.5 * x, y) == pytest.approx(base, abs=1e-10)
    assert measure(x, 0.01 * y) == pytest.approx(base, abs=1e-10)
    assert measure(x + randn(g, 1, x.shape[1]) * 100, y) == pytest.approx(base, abs=1e-9)
    assert measure(y, x) == pytest.approx(base, abs=1e-12)


def test_cka_not_invariant_to_an_ill_conditioned_linear_map_but_cca_is():
    g = gen(2)
    x = randn(g, 600, 10)
    a = orthogonal(g, 10) @ torch.diag(torch.logspace(0, -3, 10, dtype=torch.float64)) \
        @ orthogonal(g, 10)
    assert linear_cka(x, x @ a) < 0.7
    assert debiased_cka(x, x @ a) < 0.7
    assert pwcca(x, x @ a) == pytest.approx(1.0, abs=1e-6)
    assert svcca(x, x @ a, keep=1.0) == pytest.approx(1.0, abs=1e-6)


def test_debiased_cka_near_zero_for_independent_features_where_plain_cka_is_biased():
    g = gen(3)
    n, p, q = 2000, 256, 256
    x, y = randn(g, n, p), randn(g, n, q)
    plain = linear_cka(x, y)
    assert plain > 0.08  # about sqrt(pq / ((n+p)(n+q))) = 0.11
    assert abs(debiased_cka(x, y)) < 0.05


@pytest.mark.parametrize("n,p,q,centered,seed", [
    (50, 5, 3, False, 0), (120, 8, 30, True, 1), (200, 40, 7, False, 2), (64, 100, 90, False, 3),
])
def test_cka_equals_ckatorch_n_by_n_gram_implementation(n, p, q, centered, seed):
    g = gen(100 + seed)
    x = randn(g, n, p) * 2 + 4 * randn(g, 1, p)
    y = torch.cat([x[:, : min(p, q)], randn(g, n, max(0, q - p))], dim=1) @ randn(g, q, q) \
        + randn(g, n, q) + 5
    if centered:
        x, y = x - x.mean(0), y - y.mean(0)
    for unbiased, ours in ((False, linear_cka), (True, debiased_cka)):
        reference = float(cka_base(x, y, kernel="linear", unbiased=unbiased))
        assert ours(x, y) == pytest.approx(reference, abs=1e-6)
        assert ours(x.float(), y.float()) == pytest.approx(reference, abs=1e-5)


def test_cka_never_builds_an_n_by_n_matrix():
    g = gen(4)
    x = randn(g, 60_000, 6)  # an n x n float64 Gram would be 29 GB
    y = x[:, :3] + randn(g, 60_000, 3)
    assert 0.0 < linear_cka(x, y) < 1.0
    assert 0.0 < debiased_cka(x, y) < 1.0


def test_cka_matrix_equals_pairwise_cka():
    g = gen(5)
    base = randn(g, 150, 6)
    xs = [base, base @ randn(g, 6, 9) + randn(g, 150, 9), randn(g, 150, 4)]
    ys = [base[:, :3] + 0.5 * randn(g, 150, 3), randn(g, 150, 7)]
    for debiased, measure in ((False, linear_cka), (True, debiased_cka)):
        m = cka_matrix(xs, ys, debiased=debiased)
        assert m.shape == (3, 2)
        expected = [[measure(a, b) for b in ys] for a in xs]
        assert torch.allclose(m, torch.tensor(expected, dtype=torch.float64), atol=1e-12)
        square = cka_matrix(xs, xs, debiased=debiased)
        expected = [[measure(a, b) for b in xs] for a in xs]
        assert torch.allclose(square, torch.tensor(expected, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(torch.diagonal(square), torch.ones(3, dtype=torch.float64))


def test_constant_representation_has_no_similarity():
    g = gen(6)
    x, flat = randn(g, 30, 4), torch.full((30, 3), 0.1, dtype=torch.float64)
    assert math.isnan(linear_cka(x, flat))
    assert math.isnan(debiased_cka(flat, x))
    assert math.isnan(svcca(x, flat))
    assert math.isnan(pwcca(flat, x))
    assert canonical_correlations(x, flat).numel() == 0
    m = cka_matrix([x, flat], [x])
    assert m[0, 0] == pytest.approx(1.0) and math.isnan(m[1, 0])


# ------------------------------------------------------------------------------------------
# CCA: an independent reference from the covariance matrices


def inv_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return v @ np.diag(w ** -0.5) @ v.T


def reference_cca(x: np.ndarray, y: np.ndarray):
    """rho_i and X's canonical variates h_i = Xc Sxx^{-1/2} u_i from the SVD of
    Sxx^{-1/2} Sxy Syy^{-1/2} (the textbook CCA; Raghu et al. 2017, Morcos et al. 2018)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    n = x.shape[0]
    sxx, syy, sxy = xc.T @ xc / (n - 1), yc.T @ yc / (n - 1), xc.T @ yc / (n - 1)
    t = inv_sqrt(sxx) @ sxy @ inv_sqrt(syy)
    u, rho, _ = np.linalg.svd(t, full_matrices=False)
    h = xc @ inv_sqrt(sxx) @ u
    return rho, h, xc


def reference_pwcca(x, y) -> float:
    rho, h, xc = reference_cca(x, y)
    alpha = np.abs(h.T @ xc).sum(axis=1)  # sum over X's neurons j of |<h_i, x_j>|
    return float((alpha / alpha.sum()) @ rho)


def reference_pca(x: np.ndarray, keep: float):
    """Projections on the top principal directions explaining `keep` of the variance (from
    the covariance eigendecomposition), and the cumulative fractions."""
    xc = x - x.mean(0)
    w, v = np.linalg.eigh(xc.T @ xc)
    order = np.argsort(w)[::-1]
    w, v = w[order], v[:, order]
    frac = np.cumsum(w) / w.sum()
    d = int(np.argmax(frac >= keep)) + 1
    return xc @ v[:, :d], frac


def test_canonical_correlations_svcca_pwcca_match_the_covariance_reference():
    x, y = related(7, n=500, p=10, q=8)
    xn, yn = x.numpy(), y.numpy()
    rho_ref, _, _ = reference_cca(xn, yn)
    rho = canonical_correlations(x, y)
    assert rho.shape == (8,)
    assert np.allclose(rho.numpy(), rho_ref, atol=1e-6)
    assert 0.3 < rho_ref.mean() < 0.99  # a non-trivial case
    assert svcca(x, y, keep=1.0) == pytest.approx(rho_ref.mean(), abs=1e-6)
    assert pwcca(x, y) == pytest.approx(reference_pwcca(xn, yn), abs=1e-6)
    assert pwcca(y, x) == pytest.approx(reference_pwcca(yn, xn), abs=1e-6)
    assert abs(pwcca(x, y) - pwcca(y, x)) > 1e-3  # weighted on X's side: not symmetric
    assert abs(pwcca(x, y) - rho_ref.mean()) > 1e-3  # the weights matter


def test_svcca_truncation_matches_the_reference_pca():
    g = gen(8)
    scales = torch.tensor([8.0, 6.0, 4.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05],
                          dtype=torch.float64)
    x = randn(g, 500, 10) * scales @ orthogonal(g, 10)
    y = x[:, :6] @ randn(g, 6, 6) + randn(g, 500, 6) * torch.tensor([3.0, 2, 1, .5, .2, .1])
    for keep in (0.9, 0.99):
        px, fx = reference_pca(x.numpy(), keep)
        py, fy = reference_pca(y.numpy(), keep)
        assert px.shape[1] < 10 and py.shape[1] < 6  # the truncation does something
        assert np.abs(fx - keep).min() > 1e-4 and np.abs(fy - keep).min() > 1e-4  # no tie
        rho_ref, _, _ = reference_cca(px, py)
        assert svcca(x, y, keep=keep) == pytest.approx(rho_ref.mean(), abs=1e-6)


def test_svcca_on_subspaces_with_known_canonical_correlations():
    g = gen(9)
    n = 400
    raw = randn(g, n, 6)
    basis, _ = torch.linalg.qr(raw - raw.mean(0))  # orthonormal, centered columns
    u1, u2, u3, w1 = basis[:, 0], basis[:, 1], basis[:, 2], basis[:, 3]
    theta = 0.7
    tilted = math.cos(theta) * u2 + math.sin(theta) * w1
    # variance fractions 100 : 25 : 1e-4 -> keep 0.99 keeps the first two directions
    x = torch.stack([10 * u1, 5 * u2, 0.01 * u3], dim=1) @ orthogonal(g, 3)
    y = torch.stack([10 * u1, 5 * tilted, 0.01 * u3], dim=1) @ orthogonal(g, 3)
    assert svcca(x, y, keep=0.99) == pytest.approx((1 + math.cos(theta)) / 2, abs=1e-9)
    assert svcca(x, y, keep=1.0) == pytest.approx((2 + math.cos(theta)) / 3, abs=1e-9)
    assert svcca(x, y, keep=0.5) == pytest.approx(1.0, abs=1e-9)
    rho = canonical_correlations(x, y)
    assert np.allclose(rho.numpy(), [1.0, 1.0, math.cos(theta)], atol=1e-9)


def test_cca_measures_of_a_rotated_or_linearly_mapped_copy_are_one():
    g = gen(10)
    x = randn(g, 500, 10) * torch.linspace(3, 0.2, 10, dtype=torch.float64)
    rotated = x @ orthogonal(g, 10)
    mapped = x @ (randn(g, 10, 10) + 3 * torch.eye(10, dtype=torch.float64))
    assert svcca(x, rotated) == pytest.approx(1.0, abs=1e-6)
    assert pwcca(x, rotated) == pytest.approx(1.0, abs=1e-6)
    assert svcca(x, mapped, keep=1.0) == pytest.approx(1.0, abs=1e-6)
    assert pwcca(x, mapped) == pytest.approx(1.0, abs=1e-6)
    assert pwcca(mapped, x) == pytest.approx(1.0, abs=1e-6)


def test_cca_measures_of_independent_data_are_low_when_n_is_large():
    g = gen(12)
    x, y = randn(g, 2000, 10), randn(g, 2000, 8)
    assert svcca(x, y) < 0.2  # noise floor about sqrt(10 / 2000) = 0.07
    assert pwcca(x, y) < 0.2


def test_cca_with_too_few_tokens_is_degenerate():
    g = gen(13)
    n, p, q = 15, 10, 10  # p + q - (n - 1) = 6 correlations are 1 whatever the data
    rho = canonical_correlations(randn(g, n, p), randn(g, n, q))
    assert int((rho > 1 - 1e-9).sum()) == 6


def test_rank_deficient_inputs_keep_only_real_directions():
    g = gen(14)
    base = randn(g, 200, 4)
    x = torch.cat([base, base @ randn(g, 4, 3), torch.full((200, 1), 2.5)], dim=1)  # rank 4
    y = base[:, :2] + 0.1 * randn(g, 200, 2)
    rho = canonical_correlations(x, y)
    assert rho.shape == (2,)
    rho_ref, _, _ = reference_cca(base.numpy(), y.numpy())
    assert np.allclose(rho.numpy(), rho_ref, atol=1e-6)
    assert pwcca(x, x[:, :4]) == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------------------
# input checks


GOOD = torch.zeros(10, 3).normal_(generator=gen(15))


@pytest.mark.parametrize("x,y,match", [
    (torch.zeros(10), GOOD, "2-D"),
    (torch.zeros(2, 10, 3), GOOD, "2-D"),
    (GOOD, torch.zeros(10, 0), "no feature columns"),
    (GOOD, GOOD[:9], "same number of rows"),
    (GOOD[:1], GOOD[:1], "rows; at least"),
    (GOOD, torch.where(GOOD > 1, float("nan"), GOOD), "non-finite"),
    (torch.where(GOOD > 1, float("inf"), GOOD), GOOD, "non-finite"),
])
def test_input_checks_raise_value_error(x, y, match):
    for measure in (linear_cka, debiased_cka, svcca, pwcca, canonical_correlations):
        with pytest.raises(ValueError, match=match):
            measure(x, y)
    with pytest.raises(ValueError, match=match if match != "same number of rows" else "rows"):
        cka_matrix([x], [y])


def test_debiased_cka_needs_four_tokens_and_svcca_a_fraction():
    with pytest.raises(ValueError, match="at least 4"):
        debiased_cka(GOOD[:3], GOOD[:3])
    with pytest.raises(ValueError, match="at least 4"):
        cka_matrix([GOOD[:3]], [GOOD[:3]], debiased=True)
    assert linear_cka(GOOD[:3], GOOD[:3]) == pytest.approx(1.0)
    for keep in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="keep"):
            svcca(GOOD, GOOD, keep=keep)


def test_float32_rounding_noise_is_not_counted_as_directions():
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(2000, 20, generator=gen) @ torch.randn(20, 64, generator=gen)).float()
    y = x @ torch.randn(64, 64, generator=gen)  # rank 20 too, in float32
    rho = canonical_correlations(x, y)
    assert rho.numel() == 20  # not 64: the 44 other directions are rounding noise
    assert rho.min() > 1 - 1e-4


def test_pwcca_is_the_same_on_any_number_of_threads():
    """Rank-poor activations (2,000 tokens of 40 symbols in 64 dimensions, as a small
    vocabulary's embeddings) have near-tied canonical correlations, whose variates the SVD may
    rotate by thread count; PWCCA is computed on one thread, and leaves the count as it was."""
    g = torch.Generator().manual_seed(0)
    symbols = torch.randint(40, (2000,), generator=g)
    x = torch.randn(40, 64, generator=g, dtype=torch.float64)[symbols]
    y = x @ torch.randn(64, 48, generator=g, dtype=torch.float64) \
        + 0.5 * torch.randn(40, 48, generator=g, dtype=torch.float64)[symbols]
    before = torch.get_num_threads()
    values = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            values.append(pwcca(x, y))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert values[0] == values[1] == values[2]
    assert 0.0 < values[0] <= 1.0
