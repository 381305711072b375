"""Progress of long work: a bar on a terminal (stderr), nothing when output goes to a pipe or
a file (tqdm's disable=None), so logs and tests stay clean."""

from __future__ import annotations

from collections.abc import Iterable

from tqdm import tqdm


def progress(items: Iterable, what: str, unit: str = "checkpoint") -> tqdm:
    """`items`, iterated with a bar named `what` that counts `unit`s and goes when done."""
    return tqdm(list(items), desc=what, unit=unit, leave=False, disable=None, dynamic_ncols=True)
