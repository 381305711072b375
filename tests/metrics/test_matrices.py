from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmscope.errors import LmscopeError
from lmscope.metrics.matrices import (
    DEFINITIONS,
    STATISTICS,
    condition_number,
    effective_rank,
    frobenius_norm,
    gini,
    hoyer,
    matrix_statistics,
    proportional_effective_rank,
    singular_values,
    spectral_entropy_bits,
    spectral_norm,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64)


def orthonormal_columns(rows: int, k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(randn(rows, k, seed=seed))
    return q


def equal_spectrum(m: int, n: int, k: int, value: float = 3.0, seed: int = 0) -> torch.Tensor:
    """A random (m, n) matrix of rank k whose k nonzero singular values all equal `value`."""
    return value * orthonormal_columns(m, k, seed) @ orthonormal_columns(n, k, seed + 1).T


# --- independent references: numpy's SVD and plain Python loops ----------------------------------


def erank_reference(x: torch.Tensor) -> float:
    s = np.linalg.svd(x.numpy(), compute_uv=False)
    total = float(sum(s))
    entropy = 0.0
    for value in s:
        p = float(value) / total
        if p > 0:
            entropy -= p * math.log(p)
    return math.exp(entropy)


def gini_mean_abs_difference(values: list[float]) -> float:
    """sum_i sum_j |c_i - c_j| / (2 N sum c) for c = |values|, by a double loop.

    With c sorted ascending, sum_{i,j} |c_i - c_j| = 2 sum_k (2k - N - 1) c_(k), and Hurley &
    Rickard's 1 - 2 sum_k (c_(k)/S)(N - k + 1/2)/N = sum_k (2k - N - 1) c_(k) / (N S): the two
    forms are equal exactly (the (N-1)/N factor belongs to the sample version, which divides by
    2 N (N-1) mean instead of 2 N^2 mean).
    """
    c = [abs(v) for v in values]
    n = len(c)
    pairs = sum(abs(a - b) for a in c for b in c)
    return pairs / (2 * n * sum(c))


def hoyer_reference(values: list[float]) -> float:
    n = len(values)
    l1 = sum(abs(v) for v in values)
    l2 = math.sqrt(sum(v * v for v in values))
    return (math.sqrt(n) - l1 / l2) / (math.sqrt(n) - 1)


# --- effective rank and PER -----------------------------------------------------------------------


@pytest.mark.parametrize(("m", "n", "k"), [(12, 8, 1), (12, 8, 3), (7, 20, 5), (9, 9, 9)])
def test_effective_rank_of_equal_spectrum_is_its_rank(m: int, n: int, k: int) -> None:
    x = equal_spectrum(m, n, k, seed=k)
    assert effective_rank(x) == pytest.approx(k, abs=1e-6)
    assert proportional_effective_rank(x) == pytest.approx(k / min(m, n), abs=1e-6)
    assert spectral_entropy_bits(x) == pytest.approx(math.log2(k), abs=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_effective_rank_of_random_rank_k_product(k: int) -> None:
    x = randn(30, k, seed=k) @ randn(k, 20, seed=k + 100)
    erank = effective_rank(x)
    assert 0.5 * k <= erank <= k + 1e-9
    assert erank == pytest.approx(erank_reference(x), rel=1e-9)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_effective_rank_of_identity(n: int) -> None:
    eye = torch.eye(n)
    assert effective_rank(eye) == pytest.approx(n, abs=1e-12)
    assert proportional_effective_rank(eye) == pytest.approx(1.0, abs=1e-12)


def test_effective_rank_of_full_random_matrix_against_numpy_and_per_relations() -> None:
    x = randn(15, 40, seed=3)
    erank = effective_rank(x)
    assert erank == pytest.approx(erank_reference(x), rel=1e-12)
    assert 1.0 <= erank <= 15.0
    assert proportional_effective_rank(x) == pytest.approx(erank / 15, rel=1e-12)
    assert spectral_entropy_bits(x) == pytest.approx(math.log2(erank), rel=1e-12)


def test_effective_rank_falls_as_the_spectrum_concentrates() -> None:
    u, v = orthonormal_columns(10, 4, 0), orthonormal_columns(10, 4, 1)
    ranks = [effective_rank(u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T)
             for s in ([1.0, 1.0, 1.0, 1.0], [4.0, 2.0, 1.0, 0.5], [100.0, 1.0, 0.1, 0.01])]
    assert ranks[0] > ranks[1] > ranks[2] > 1.0


def test_zero_matrix_conventions() -> None:
    zero = torch.zeros(4, 6)
    assert effective_rank(zero) == 0.0
    assert proportional_effective_rank(zero) == 0.0
    assert spectral_entropy_bits(zero) == 0.0
    assert condition_number(zero) == math.inf
    assert spectral_norm(zero) == 0.0
    assert frobenius_norm(zero) == 0.0
    assert gini(zero) == 0.0
    assert hoyer(zero) == 0.0


# --- norms, singular values, condition number against numpy ---------------------------------------


@pytest.mark.parametrize("shape", [(8, 8), (10, 4), (3, 11)])
def test_norms_and_singular_values_agree_with_numpy(shape: tuple[int, int]) -> None:
    x = randn(*shape, seed=sum(shape))
    a = x.numpy()
    s = singular_values(x)
    assert s.dtype == torch.float64 and s.shape == (min(shape),)
    assert torch.all(s[:-1] >= s[1:])
    np.testing.assert_allclose(s.numpy(), np.linalg.svd(a, compute_uv=False), rtol=1e-12)
    assert spectral_norm(x) == pytest.approx(np.linalg.norm(a, 2), rel=1e-12)
    assert frobenius_norm(x) == pytest.approx(np.linalg.norm(a, "fro"), rel=1e-12)


def test_frobenius_norm_of_any_shape() -> None:
    x = randn(2, 3, 4, seed=5)
    assert frobenius_norm(x) == pytest.approx(math.sqrt(sum(v * v for v in x.flatten().tolist())))
    assert frobenius_norm(torch.tensor([3.0, 4.0])) == pytest.approx(5.0)


def test_condition_number_square_and_rectangular() -> None:
    square = randn(6, 6, seed=1)
    assert condition_number(square) == pytest.approx(np.linalg.cond(square.numpy()), rel=1e-10)
    assert condition_number(square) == pytest.approx(np.linalg.cond(square.numpy(), 2), rel=1e-10)
    rect = randn(9, 4, seed=2)
    s = np.linalg.svd(rect.numpy(), compute_uv=False)
    assert condition_number(rect) == pytest.approx(s[0] / s[-1], rel=1e-10)
    assert condition_number(rect.T) == pytest.approx(s[0] / s[-1], rel=1e-10)
    assert condition_number(torch.eye(5)) == pytest.approx(1.0)
    assert condition_number(torch.diag(torch.tensor([4.0, 2.0, 0.5]))) == pytest.approx(8.0)


def test_condition_number_is_inf_for_a_singular_matrix() -> None:
    assert condition_number(torch.diag(torch.tensor([3.0, 2.0, 0.0]))) == math.inf
    assert condition_number(torch.tensor([[1.0, 2.0], [0.0, 0.0]])) == math.inf


# --- Gini -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_gini_of_constant_and_one_hot(n: int) -> None:
    assert gini(torch.full((n,), 2.5)) == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.zeros(n)
    one_hot[n // 2] = 4.0
    assert gini(one_hot) == pytest.approx(1.0 - 1.0 / n, abs=1e-12)


def test_gini_hand_case() -> None:
    # c = (0, 0, 1, 1): pairwise |c_i - c_j| sums to 8, 8 / (2 * 4 * 2) = 0.5
    assert gini(torch.tensor([0.0, 1.0, 0.0, 1.0])) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gini_equals_mean_absolute_difference_form(seed: int) -> None:
    x = randn(6, 7, seed=seed)
    x[0, :3] = 0.0
    assert gini(x) == pytest.approx(gini_mean_abs_difference(x.flatten().tolist()), rel=1e-12)
    positive = torch.rand(50, generator=gen(seed), dtype=torch.float64)
    expected = gini_mean_abs_difference(positive.tolist())
    assert gini(positive) == pytest.approx(expected, rel=1e-12)


def test_gini_invariant_to_scale_permutation_and_sign() -> None:
    x = randn(40, seed=4)
    g = gini(x)
    assert 0.0 < g < 1.0
    assert gini(7.5 * x) == pytest.approx(g, rel=1e-12)
    assert gini(x[torch.randperm(40, generator=gen(9))]) == pytest.approx(g, rel=1e-12)
    assert gini(-x) == pytest.approx(g, rel=1e-12)
    assert gini(x.reshape(5, 8)) == pytest.approx(g, rel=1e-12)


# --- Hoyer ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 9, 64])
def test_hoyer_of_constant_and_one_hot(n: int) -> None:
    assert hoyer(torch.full((n,), -1.5)) == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.zeros(n)
    one_hot[0] = -3.0
    assert hoyer(one_hot) == pytest.approx(1.0, abs=1e-12)


def test_hoyer_single_entry_is_zero() -> None:
    assert hoyer(torch.tensor([5.0])) == 0.0
    assert hoyer(torch.tensor(5.0)) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hoyer_random_against_reference_scale_and_sign(seed: int) -> None:
    x = randn(5, 12, seed=seed)
    h = hoyer(x)
    assert 0.0 < h < 1.0
    assert h == pytest.approx(hoyer_reference(x.flatten().tolist()), rel=1e-12)
    assert hoyer(0.01 * x) == pytest.approx(h, rel=1e-12)
    assert hoyer(-x) == pytest.approx(h, rel=1e-12)


def test_sparser_vectors_score_higher() -> None:
    dense = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    middle = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    sparse = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    for measure in (gini, hoyer):
        assert measure(dense) < measure(middle) < measure(sparse)


# --- matrix_statistics ----------------------------------------------------------------------------


def test_matrix_statistics_matches_the_individual_functions() -> None:
    x = randn(12, 7, seed=8)
    stats = matrix_statistics(x)
    assert tuple(stats) == STATISTICS
    assert all(isinstance(v, float) for v in stats.values())
    single = {
        "frobenius_norm": frobenius_norm(x),
        "spectral_norm": spectral_norm(x),
        "effective_rank": effective_rank(x),
        "proportional_effective_rank": proportional_effective_rank(x),
        "condition_number": condition_number(x),
        "gini": gini(x),
        "hoyer": hoyer(x),
    }
    for key, value in single.items():
        assert stats[key] == pytest.approx(value, rel=1e-12), key


def test_matrix_statistics_of_a_singular_matrix() -> None:
    x = torch.zeros(6, 5)
    x[0, 0] = x[1, 1] = 2.0  # singular values (2, 2, 0, 0, 0)
    stats = matrix_statistics(x)
    assert stats["condition_number"] == math.inf
    assert stats["effective_rank"] == pytest.approx(2.0, abs=1e-12)
    assert stats["proportional_effective_rank"] == pytest.approx(2.0 / 5, abs=1e-12)
    assert stats["spectral_norm"] == pytest.approx(2.0)


@pytest.mark.parametrize("x", [torch.arange(1.0, 9.0), torch.tensor(3.0)])
def test_matrix_statistics_of_1d_and_0d_has_no_spectral_keys(x: torch.Tensor) -> None:
    stats = matrix_statistics(x)
    assert tuple(stats) == ("frobenius_norm", "gini", "hoyer")
    assert stats["frobenius_norm"] == pytest.approx(frobenius_norm(x))
    assert stats["gini"] == pytest.approx(gini(x))
    assert stats["hoyer"] == pytest.approx(hoyer(x))


def test_matrix_statistics_flattens_more_than_two_dimensions() -> None:
    x = randn(4, 3, 5, seed=6)
    stats = matrix_statistics(x)
    flat = matrix_statistics(x.reshape(4, 15))
    assert tuple(stats) == STATISTICS
    for key in STATISTICS:
        assert stats[key] == pytest.approx(flat[key], rel=1e-12), key
    assert stats["proportional_effective_rank"] == pytest.approx(stats["effective_rank"] / 4)


def test_float32_input_gives_the_float64_answer() -> None:
    x64 = randn(16, 10, seed=11)
    x32 = x64.to(torch.float32)
    stats32 = matrix_statistics(x32)
    stats64 = matrix_statistics(x32.to(torch.float64))
    assert stats32 == stats64  # computed in float64 either way
    for key in STATISTICS:
        assert stats32[key] == pytest.approx(matrix_statistics(x64)[key], rel=1e-5), key
    assert singular_values(x32).dtype == torch.float64
    assert effective_rank(torch.eye(3, dtype=torch.int64)) == pytest.approx(3.0)


def test_definitions_cover_the_statistics() -> None:
    assert set(DEFINITIONS) == set(STATISTICS)
    assert all(d and "\n" not in d for d in DEFINITIONS.values())
    assert len(set(STATISTICS)) == len(STATISTICS)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [singular_values, spectral_norm, effective_rank,
                                proportional_effective_rank, condition_number,
                                spectral_entropy_bits])
def test_spectral_functions_need_2d(fn) -> None:
    with pytest.raises(LmscopeError, match="need a 2-D tensor"):
        fn(torch.ones(4))
    with pytest.raises(LmscopeError, match="need a 2-D tensor"):
        fn(torch.ones(2, 3, 4))


@pytest.mark.parametrize("fn", [frobenius_norm, gini, hoyer, matrix_statistics, effective_rank])
def test_bad_tensors_raise(fn) -> None:
    with pytest.raises(LmscopeError, match="non-empty tensor"):
        fn(torch.ones(0, 3))
    with pytest.raises(LmscopeError, match="NaN or inf"):
        fn(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(LmscopeError, match="NaN or inf"):
        fn(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]))
    with pytest.raises(LmscopeError, match="need a torch tensor"):
        fn([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(LmscopeError, match="need a real tensor"):
        fn(torch.ones(2, 2, dtype=torch.complex64))
