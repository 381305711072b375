"""Correlations between two named sets of series: Pearson's r and Spearman's rho with p-values.

For every pair (x, y) of named series of equal length, `correlate` reports the number of points,
Pearson's r and Spearman's rho, each with its two-sided p-value (scipy.stats.pearsonr and
spearmanr). Points where either value is missing (None or NaN) are dropped pair by pair. A pair
with fewer than 3 points, or with a constant series, has no correlation: its r, rho and p-values
are empty (None) rather than NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

COLUMNS = ["x", "y", "n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p"]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(v):
    return float(v) if _finite(v) else None


def correlate(xs: Mapping[str, Sequence], ys: Mapping[str, Sequence]) -> list[dict]:
    """One row per (x, y) pair of series: n, Pearson r and p, Spearman rho and p (COLUMNS)."""
    from scipy import stats  # here, not at the top: importing scipy.stats takes seconds

    rows = []
    for xname, xvalues in xs.items():
        for yname, yvalues in ys.items():
            pairs = [(float(a), float(b)) for a, b in zip(xvalues, yvalues, strict=True)
                     if _finite(a) and _finite(b)]
            row = {"x": xname, "y": yname, "n": len(pairs), "pearson_r": None, "pearson_p": None,
                   "spearman_rho": None, "spearman_p": None}
            a = [p[0] for p in pairs]
            b = [p[1] for p in pairs]
            if len(pairs) >= 3 and len(set(a)) > 1 and len(set(b)) > 1:
                with warnings.catch_warnings():  # near-constant input: scipy warns, we report
                    warnings.simplefilter("ignore")
                    r, rp = stats.pearsonr(a, b)
                    rho, sp = stats.spearmanr(a, b)
                row.update(pearson_r=_number(r), pearson_p=_number(rp),
                           spearman_rho=_number(rho), spearman_p=_number(sp))
            rows.append(row)
    return rows
