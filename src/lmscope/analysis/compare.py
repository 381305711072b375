"""Compare runs: their loss curves overlaid, and where each stopped improving.

For each run (its metrics.jsonl) the table gives the minimum validation loss and the iteration it
was reached at (the early-stopping point), the final train and validation losses and the gap
between them, and a verdict with the reason it was given, by this rule (thresholds in nats,
configurable). The validation curve's trend decides, not the gap alone: a gap while validation
loss still falls comes from a difference between the splits (a shift of domain), not over-fitting.

    over-fit   the final validation loss is more than `rise` above its minimum (the curve turned
               up), or it stopped falling (the last evaluation improved it by `falling` or less)
               while it is more than `gap` above the final training loss
    under-fit  not over-fit, and the validation loss was still falling at the end: the last
               evaluation improved on the one before by more than `falling`
    good       neither

All losses are the trainer's periodic estimates (the same fixed batches at every evaluation).
`compute(runs)` returns a `CompareResult`; `save(dir)` writes compare.csv, compare.md and
curves.png, and `load(dir)` reads the table back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.render import plots
from lmscope.render.tables import markdown_table, read_csv, write_csv
from lmscope.run.run_dir import RunDir

HEADER = ["run", "min_val_loss", "min_at_iter", "last_iter", "final_train_loss",
          "final_val_loss", "final_gap", "verdict", "reason"]


@dataclass
class Rule:
    rise: float = 0.02
    gap: float = 0.15
    falling: float = 0.01

    def describe(self) -> str:
        return (f"over-fit: final val loss more than {self.rise:g} above its minimum, or no "
                f"longer falling (by more than {self.falling:g} at the last evaluation) while "
                f"more than {self.gap:g} above the final train loss; under-fit: otherwise, if the "
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

    def verdict(self, rule: Rule) -> tuple[str, str]:
        """(over-fit | under-fit | good, why), by the rule of the module docstring."""
        val, final_train = self.eval_val, self.eval_train[-1]
        best = min(range(len(val)), key=val.__getitem__)
        rise, gap = val[-1] - val[best], val[-1] - final_train
        change = val[-2] - val[-1] if len(val) > 1 else math.nan  # > 0: still falling
        falling = change > rule.falling
        last = ("one evaluation only" if math.isnan(change) else
                f"the last evaluation changed it by {-change:+.3f}")
        if rise > rule.rise:
            return "over-fit", (f"val loss rose {rise:.3f} above its minimum at iteration "
                                f"{self.eval_steps[best]}")
        if gap > rule.gap and not falling:
            return "over-fit", f"val loss {gap:.3f} above train loss and no longer falling ({last})"
        if falling:
            why = f"val loss still falling ({last})"
            if gap > rule.gap:
                why += (f"; its gap of {gap:.3f} to train loss is not over-fitting while it falls "
                        "(the splits may differ)")
            return "under-fit", why
        return "good", f"val loss flat ({last}) and {gap:.3f} from train loss"


def read_curves(run) -> RunCurves:
    folder = RunDir(run)
    if not folder.is_run():
        raise LmscopeError(f"{run} is not a run folder: it has no metrics.jsonl")
    metrics = folder.metrics()
    evaluations = metrics.evaluations
    curves = RunCurves(folder.name, [it for it, _ in metrics.train_losses],
                       [loss for _, loss in metrics.train_losses],
                       [e.iter for e in evaluations], [e.train_loss for e in evaluations],
                       [e.val_loss for e in evaluations])
    if not curves.eval_val:
        raise LmscopeError(f"{run} has no evaluations in its metrics.jsonl yet")
    return curves


@dataclass
class RunFit:
    """One run's row of the comparison."""

    run: str
    min_val_loss: float
    min_at_iter: int  # the early-stopping point
    last_iter: int
    final_train_loss: float
    final_val_loss: float
    final_gap: float  # final val - final train
    verdict: str  # over-fit, under-fit or good
    reason: str = ""  # why, in words (Rule, RunCurves.verdict)

    def cells(self) -> list:
        return [self.run, self.min_val_loss, self.min_at_iter, self.last_iter,
                self.final_train_loss, self.final_val_loss, self.final_gap, self.verdict,
                self.reason]


@dataclass
class CompareResult:
    fits: list[RunFit]
    rule: Rule = field(default_factory=Rule)
    curves: list[RunCurves] = field(default_factory=list)  # for the figure; empty after load

    def save(self, out_dir) -> list[list]:
        """compare.csv, compare.md and curves.png; returns the table's rows."""
        rows = [f.cells() for f in self.fits]
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "compare.csv", HEADER, rows)
        atomic_write_text(out / "compare.md", "# Run comparison\n\n" + markdown_table(HEADER, rows)
                          + f"\nRule: {self.rule.describe()}.\n")
        if self.curves:
            _plot(self.curves, out / "curves.png")
        return rows

    @classmethod
    def load(cls, out_dir) -> CompareResult:
        """compare.csv (numbers to 6 significant digits); the rule is in compare.md only."""
        return cls([RunFit(r["run"], float(r["min_val_loss"]), int(r["min_at_iter"]),
                           int(r["last_iter"]), float(r["final_train_loss"]),
                           float(r["final_val_loss"]), float(r["final_gap"]), r["verdict"],
                           r.get("reason", ""))
                    for r in read_csv(Path(out_dir) / "compare.csv")])


def compute(runs, *, rule: Rule | None = None, names: list[str] | None = None) -> CompareResult:
    """Each run's curves, early-stopping point, final gap and verdict."""
    rule = rule or Rule()
    curves = [read_curves(run) for run in runs]
    if len(curves) < 1:
        raise LmscopeError("give at least one run to compare")
    names_seen = [c.name for c in curves]  # runs of the same name in different folders: paths
    labels = [str(run) if names_seen.count(c.name) > 1 else c.name
              for run, c in zip(runs, curves, strict=True)]
    for c, label in zip(curves, names or labels, strict=True):
        c.name = label
    fits = []
    for c in curves:
        best = min(range(len(c.eval_val)), key=c.eval_val.__getitem__)
        fits.append(RunFit(c.name, c.eval_val[best], c.eval_steps[best], c.eval_steps[-1],
                           c.eval_train[-1], c.eval_val[-1], c.eval_val[-1] - c.eval_train[-1],
                           *c.verdict(rule)))
    return CompareResult(fits, rule, curves)


def compare_runs(runs, out_dir, *, rule: Rule | None = None,
                 names: list[str] | None = None) -> list[list]:
    """`compute`, then `save`: compare.csv, compare.md and curves.png; returns the table rows."""
    return compute(runs, rule=rule, names=names).save(out_dir)


def _plot(curves: list[RunCurves], path: Path) -> None:
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
    plots.save(fig, path)
