"""similarity: representation similarity between the study's runs, layer by layer, on each
corpus of the study, at every checkpoint they share (lmscope probe similarity): how alike the
models are inside, and at which iteration they part."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmscope.analysis import similarity as probe
from lmscope.analysis.similarity import DIVERGED, SimilarityResult, cka_text, iteration_label
from lmscope.data.corpora import folder_name
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.render import plots
from lmscope.render.tables import markdown_table, write_csv
from lmscope.report.html import similarity_view
from lmscope.study.registry import Part, Step, StepContext, readme_section, unit_name

HEADER = ["corpus", "run_a", "run_b", "iteration", "mean_same_layer_cka",
          "mean_same_layer_debiased_cka"]


@dataclass
class SimilaritySettings:
    windows: int = 16  # windows of each corpus's validation split, the shortest context long

    def __post_init__(self):  # checked when the study file is read, before any training
        if self.windows < 1:
            raise LmscopeError(f"[similarity] windows must be at least 1, got {self.windows}")


def parts(ctx: StepContext) -> list[Part]:
    """A unit per corpus, started once every run is trained."""
    trained = tuple(unit_name("train", spec.name) for spec in ctx.study.runs())
    return [Part(folder_name(corpus), corpus, trained) for corpus in ctx.study.corpora]


def part(ctx: StepContext, corpus: str) -> None:
    """Every pair of runs on one corpus (two or more runs: compares_runs)."""
    runs = [ctx.run_dir(spec.name) for spec in ctx.study.runs()]
    probe.compute(runs, corpus, windows=ctx.settings.windows, device=ctx.device,
                  ).save(ctx.out / "similarity" / folder_name(corpus), skip=ctx.skip_figures)


def run(ctx: StepContext) -> None:
    _across_corpora(ctx)


def _across_corpora(ctx: StepContext) -> None:
    """similarity/summary.csv/.md/.png: for every corpus and pair of runs with the same layers,
    the mean same-layer CKA at every iteration, where they part, and the figure over training."""
    out = ctx.out / "similarity"
    rows, table, curves, reading = [], [], {}, []
    for corpus in ctx.study.corpora:
        name = folder_name(corpus)
        result = SimilarityResult.load(out / name)
        reading.append(_reading(name, result))
        last = result.iterations[-1]
        for a, b in result.pairs:
            if not result.same_labels(a, b):
                continue
            series = [result.mean_same_layer(it, a, b) for it in result.iterations]
            rows += [[name, a, b, it, value, result.mean_same_layer(it, a, b, debiased=True)]
                     for it, value in zip(result.iterations, series, strict=True)]
            diverged = result.diverged_at(a, b) if result.same_architecture(a, b) else None
            table.append([name, a, b, series[-1], result.mean_same_layer(last, a, b, True),
                          "-" if diverged is None else diverged])
            if all(isinstance(i, int) for i in result.iterations):
                curves.setdefault(name, {})[f"{a} / {b}"] = (result.iterations, series)
    write_csv(out / "summary.csv", HEADER, rows)
    atomic_write_text(out / "summary.md", (
        "# How alike the models are inside\n\nOn each corpus, every pair of runs with the same "
        "layers: the mean over layers of each layer's linear CKA with the same layer of the "
        "other run (and its debiased form) at the last checkpoint, and the first iteration at "
        f"which it is below {DIVERGED} (runs from the same seed start identical). The layer x "
        "layer matrices are in similarity/<corpus>/.\n\n" + markdown_table(
            ["corpus", "run a", "run b", "mean same-layer CKA", "debiased", "parted at"],
            [[c, a, b, cka_text(v), cka_text(d), p] for c, a, b, v, d, p in table])
        + "\n\n**Reading** (written from the numbers above and in similarity/<corpus>/).\n\n"
        + "\n".join(f"- {r}" for r in reading if r) + "\n"))
    if curves:
        corpora = list(curves)
        fig, axes = plots.panels(len(corpora), title="Mean same-layer CKA between the runs over "
                                 "training, on each corpus", width=4.2, height=3.4)
        for ax, corpus in zip(axes, corpora, strict=True):
            for i, (pair, (x, y)) in enumerate(curves[corpus].items()):
                ax.plot(x, y, marker=".", color=f"C{i}", label=pair)
            plots.iteration_axis(ax, next(iter(curves[corpus].values()))[0], label="iteration")
            ax.axhline(DIVERGED, color="grey", lw=0.8, ls=":")
            ax.set_title(f"on {corpus}", fontsize=9)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("mean same-layer CKA")
        plots.legend_below(fig)
        plots.save(fig, out / "summary.png")


def _reading(corpus: str, result: SimilarityResult) -> str:
    """One paragraph on a corpus: the most and least alike pairs, the most and least alike
    layer, when the pairs parted, and for pairs with different layers each layer's best match."""
    last = result.iterations[-1]
    alike = [(result.mean_same_layer(last, a, b), a, b) for a, b in result.pairs
             if result.same_labels(a, b)]
    alike = [x for x in alike if not math.isnan(x[0])]
    parts = []
    if alike:
        hi, lo = max(alike), min(alike)
        parts.append(f"On {corpus}, at {iteration_label(last)}, the most alike models are {hi[1]} and "
                     f"{hi[2]} (mean same-layer CKA {hi[0]:.3f})" + (
                         f", the least alike {lo[1]} and {lo[2]} ({lo[0]:.3f})"
                         if len(alike) > 1 else ""))
        by_layer: dict[str, list[float]] = {}
        for _, a, b in alike:
            for layer, values in result.same_layer(a, b).items():
                if not math.isnan(values[-1]):
                    by_layer.setdefault(layer, []).append(values[-1])
        means = {layer: sum(v) / len(v) for layer, v in by_layer.items()}
        if len(means) > 1:
            best, worst = max(means, key=means.get), min(means, key=means.get)
            parts.append(f"the layer most alike across them is {best} ({means[best]:.3f} on "
                         f"average over the pairs), the least {worst} ({means[worst]:.3f})")
        parted = [result.diverged_at(a, b) for _, a, b in alike if result.same_architecture(a, b)]
        if len(result.iterations) > 1 and parted:
            if all(p is not None for p in parted):
                parts.append(f"every pair of the same architecture had parted (below "
                             f"{DIVERGED}) by iteration {max(parted)}")
            else:
                kept = sum(p is None for p in parted)
                parts.append(f"{kept} of {len(parted)} pairs stayed above {DIVERGED} throughout")
    for a, b in result.pairs:
        if result.same_labels(a, b):
            continue
        matches = ", ".join(f"{layer} -> {other} ({value:.2f})" for layer, (other, value)
                            in result.best_match(last, a, b).items() if other)
        parts.append(f"each layer of {a} and the layer of {b} most like it: {matches}")
    return "; ".join(parts) + "." if parts else ""


def readme(ctx: StepContext) -> str:
    return readme_section(ctx, "Representation similarity between the models",
                          "similarity/summary.md", ["similarity/summary.png"])


STEP = Step(
    "similarity", "layer x layer CKA between every pair of the study's runs on each corpus, at "
    "every shared checkpoint: similarity/<corpus>/cka.csv, cka_<a>_<b>.png, same_layer.png; "
    "similarity/summary.md (how alike the models are, and when they part)",
    run, settings=SimilaritySettings, result=SimilarityResult, compares_runs=True,
    part=part, parts=parts,
    command="lmscope probe similarity", readme=readme,
    report_title="Representation similarity between the models", report_view=similarity_view,
    report_hide=("*/cka_*.png",))
