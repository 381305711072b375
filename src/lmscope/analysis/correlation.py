"""Correlations of attention with loss and with generation quality, and their tables.

The statistics are metrics/correlation.py (Pearson and Spearman with p-values). Here: the tracked
attention of a run joined with its validation loss at the same iterations, and the tables
(`write_correlations`) with one line per strong, significant pair.
"""

from __future__ import annotations

from pathlib import Path

from lmscope.io import atomic_write_text
from lmscope.metrics.correlation import COLUMNS, correlate
from lmscope.render.tables import markdown_table, write_csv
from lmscope.run.run_dir import Metrics, RunDir

ATTENTION_METRICS = ("entropy_bits", "entropy_norm", "mean_distance", "span90",
                     "head_diversity_js")
MIN_POINTS = 8  # fewer points: shown, but not called a finding


def attention_with_loss(attention: list[dict], metrics: Metrics) -> list[dict]:
    """Tracked attention rows joined with the validation loss estimated at the same iteration;
    captures between evaluations are left out."""
    val = {e.iter: e.val_loss for e in metrics.evaluations}
    return [{**r, "val_loss": val[r["iter"]]} for r in attention if r.get("iter") in val]


def attention_loss_correlations(rows: list[dict]) -> list[dict]:
    """Each attention metric against val_loss over `attention_with_loss` rows."""
    return correlate({m: [r.get(m) for r in rows] for m in ATTENTION_METRICS},
                     {"val_loss": [r["val_loss"] for r in rows]})


def attention_vs_loss(run_dir: str | Path) -> list[dict]:
    """Each attention metric of RUN/attention.jsonl against the validation loss estimated at the
    same iterations (RUN/metrics.jsonl); empty when the run tracked no attention."""
    run = RunDir(run_dir)
    attention = run.attention()
    if not attention:
        return []
    return attention_loss_correlations(attention_with_loss(attention, run.metrics()))


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
