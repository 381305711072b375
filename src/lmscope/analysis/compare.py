"""Compare runs: their loss curves overlaid, and where each stopped improving.

For each run (its metrics.jsonl) the table gives the minimum validation loss and the iteration it
was reached at (the early-stopping point), the final train and validation losses and the gap
between them, and a verdict by this rule (thresholds in nats, configurable):

    over-fit   the final validation loss is more than `rise` above its minimum (the curve turned
               up), or it exceeds the final training loss by more than `gap`
    under-fit  not over-fit, and the validation loss was still falling at the end: the last
               evaluation improved on the one before by more than `falling`
    good       neither

All losses are the trainer's periodic estimates (the same fixed batches at every evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lmscope.analysis.common import markdown_table, write_csv
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.report import plots


@dataclass
class Rule:
    rise: float = 0.02
    gap: float = 0.15
    falling: float = 0.01

    def describe(self) -> str:
        return (f"over-fit: final val loss more than {self.rise:g} above its minimum, or more "
                f"than {self.gap:g} above the final train loss; under-fit: otherwise, if the "
                f"last evaluation still improved val loss by more than {self.falling:g}; "
                "good: neither")


@dataclass
class RunCurves:
    name: str
    train_steps: list[int]  # per logged step
    train_loss: list[float]
    eval_steps: list[int]  # per evaluation
    eval_train: list[float]
    eval_val: list[float]

    def verdict(self, rule: Rule) -> str:
        final_val, final_train = self.eval_val[-1], self.eval_train[-1]
        if final_val - min(self.eval_val) > rule.rise or final_val - final_train > rule.gap:
            return "over-fit"
        if len(self.eval_val) > 1 and self.eval_val[-2] - final_val > rule.falling:
            return "under-fit"
        return "good"


def read_curves(run) -> RunCurves:
    import lmscope

    if not (Path(run) / "metrics.jsonl").is_file():
        raise LmscopeError(f"{run} is not a run folder: it has no metrics.jsonl")
    curves = RunCurves(Path(run).name, [], [], [], [], [])
    for row in lmscope.read_metrics(run):
        if row.get("kind") == "train" and isinstance(row.get("loss"), (int, float)):
            curves.train_steps.append(row["iter"])
            curves.train_loss.append(row["loss"])
        elif row.get("kind") == "eval" and isinstance(row.get("val_loss"), (int, float)):
            curves.eval_steps.append(row["iter"])
            curves.eval_train.append(row["train_loss"])
            curves.eval_val.append(row["val_loss"])
    if not curves.eval_val:
        raise LmscopeError(f"{run} has no evaluations in its metrics.jsonl yet")
    return curves


def compare_runs(runs, out_dir, *, rule: Rule | None = None,
                 names: list[str] | None = None) -> list[list]:
    """Write compare.csv, compare.md and curves.png into out_dir; return the table rows."""
    rule = rule or Rule()
    curves = [read_curves(run) for run in runs]
    if len(curves) < 1:
        raise LmscopeError("give at least one run to compare")
    names_seen = [c.name for c in curves]  # runs of the same name in different folders: paths
    labels = [str(run) if names_seen.count(c.name) > 1 else c.name
              for run, c in zip(runs, curves, strict=True)]
    for c, label in zip(curves, names or labels, strict=True):
        c.name = label
    rows = []
    for c in curves:
        best = min(range(len(c.eval_val)), key=c.eval_val.__getitem__)
        rows.append([c.name, c.eval_val[best], c.eval_steps[best], c.eval_steps[-1],
                     c.eval_train[-1], c.eval_val[-1], c.eval_val[-1] - c.eval_train[-1],
                     c.verdict(rule)])
    header = ["run", "min_val_loss", "min_at_iter", "last_iter", "final_train_loss",
              "final_val_loss", "final_gap", "verdict"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "compare.csv", header, rows)
    atomic_write_text(out / "compare.md", "# Run comparison\n\n" + markdown_table(header, rows)
                      + f"\nRule: {rule.describe()}.\n")
    fig, (ax_train, ax_val) = plots.panels(2, title="Training curves", width=6)
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        ax_train.plot(c.train_steps, c.train_loss, color=color, alpha=0.35, linewidth=0.8)
        ax_train.plot(c.eval_steps, c.eval_train, color=color, marker=".", label=c.name)
        ax_val.plot(c.eval_steps, c.eval_val, color=color, marker=".", label=c.name)
        best = min(range(len(c.eval_val)), key=c.eval_val.__getitem__)
        ax_val.plot([c.eval_steps[best]], [c.eval_val[best]], "*", color=color, markersize=12)
    for ax, title in ((ax_train, "train loss (faint: every logged step)"),
                      (ax_val, "validation loss (star: minimum)")):
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    finite = [v for c in curves for v in c.eval_val if math.isfinite(v)]
    if finite:
        ax_val.set_ylim(min(finite) - 0.05, min(max(finite), min(finite) * 2) + 0.05)
    plots.save(fig, out / "curves.png")
    return rows
