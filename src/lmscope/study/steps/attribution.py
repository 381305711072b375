"""attribution: gradient attribution over the prompts' characters for every model, checkpoint by
checkpoint (lmscope probe attribution), and the models side by side by character class."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmscope.analysis import attribution as probe
from lmscope.analysis import continuation
from lmscope.analysis.attribution import AttributionResult
from lmscope.data.chars import CHAR_CLASSES
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.render import plots
from lmscope.render.tables import markdown_table, write_csv
from lmscope.report.html import attribution_view
from lmscope.study.plan import RunSpec
from lmscope.study.registry import Step, StepContext, readme_section

HEADER = ["model", "method", "char_class", "mean_abs_normalized"]


@dataclass
class AttributionSettings:
    methods: list[str] = field(
        default_factory=lambda: ["grad_norm", "grad_x_input", "integrated_gradients"])
    baseline: str = "zero"  # zero, mean, unk or token:C
    steps: int = 32
    window: int = 1  # occlusion's window, in positions
    generate: int = 0  # > 0: also attribute each token of an N-token continuation of each prompt
    generate_checkpoints: str = "final"  # ... at these checkpoints (all, final, or a list)

    def __post_init__(self):  # checked when the study file is read, before any training
        try:
            probe.check_methods(self.methods)
            probe.check_baseline(self.baseline)
            probe.check_steps(self.steps)
            probe.check_window(self.window)
            if self.generate:
                continuation.check_generate(self.generate)
        except LmscopeError as e:
            raise LmscopeError(f"[attribution] {e}") from None


def part(ctx: StepContext, spec: RunSpec) -> None:
    a = ctx.settings
    device = "cpu" if ctx.device == "auto" else ctx.device
    out = ctx.out / "attribution" / spec.name
    probe.compute(ctx.run_dir(spec.name), ctx.study.prompts, corpora=tuple(ctx.study.corpora),
                  methods=tuple(a.methods), baseline=a.baseline, steps=a.steps,
                  window=a.window, device=device).save(out, skip=ctx.skip_figures)
    if a.generate:
        continuation.compute(ctx.run_dir(spec.name), ctx.study.prompts, generate=a.generate,
                             methods=tuple(a.methods), baseline=a.baseline, steps=a.steps,
                             which=a.generate_checkpoints, device=device, window=a.window,
                             corpora=tuple(ctx.study.corpora)).save(out / "continuation")


def run(ctx: StepContext) -> None:
    _across_models(ctx)


def _across_models(ctx: StepContext) -> None:
    """attribution/by_class_models.csv/.md/.png: each model's final-checkpoint importance of
    each character class (mean |normalized score|, over prompts), per method."""
    out = ctx.out / "attribution"
    rows = []
    for corpus in ctx.study.corpora:
        name = ctx.corpus_dir(corpus).name
        by_class = AttributionResult.load(out / name).by_class
        final = max(r.iteration for r in by_class)
        rows += [[name, r.method, r.char_class, r.mean_abs_normalized]
                 for r in by_class if r.iteration == final]
    write_csv(out / "by_class_models.csv", HEADER, rows)
    models = [ctx.corpus_dir(c).name for c in ctx.study.corpora]
    methods = list(dict.fromkeys(r[1] for r in rows))
    value = {(r[0], r[1], r[2]): r[3] for r in rows}
    md = ["# Attribution by character class, final checkpoints\n\nMean |normalized score| "
          "of a prompt's characters of each class, averaged over prompts.\n"]
    for method in methods:
        md.append(f"\n## {method}\n\n" + markdown_table(
            ["class", *models],
            [[c, *(value.get((m, method, c), "") for m in models)] for c in CHAR_CLASSES]))
    atomic_write_text(out / "by_class_models.md", "".join(md))
    fig, axes = plots.panels(len(methods), title="Importance by character class, per model "
                                                 "(final checkpoints)", width=4.2, height=3.4)
    width = 0.8 / len(models)
    for ax, method in zip(axes, methods, strict=True):
        for i, model in enumerate(models):
            ax.bar([k + i * width for k in range(len(CHAR_CLASSES))],
                   [value.get((model, method, c), 0) for c in CHAR_CLASSES], width,
                   label=f"{model} model")
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(CHAR_CLASSES))],
                      CHAR_CLASSES, rotation=30, ha="right")
        ax.set_title(method)
        ax.set_ylabel("mean |normalized score|")
        ax.grid(axis="y", alpha=0.3)
    plots.legend_below(fig)
    plots.save(fig, out / "by_class_models.png")


def readme(ctx: StepContext) -> str:
    return readme_section(ctx, "Gradient attribution", "attribution/by_class_models.md",
                          ["attribution/by_class_models.png"])


STEP = Step(
    "attribution", "gradient attribution of every prompt's characters, every model and "
    "checkpoint: attribution/<corpus>/attribution.csv (long form), heatmap_<prompt>.png, "
    "by_class.csv/.png, attribution/by_class_models.md; with generate = N, each token of an "
    "N-token continuation attributed: attribution/<corpus>/continuation/", run, part=part,
    settings=AttributionSettings, result=AttributionResult, per_corpus=True, needs_prompts=True,
    command="lmscope probe attribution", readme=readme, report_title="Gradient attribution",
    report_view=attribution_view, report_hide=("heatmap_*.png",))
