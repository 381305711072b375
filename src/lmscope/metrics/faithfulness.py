"""Faithfulness of an attribution: does removing what it calls important change the prediction?

An attribution gives one score per input position (T positions). Its order is the positions by
descending signed score, ties broken by position (`order_by_scores`). The measures below
perturb the input by masks: a mask is a bool array over the T positions, True where a position
keeps its token's embedding and False where the baseline embedding replaces it. p(mask) is the
probability the model gives the target token after the prompt so masked (p(all True) = p_full,
the unperturbed prediction).

    deletion curve     d_k = p(first k positions of the order removed), k = 0..T: row k of
                       `deletion_masks` (d_0 = p_full, d_T = p(all baseline))
    insertion curve    i_k = p(only the first k positions of the order kept), k = 0..T: row k
                       of `insertion_masks` (i_0 = p(all baseline), i_T = p_full)
    deletion AUC       the area under d at x = k/T (trapezoid rule, `curve_auc`): a faithful
                       order removes what the prediction needs first, so LOWER is better
                       (Petsiuk, Das & Saenko 2018, "RISE: Randomized Input Sampling for
                       Explanation of Black-box Models", section 4.1)
    insertion AUC      the area under i: HIGHER is better (the same paper)
    faithfulness score insertion AUC - deletion AUC: HIGHER is better; the one number the
                       methods are ranked by (both curves run between p_full and
                       p(all baseline), so the score lies in [-1, 1])
    comprehensiveness  mean over the bins b of ERASER_BINS of p_full - p(top-k_b removed),
                       k_b = `top_k_sizes`: HIGHER is better (what the rationale takes away)
    sufficiency        mean over the bins of p_full - p(only the top-k_b kept): LOWER is
                       better (the rationale alone keeps the prediction)

Comprehensiveness and sufficiency are ERASER's AOPC forms (DeYoung et al. 2020, "ERASER: A
Benchmark to Evaluate Rationalized NLP Models", section 4.2; the benchmark's
rationale_benchmark/metrics.py averages p_full - p_k plainly over the bins 1, 5, 10, 20 and 50%).
ERASER deletes tokens; here a removed position keeps its place and gets the baseline embedding,
as in the deletion and insertion curves, so that every measure perturbs the input one way. Both
are differences of probabilities (not log-probabilities), in [-1, 1].

`spearman` is Spearman's rank correlation (scipy.stats.spearmanr), NaN when a side is constant: the
randomization check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps") compares the
|scores| of a trained model with those of a re-initialised one by it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ERASER_BINS = (0.01, 0.05, 0.10, 0.20, 0.50)  # fractions of the prompt's positions


def _order(order, t: int | None = None) -> np.ndarray:
    order = np.asarray(order, dtype=np.int64).reshape(-1)
    if t is None:
        t = len(order)
    if len(order) != t or sorted(order.tolist()) != list(range(t)):
        raise ValueError(f"an order must be a permutation of 0..{t - 1}, got {order.tolist()}")
    return order


def deletion_masks(order) -> np.ndarray:
    """(T+1, T) bool: row k has the first k positions of `order` removed (False); row 0 keeps
    everything, row T nothing."""
    order = _order(order)
    t = len(order)
    masks = np.ones((t + 1, t), dtype=bool)
    for k in range(1, t + 1):
        masks[k:, order[k - 1]] = False
    return masks


def insertion_masks(order) -> np.ndarray:
    """(T+1, T) bool: row k keeps only the first k positions of `order`; row 0 keeps nothing,
    row T everything."""
    return ~deletion_masks(order)


def curve_auc(values) -> float:
    """The area under a curve of T+1 values at x = 0, 1/T, ..., 1, by the trapezoid rule."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) < 2:
        raise ValueError(f"a curve needs at least 2 values (T >= 1), got {len(values)}")
    t = len(values) - 1
    return float((values.sum() - 0.5 * (values[0] + values[-1])) / t)


def order_by_scores(scores) -> np.ndarray:
    """Positions by descending signed score (most important first), ties by position."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    return np.argsort(-scores, kind="stable")


def top_k_sizes(t: int, bins: Sequence[float] = ERASER_BINS) -> np.ndarray:
    """k_b = max(1, ceil(b * T)) positions for each bin fraction b.

    At least one: the bins are fractions of a document of hundreds of words in ERASER, and a
    prompt of 40 characters has no 1% (0.4 of a position); its top 1% is its top position. So
    short prompts repeat a k over several bins (T = 1 gives k = 1 in every bin).
    """
    if t < 1:
        raise ValueError(f"a prompt of {t} positions has no top k")
    return np.array([max(1, math.ceil(round(b * t, 9))) for b in bins], dtype=np.int64)


def comprehensiveness(p_full: float, p_without_top) -> float:
    """mean_b (p_full - p(x without its top-k_b positions)): higher is more faithful."""
    return float(np.mean(p_full - np.asarray(p_without_top, dtype=np.float64)))


def sufficiency(p_full: float, p_only_top) -> float:
    """mean_b (p_full - p(only the top-k_b positions kept)): lower is more faithful."""
    return float(np.mean(p_full - np.asarray(p_only_top, dtype=np.float64)))


def faithfulness_score(insertion_auc: float, deletion_auc: float) -> float:
    """insertion AUC - deletion AUC: the ranking criterion, higher is more faithful."""
    return float(insertion_auc - deletion_auc)


def spearman(a, b) -> float:
    """Spearman's rank correlation of two equally long series; NaN when either is constant
    (or shorter than 2), where a rank correlation has no meaning."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if len(a) != len(b):
        raise ValueError(f"spearman needs two series of one length, got {len(a)} and {len(b)}")
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    # Pearson's r of the average ranks: scipy.stats.spearmanr's number (tested against it)
    # without importing scipy.stats, which takes 1.4 s in each of a study's worker processes
    return float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of x, ties given the mean of the ranks they span (scipy.stats.rankdata's
    "average")."""
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # each run of equals
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # of positions starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks
