"""lens: the logit lens of every model on every corpus of the study, at every checkpoint
(lmscope probe lens): at which layer each model's prediction forms, in and out of its domain."""

from __future__ import annotations

from dataclasses import dataclass

from lmscope.analysis import lens as probe
from lmscope.analysis.lens import LensResult
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.render import plots
from lmscope.render.tables import markdown_table, write_csv
from lmscope.report.html import lens_view
from lmscope.study.plan import RunSpec
from lmscope.study.registry import Step, StepContext, readme_section

HEADER = ["model", "corpus", "iteration", "point", "depth", "agree_final", "kl_bits",
          "n_targets"]
FORMED_AT = 0.5  # the agreement with the output at which a prediction counts as formed


@dataclass
class LensSettings:
    windows: int = 16  # windows of each corpus's validation split, each the model's context long

    def __post_init__(self):  # checked when the study file is read, before any training
        if self.windows < 1:
            raise LmscopeError(f"[lens] windows must be at least 1, got {self.windows}")


def part(ctx: StepContext, spec: RunSpec) -> None:
    probe.compute(ctx.run_dir(spec.name), data=list(ctx.study.corpora),
                  windows=ctx.settings.windows, device=ctx.device,
                  ).save(ctx.out / "lens" / spec.name, skip=ctx.skip_figures)


def run(ctx: StepContext) -> None:
    _across_models(ctx)


def _across_models(ctx: StepContext) -> None:
    """lens/summary.csv/.md/.png: for each model and corpus at the final checkpoint, the
    agreement with the output point by point, and the first point where it reaches FORMED_AT."""
    out = ctx.out / "lens"
    rows, table, curves = [], [], {}
    for corpus in ctx.study.corpora:
        model = ctx.corpus_dir(corpus).name
        result = LensResult.load(out / model)
        final = max(r.iteration for r in result.rows)
        for source in dict.fromkeys(r.source for r in result.rows):
            sel = sorted((r for r in result.rows if r.source == source and r.iteration == final),
                         key=lambda r: r.depth)
            rows += [[model, source, final, r.point, r.depth, r.agree_final, r.kl_bits,
                      r.n_targets] for r in sel]
            formed = next((r.point for r in sel if r.agree_final >= FORMED_AT), "never")
            own = "own" if source == ctx.corpus_dir(corpus).name or source == corpus else ""
            table.append([model, source, own, sel[0].n_targets, formed,
                          " ".join(f"{r.agree_final:.2f}" for r in sel)])
            curves.setdefault(model, {})[source] = ([r.point for r in sel],
                                                    [r.agree_final for r in sel])
    write_csv(out / "summary.csv", HEADER, rows)
    atomic_write_text(out / "summary.md", (
        "# Where each model's prediction forms, on each corpus\n\nAt the final checkpoint: the "
        "logit lens's agreement with the model's own output at each point, from the embeddings "
        f"to the last layer, and the first point where it reaches {FORMED_AT:.0%} (n: the "
        "targets read). A model whose prediction forms later on another corpus needs more of "
        "its depth there.\n\n" + markdown_table(
            ["model", "corpus", "", "n", f"formed at (≥ {FORMED_AT:.0%})", "agreement by point"],
            table)))
    models = list(curves)
    fig, axes = plots.panels(len(models), title="Logit lens: agreement with the output by layer, "
                                                "final checkpoints", width=4.2, height=3.4)
    for ax, model in zip(axes, models, strict=True):
        for i, (source, (points, agree)) in enumerate(curves[model].items()):
            ax.plot(range(len(points)), agree, marker=".", color=f"C{i}", label=source)
            ax.set_xticks(range(len(points)), points, rotation=90, fontsize=7)
        ax.set_title(f"{model} model", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("agrees with the output")
    plots.legend_below(fig)
    plots.save(fig, out / "summary.png")


def readme(ctx: StepContext) -> str:
    return readme_section(ctx, "Logit lens", "lens/summary.md", ["lens/summary.png"])


STEP = Step(
    "lens", "the logit lens of every model on every corpus at every checkpoint: "
    "lens/<model>/lens.csv, by_layer.png, formation.png, lens/summary.md (where predictions "
    "form, per model and corpus)",
    run, part=part, settings=LensSettings, result=LensResult, per_corpus=True,
    command="lmscope probe lens", readme=readme, report_title="Logit lens",
    report_view=lens_view, report_hide=("*/grid_*.png",))
