"""A mean with what it stands on: how many values it averages and how far they spread.

Every mean lmscope shows (over prompts, over seeds) comes from `describe`, so a table can show
n and the spread beside it and a value that is not a number is counted as left out, never
silently averaged away.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Described:
    mean: float  # of the finite values; nan when there are none
    sd: float  # sample standard deviation (ddof 1); nan for fewer than two values
    n: int  # finite values averaged
    left_out: int  # values that were None, nan or infinite

    @property
    def stderr(self) -> float:
        """Standard error of the mean, sd / sqrt(n); nan for fewer than two values."""
        return self.sd / math.sqrt(self.n) if self.n > 1 else math.nan


def is_number(value) -> bool:
    """A finite int or float (not None, nan or infinite)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def describe(values: Iterable) -> Described:
    """Mean, sample standard deviation and count of the finite values; the rest are counted."""
    values = list(values)
    xs = np.array([float(v) for v in values if is_number(v)], dtype=np.float64)
    n = len(xs)
    return Described(mean=float(xs.mean()) if n else math.nan,
                     sd=float(xs.std(ddof=1)) if n > 1 else math.nan,
                     n=n, left_out=len(values) - n)
