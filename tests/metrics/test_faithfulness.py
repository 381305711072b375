"""Faithfulness measures: masks and curves by hand, the trapezoid rule against numpy, ERASER's
bins and AOPC on an additive toy, the oracle order against a brute-force loop, Spearman."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest

from lmscope.errors import LmscopeError
from lmscope.metrics.faithfulness import (
    ERASER_BINS,
    average_ranks,
    comprehensiveness,
    curve_auc,
    deletion_masks,
    faithfulness_score,
    insertion_masks,
    order_by_scores,
    spearman,
    sufficiency,
    top_k_sizes,
)


def subset_masks(t: int) -> np.ndarray:
    """(2^T, T) bool: row s keeps position i where bit i of s is set (every mask once)."""
    s = np.arange(2 ** t)[:, None]
    return ((s >> np.arange(t)[None, :]) & 1).astype(bool)


def best_deletion_order(prob_of_masks: Callable[[np.ndarray], np.ndarray], t: int, *,
                        max_tokens: int = 7) -> tuple[np.ndarray, float]:
    """The order of least deletion AUC over all T! orders, and that AUC: the oracle no
    attribution's order can beat (tests only: it tries T! orders). Its curves are read from a
    table of bit sets and its area is a sum written out, not lmscope's deletion_masks and
    curve_auc, so comparing the two checks both.

    `prob_of_masks` maps (n, T) bool masks to n probabilities. Each of the 2^T masks is
    evaluated once (`subset_masks`); every order's deletion curve is then read from that table.
    Of orders with the same AUC, the first in lexicographic order is returned.
    """
    if t < 1:
        raise LmscopeError(f"the oracle order needs at least one position, got {t}")
    if t > max_tokens:
        raise LmscopeError(f"the oracle deletion order of a prompt of {t} tokens would try "
                           f"{math.factorial(t):,} orders: give prompts of at most {max_tokens} "
                           "tokens")
    table = np.asarray(prob_of_masks(subset_masks(t)), dtype=np.float64).reshape(-1)
    if len(table) != 2 ** t:
        raise ValueError(f"prob_of_masks gave {len(table)} values for {2 ** t} masks")
    orders = np.array(list(itertools.permutations(range(t))), dtype=np.int64)  # (T!, T)
    full = 2 ** t - 1
    removed = np.concatenate([np.zeros((len(orders), 1), dtype=np.int64),
                              np.cumsum(1 << orders, axis=1)], axis=1)  # (T!, T+1) bit sets
    curves = table[full ^ removed]  # kept = all but the removed bits
    aucs = (curves.sum(1) - 0.5 * (curves[:, 0] + curves[:, -1])) / t
    best = int(np.argmin(aucs))
    return orders[best], float(aucs[best])

# the additive toy: p(mask) = the sum of the weights of the kept positions
WEIGHTS = np.array([0.1, 0.3, 0.05, 0.2, 0.15])  # p_full = 0.8; p(nothing kept) = 0


def additive(masks):
    return np.asarray(masks, dtype=float) @ WEIGHTS


def trapezoid(y, x):
    return np.trapezoid(y, x) if hasattr(np, "trapezoid") else np.trapz(y, x)


def test_masks_by_hand():
    order = [2, 0, 1]
    assert deletion_masks(order).tolist() == [
        [True, True, True],
        [True, True, False],  # position 2 removed first
        [False, True, False],  # then position 0
        [False, False, False],
    ]
    assert insertion_masks(order).tolist() == [
        [False, False, False],
        [False, False, True],  # position 2 restored first
        [True, False, True],
        [True, True, True],
    ]
    assert deletion_masks([0]).tolist() == [[True], [False]]


@pytest.mark.parametrize("order", [[0, 0, 1], [1, 2], [0, 1, 3]])
def test_masks_need_a_permutation(order):
    with pytest.raises(ValueError, match="permutation"):
        deletion_masks(order)


def test_curve_auc_is_numpys_trapezoid():
    rng = np.random.default_rng(3)
    for t in (1, 2, 5, 17, 40):
        values = rng.random(t + 1)
        assert curve_auc(values) == pytest.approx(trapezoid(values, np.linspace(0, 1, t + 1)),
                                                  abs=1e-14)
    assert curve_auc([0.25] * 9) == pytest.approx(0.25, abs=1e-15)  # a flat curve: its height
    assert curve_auc([1.0, 0.0]) == 0.5  # one position: a triangle
    with pytest.raises(ValueError, match="at least 2"):
        curve_auc([1.0])


def test_order_by_scores_descending_signed_ties_by_position():
    assert order_by_scores([0.1, -2.0, 0.5, 0.1, 3.0]).tolist() == [4, 2, 0, 3, 1]
    assert order_by_scores([1, 1, 1]).tolist() == [0, 1, 2]


def test_top_k_sizes_corners():
    assert ERASER_BINS == (0.01, 0.05, 0.10, 0.20, 0.50)
    assert top_k_sizes(1).tolist() == [1, 1, 1, 1, 1]  # at least one position in every bin
    assert top_k_sizes(40).tolist() == [1, 2, 4, 8, 20]  # 0.4 -> 1, 2, 4, 8, 20
    assert top_k_sizes(10).tolist() == [1, 1, 1, 2, 5]
    assert top_k_sizes(30).tolist() == [1, 2, 3, 6, 15]  # 0.1 * 30 is 3, not 3.0000000000000004
    assert top_k_sizes(200).tolist() == [2, 10, 20, 40, 100]
    assert top_k_sizes(7, bins=(0.5, 1.0)).tolist() == [4, 7]
    with pytest.raises(ValueError):
        top_k_sizes(0)


def test_additive_toy_curves_eraser_and_oracle_by_hand():
    order = order_by_scores(WEIGHTS)  # the weights themselves as scores
    assert order.tolist() == [1, 3, 4, 0, 2]
    # deletion removes 0.3, 0.2, 0.15, 0.1, 0.05 in turn; insertion adds them
    deletion = additive(deletion_masks(order))
    insertion = additive(insertion_masks(order))
    np.testing.assert_allclose(deletion, [0.8, 0.5, 0.3, 0.15, 0.05, 0.0], atol=1e-15)
    np.testing.assert_allclose(insertion, [0.0, 0.3, 0.5, 0.65, 0.75, 0.8], atol=1e-15)
    d_auc = (0.8 / 2 + 0.5 + 0.3 + 0.15 + 0.05 + 0 / 2) / 5  # trapezoid at x = 0, .2, ..., 1
    i_auc = (0 / 2 + 0.3 + 0.5 + 0.65 + 0.75 + 0.8 / 2) / 5
    assert curve_auc(deletion) == pytest.approx(d_auc, abs=1e-15)
    assert curve_auc(insertion) == pytest.approx(i_auc, abs=1e-15)
    assert faithfulness_score(i_auc, d_auc) == pytest.approx(0.52 - 0.28, abs=1e-15)

    # ERASER on T = 5: k = 1, 1, 1, 1, 3 (ceil(0.5 * 5) = 3)
    ks = top_k_sizes(5)
    assert ks.tolist() == [1, 1, 1, 1, 3]
    # removing the top 1 loses 0.3; removing the top 3 loses 0.3 + 0.2 + 0.15 = 0.65
    assert comprehensiveness(0.8, deletion[ks]) == pytest.approx((4 * 0.3 + 0.65) / 5, abs=1e-15)
    # keeping only the top 1 keeps 0.3 (0.5 lost); only the top 3 keeps 0.65 (0.15 lost)
    assert sufficiency(0.8, insertion[ks]) == pytest.approx((4 * 0.5 + 0.15) / 5, abs=1e-15)

    # the oracle of an additive function removes the largest weights first
    best, auc = best_deletion_order(additive, 5)
    assert best.tolist() == [1, 3, 4, 0, 2]
    assert auc == pytest.approx(d_auc, abs=1e-15)
    # and a worse order has a larger deletion AUC (the smallest weight first)
    assert curve_auc(additive(deletion_masks([2, 0, 4, 3, 1]))) > auc


def test_oracle_equals_a_brute_force_loop_and_evaluates_each_mask_once():
    rng = np.random.default_rng(7)
    t = 5
    table = rng.random(2 ** t)  # an arbitrary, non-additive p of each subset
    calls = []

    def prob(masks):
        masks = np.asarray(masks)
        calls.append(len(masks))
        index = (masks * (1 << np.arange(t))).sum(1)
        return table[index]

    best, auc = best_deletion_order(prob, t)
    assert calls == [2 ** t]  # one call, every subset once
    # the loop: every order, its masks built one by one, its area by numpy
    aucs = {}
    for order in itertools.permutations(range(t)):
        kept = set(range(t))
        curve = [table[sum(1 << i for i in kept)]]
        for i in order:
            kept.discard(i)
            curve.append(table[sum(1 << j for j in kept)])
        aucs[order] = trapezoid(curve, np.linspace(0, 1, t + 1))
    assert auc == pytest.approx(min(aucs.values()), abs=1e-14)
    assert aucs[tuple(best.tolist())] == pytest.approx(auc, abs=1e-14)
    assert all(a >= auc - 1e-14 for a in aucs.values())


def test_subset_masks_are_every_mask_once():
    masks = subset_masks(4)
    assert masks.shape == (16, 4)
    assert len({tuple(m) for m in masks.tolist()}) == 16
    assert masks[0].tolist() == [False] * 4 and masks[-1].tolist() == [True] * 4
    assert masks[0b0101].tolist() == [True, False, True, False]  # bit i: position i kept


def test_oracle_refuses_long_prompts():
    with pytest.raises(LmscopeError, match="8 tokens would try 40,320 orders"):
        best_deletion_order(additive, 8)
    with pytest.raises(LmscopeError, match="at most 3 tokens"):
        best_deletion_order(additive, 4, max_tokens=3)


def test_spearman_against_the_rank_formula():
    a = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0]
    b = [2.0, 7.0, 1.0, 8.0, 2.5, 8.5, 3.0]
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731 (no ties here)
    d = rank(a) - rank(b)
    n = len(a)
    assert spearman(a, b) == pytest.approx(1 - 6 * (d ** 2).sum() / (n * (n * n - 1)), abs=1e-12)
    assert spearman(a, np.exp(a)) == pytest.approx(1.0, abs=1e-12)  # any increasing map
    assert spearman(a, [-v for v in a]) == pytest.approx(-1.0, abs=1e-12)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1, 2, 3], [0, 0, 0]))
    assert math.isnan(spearman([1], [2]))
    with pytest.raises(ValueError, match="one length"):
        spearman([1, 2], [1, 2, 3])


@pytest.mark.filterwarnings("ignore:An input array is constant")  # scipy's NaN case: ours too
def test_spearman_and_ranks_with_ties_as_scipys():
    """Ties take the mean of their ranks: scipy.stats.spearmanr and rankdata are the reference,
    on series with many ties (attribution scores of masked or repeated tokens have them)."""
    from scipy import stats

    rng = np.random.default_rng(0)
    assert average_ranks(np.array([2.0, 1.0, 2.0, 3.0, 1.0, 2.0])).tolist() == [
        4.0, 1.5, 4.0, 6.0, 1.5, 4.0]
    for n in (2, 3, 10, 57):
        for levels in (2, 4, 1000):
            a, b = rng.integers(0, levels, n).astype(float), rng.normal(size=n)
            b[: n // 3] = b[0]  # a run of equal values in b too
            np.testing.assert_array_equal(average_ranks(a), stats.rankdata(a))
            expected = stats.spearmanr(a, b).statistic
            if np.isnan(expected):
                assert math.isnan(spearman(a, b))
            else:
                assert spearman(a, b) == pytest.approx(expected, abs=1e-12)
