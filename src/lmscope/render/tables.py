"""Tables as CSV (numbers to 6 significant digits) and as Markdown (4 decimals), written atomically."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from lmscope.io import atomic_write_text


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file written by `write_csv`, as dicts keyed by the header."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    def cell(v):
        text = f"{v:.4f}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"

