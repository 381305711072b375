"""Correlations between measurements: attention metrics against validation loss over training, and
per-sample attention metrics against generation-quality metrics.

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
from pathlib import Path

from lmscope.analysis.common import markdown_table, write_csv
from lmscope.io import atomic_write_text, read_jsonl

ATTENTION_METRICS = ("entropy_bits", "entropy_norm", "mean_distance", "span90",
                     "head_diversity_js")
MIN_POINTS = 8  # fewer points: shown, but not called a finding
COLUMNS = ["x", "y", "n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p"]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(v):
    return float(v) if _finite(v) else None


def correlate(xs: Mapping[str, Sequence], ys: Mapping[str, Sequence]) -> list[dict]:
    """One row per (x, y) pair of series: n, Pearson r and p, Spearman rho and p."""
    from scipy import stats

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


def tracked_attention(run_dir: str | Path) -> list[dict]:
    """The rows of RUN/attention.jsonl (attention tracked during training); [] without one."""
    path = Path(run_dir) / "attention.jsonl"
    return read_jsonl(path) if path.is_file() else []


def attention_with_loss(attention: list[dict], metrics: list[dict]) -> list[dict]:
    """Tracked attention rows joined with the validation loss estimated at the same iteration
    (the rows of metrics.jsonl); captures between evaluations are left out."""
    val = {r["iter"]: r["val_loss"] for r in metrics if r.get("kind") == "eval"}
    return [{**r, "val_loss": val[r["iter"]]} for r in attention if r.get("iter") in val]


def attention_loss_correlations(rows: list[dict]) -> list[dict]:
    """Each attention metric against val_loss over `attention_with_loss` rows."""
    return correlate({m: [r.get(m) for r in rows] for m in ATTENTION_METRICS},
                     {"val_loss": [r["val_loss"] for r in rows]})


def attention_vs_loss(run_dir: str | Path) -> list[dict]:
    """Each attention metric of RUN/attention.jsonl against the validation loss estimated at the
    same iterations (RUN/metrics.jsonl); empty when the run tracked no attention."""
    from lmscope.train.trainer import read_metrics

    attention = tracked_attention(run_dir)
    if not attention:
        return []
    return attention_loss_correlations(attention_with_loss(attention, read_metrics(run_dir)))


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.3f}"
    return str(v)


def write_correlations(rows: list[dict], out_dir: str | Path, name: str, title: str) -> None:
    """OUT/<name>.csv and OUT/<name>.md (a table and one line per strong, significant pair)."""
    out_dir = Path(out_dir)
    write_csv(out_dir / f"{name}.csv", COLUMNS, [[r[c] for c in COLUMNS] for r in rows])
    table = markdown_table(COLUMNS, [[_fmt(r[c]) for c in COLUMNS] for r in rows])
    strong = [r for r in rows if r["spearman_rho"] is not None and abs(r["spearman_rho"]) >= 0.5
              and r["spearman_p"] is not None and r["spearman_p"] < 0.05 and r["n"] >= MIN_POINTS]
    lines = [f"# {title}", "", table, "",
             f"p-values are scipy's (two-sided); with fewer than {MIN_POINTS} points they mean "
             "little, and such pairs are not listed below.", ""]
    if strong:
        lines.append("Pairs with |Spearman rho| >= 0.5 at p < 0.05:")
        lines += [f"- {r['x']} vs {r['y']}: rho {r['spearman_rho']:+.2f} (p {_fmt(r['spearman_p'])},"
                  f" n {r['n']})" for r in strong]
    else:
        lines.append("No pair has |Spearman rho| >= 0.5 at p < 0.05.")
    atomic_write_text(out_dir / f"{name}.md", "\n".join(lines) + "\n")
