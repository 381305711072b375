"""dynamics: the learning dynamics of every run of the study on its own corpus, at every
checkpoint (lmscope probe dynamics): norms, effective rank and sparsity of each layer's weights,
gradients and activations, and when each layer settles (its CKA to the final checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass

from lmscope.analysis import dynamics as probe
from lmscope.analysis.dynamics import SETTLED, DynamicsResult
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.render import plots
from lmscope.render.tables import markdown_table, write_csv
from lmscope.study.plan import RunSpec
from lmscope.study.registry import Step, StepContext, readme_section

HEADER = ["run", "layer", "settled_at", "cka_first", "effective_rank_first",
          "effective_rank_final", "hoyer_first", "hoyer_final"]


@dataclass
class DynamicsSettings:
    windows: int = 16  # windows of the run's own validation split, each the model's context long

    def __post_init__(self):  # checked when the study file is read, before any training
        if self.windows < 1:
            raise LmscopeError(f"[dynamics] windows must be at least 1, got {self.windows}")


def part(ctx: StepContext, spec: RunSpec) -> None:
    probe.compute(ctx.run_dir(spec.name), spec.corpus, windows=ctx.settings.windows,
                  device=ctx.device).save(
        ctx.out / "dynamics" / spec.name, skip=ctx.skip_figures)


def run(ctx: StepContext) -> None:
    _across_runs(ctx)


def _across_runs(ctx: StepContext) -> None:
    """dynamics/summary.csv/.md/.png: per run and layer, when it settles, and its activations'
    effective rank and sparsity at the first and the final checkpoint."""
    out = ctx.out / "dynamics"
    rows, curves, reading = [], {}, []
    for spec in ctx.study.runs():
        result = DynamicsResult.load(out / spec.name)
        reading.append(_reading(spec.name, result))
        for layer in result.layers:
            _, cka = result.similarity_series(layer)
            _, erank = result.series("activations", layer, "effective_rank")
            _, hoyer = result.series("activations", layer, "hoyer")
            settled = result.settled_at(layer)
            rows.append([spec.name, layer, "never" if settled is None else settled, cka[0],
                         erank[0], erank[-1], hoyer[0], hoyer[-1]])
            curves.setdefault(spec.name, {})[layer] = result.similarity_series(layer)
    write_csv(out / "summary.csv", HEADER, rows)
    atomic_write_text(out / "summary.md", (
        "# When each layer settles\n\nEach layer's representation on the run's own validation "
        "text at every checkpoint against the same layer at the final checkpoint (linear CKA); "
        f"a layer has settled at the first iteration from which that CKA stays at or above "
        f"{SETTLED}. Effective rank and Hoyer sparsity of the layer's activations at the first "
        "and the final checkpoint.\n\n" + markdown_table(
            ["run", "layer", "settled at", "CKA at the first", "effective rank, first",
             "final", "Hoyer, first", "final"], rows)
        + "\n\n**Reading** (written from the numbers above).\n\n"
        + "\n".join(f"- {r}" for r in reading) + "\n"))
    names = list(curves)
    fig, axes = plots.panels(len(names), title="Each layer against itself at the final "
                                               "checkpoint (linear CKA)", width=4.2, height=3.4)
    for ax, name in zip(axes, names, strict=True):
        layers = list(curves[name])
        for colour, layer in zip(plots.sequential_colours(len(layers)), layers, strict=True):
            x, y = curves[name][layer]
            ax.plot(x, y, marker=".", color=colour, label=f"layer {layer}")
        plots.iteration_axis(ax, curves[name][layers[0]][0], label="iteration")
        ax.axhline(SETTLED, color="grey", lw=0.8, ls=":")
        ax.set_title(name, fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("CKA to the final checkpoint")
    plots.legend_below(fig, *max((ax.get_legend_handles_labels() for ax in axes),
                                 key=lambda h: len(h[0])), ncol=8)
    plots.save(fig, out / "summary.png")


def _reading(run: str, result: DynamicsResult) -> str:
    """One sentence on a run: when its layers settle, and how its activations' effective rank
    changes from the first to the final checkpoint."""
    settled = {layer: result.settled_at(layer) for layer in result.layers}
    order = ", ".join(f"{layer} at {'never' if it is None else it}"
                      for layer, it in settled.items())
    first, last = [], []
    for layer in result.layers:
        _, erank = result.series("activations", layer, "effective_rank")
        first.append(erank[0])
        last.append(erank[-1])
    n = len(result.layers)
    return (f"{run}: its layers settle (CKA to the final >= {SETTLED}) {order}; the effective "
            f"rank of its layers' activations goes from {sum(first) / n:.1f} at iteration "
            f"{result.iterations[0]} to {sum(last) / n:.1f} at {result.iterations[-1]} (mean "
            "over layers)")


def readme(ctx: StepContext) -> str:
    return readme_section(ctx, "Learning dynamics", "dynamics/summary.md",
                          ["dynamics/summary.png"])


STEP = Step(
    "dynamics", "learning dynamics of every run at every checkpoint: dynamics/<run>/dynamics.csv "
    "(norms, effective rank, condition number, sparsity of weights, heads, gradients and "
    "activations), similarity.csv (each layer's CKA/SVCCA/PWCCA to the final), figures; "
    "dynamics/summary.md (when each layer settles)",
    run, part=part, settings=DynamicsSettings, result=DynamicsResult, command="lmscope probe dynamics",
    readme=readme, report_title="Learning dynamics",
    report_hide=("*/weights.png", "*/gradients.png", "*/activations.png"))
