"""heads: the attention-head detectors (previous-token, duplicate-token, induction, first-token),
the induction losses and the in-context-learning score of every run at every checkpoint
(lmscope probe heads), and, in a multi-seed study, induction over training as a mean over seeds
with standard-error bands."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmscope.analysis import heads as probe
from lmscope.analysis.heads import HeadsResult
from lmscope.data.corpora import folder_name
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.metrics.spread import describe
from lmscope.render import plots
from lmscope.render.tables import markdown_table, write_csv
from lmscope.study.plan import RunSpec
from lmscope.study.registry import Step, StepContext, readme_section

HEADER = ["dataset", "variant", "run", "iteration", "best_induction", "best_previous_token",
          "icl_score", "second_half_loss", "first_half_loss"]


@dataclass
class HeadsSettings:
    n_sequences: int = 8  # repeated random sequences the detectors read
    windows: int = 16  # windows of the run's corpus for the in-context-learning score

    def __post_init__(self):  # checked when the study file is read, before any training
        if self.n_sequences < 1 or self.windows < 1:
            raise LmscopeError(f"[heads] n_sequences and windows must be at least 1, got "
                               f"{self.n_sequences} and {self.windows}")


def part(ctx: StepContext, spec: RunSpec) -> None:
    s = ctx.settings
    probe.compute(ctx.run_dir(spec.name), which="all", data=spec.corpus, windows=s.windows,
                  n_sequences=s.n_sequences, device=ctx.device,
                  ).save(ctx.out / "heads" / spec.name)


def run(ctx: StepContext) -> None:
    _across_runs(ctx)


def _best(result: HeadsResult, detector: str, iteration: int) -> float:
    scores = [r.score for r in result.rows if r.detector == detector and r.iteration == iteration]
    return max(scores) if scores else math.nan


def _across_runs(ctx: StepContext) -> None:
    """heads/summary.csv/.md and heads/induction_<dataset>.png: per run and checkpoint the best
    induction and previous-token head and the ICL score; the figure a mean over seeds."""
    out = ctx.out / "heads"
    rows, groups = [], {}
    for spec in ctx.study.runs():
        result = HeadsResult.load(out / spec.name)
        dataset = folder_name(spec.corpus)
        variant = spec.variant.name if spec.variant else ctx.study.name
        groups.setdefault(dataset, {}).setdefault(variant, []).append(spec.name)
        for icl in result.icl:
            rows.append([dataset, variant, spec.name, icl.iteration,
                         _best(result, "induction", icl.iteration),
                         _best(result, "previous_token", icl.iteration), icl.icl_score,
                         icl.second_half_loss, icl.first_half_loss])
    write_csv(out / "summary.csv", HEADER, rows)
    table = []
    for dataset, variants in groups.items():
        for variant, names in variants.items():
            final = [max((r for r in rows if r[2] == name), key=lambda r: r[3]) for name in names]
            induction, icl = describe(r[4] for r in final), describe(r[6] for r in final)
            onsets = [HeadsResult.load(out / name).induction_onset() for name in names]
            table.append([dataset, variant, len(names), induction.mean, induction.stderr,
                          icl.mean, icl.stderr,
                          ", ".join("never" if o is None else str(o) for o in onsets)])
        fig, axes = plots.panels(2, title=f"{dataset}: induction over training (mean over "
                                          "seeds, +- 1 SE)", width=5.2, height=3.6)
        for i, (variant, names) in enumerate(variants.items()):
            for ax, column in zip(axes, (4, 6), strict=True):
                curves = [{r[3]: r[column] for r in rows if r[2] == name} for name in names]
                shared = sorted(set.intersection(*(set(c) for c in curves)))
                plots.mean_band(ax, shared, [[c[it] for it in shared] for c in curves],
                                f"{variant} ({len(names)} runs)", f"C{i}")
        axes[0].set_title("best induction head score", fontsize=10)
        axes[1].set_title("ICL score (late - early loss, nats)", fontsize=10)
        for ax in axes:
            plots.iteration_axis(ax, [r[3] for r in rows if r[0] == dataset])
            ax.grid(alpha=0.3)
        plots.legend_below(fig)
        plots.save(fig, out / f"induction_{dataset}.png")
    atomic_write_text(out / "summary.md", (
        "# Attention heads and in-context learning\n\nAt the final checkpoint of each run: the "
        "best induction head's score (mean attention on the token after the current token's "
        "earlier copy, on repeated random tokens) and the ICL score (loss late in a window minus "
        "early in it, on the run's own corpus; negative: the model uses its context), as means "
        "over the runs of each variant (n) with their standard error (nan for one run); the "
        "induction onset of each run is the first iteration at which a head scores 0.3.\n\n"
        + markdown_table(["dataset", "variant", "n", "best induction", "se", "ICL score", "se",
                          "onset per run"], table)))


def readme(ctx: StepContext) -> str:
    return readme_section(ctx, "Attention heads and in-context learning", "heads/summary.md",
                          [f"heads/induction_{folder_name(c)}.png" for c in ctx.study.corpora])


STEP = Step(
    "heads", "head detectors (previous-token, duplicate-token, induction, first-token), induction "
    "losses and the ICL score of every run at every checkpoint: heads/<run>/heads.csv, icl.csv, "
    "heads_<detector>.png, heads/summary.md, heads/induction_<dataset>.png (mean over seeds)",
    run, part=part, settings=HeadsSettings, result=HeadsResult, command="lmscope probe heads",
    readme=readme, report_title="Attention heads and in-context learning",
    report_hide=("*/heads_over_iterations.png",))
