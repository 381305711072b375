"""faithfulness: which attribution method to believe, for every model and checkpoint (lmscope
probe faithfulness): deletion and insertion curves, ERASER comprehensiveness and sufficiency and
the randomization check of each method, ranked beside random orders; then the models side by
side, and whether the attribution step's character classes hold under the most faithful one."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from lmscope.analysis import faithfulness as probe
from lmscope.analysis.attribution import (
    check_baseline,
    check_choice,
    check_methods,
    check_steps,
)
from lmscope.analysis.faithfulness import RANDOM, FaithfulnessResult
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.render import plots
from lmscope.render.tables import markdown_table, read_csv, write_csv
from lmscope.study.plan import RunSpec
from lmscope.study.registry import Step, StepContext, readme_section

HEADER = ["model", "checkpoint", "iteration", "method", "rank", "faithfulness_score",
          "deletion_auc", "insertion_auc", "comprehensiveness", "sufficiency",
          "randomization_abs_spearman"]
WEIGHT_BLIND = 0.5  # a mean |rho| above this: the method's scores barely depend on the weights


@dataclass
class FaithfulnessSettings:
    methods: list[str] = field(default_factory=lambda: list(probe.DEFAULT_METHODS))
    baseline: str = "zero"  # zero, mean, unk or token:C
    steps: int = 32
    checkpoints: str = "all"  # all, final, or a list such as "0,100,final"
    random_orders: int = 16
    order: str = "signed"  # the methods' orders: by signed score, or by |score| ("abs")

    def __post_init__(self):  # checked when the study file is read, before any training
        try:
            check_methods(self.methods)
            check_baseline(self.baseline)
            check_steps(self.steps)
            check_choice("order", self.order, probe.ORDERS)
        except LmscopeError as e:
            raise LmscopeError(f"[faithfulness] {e}") from None
        if isinstance(self.random_orders, bool) or not isinstance(self.random_orders, int) \
                or self.random_orders < 1:
            raise LmscopeError("[faithfulness] random_orders must be a whole number of at least "
                               f"1, got {self.random_orders!r}")


def part(ctx: StepContext, spec: RunSpec) -> None:
    s = ctx.settings
    probe.compute(ctx.run_dir(spec.name), ctx.study.prompts, corpora=tuple(ctx.study.corpora),
                  methods=tuple(s.methods), baseline=s.baseline, steps=s.steps,
                  which=s.checkpoints, random_orders=s.random_orders, order=s.order,
                  device="cpu" if ctx.device == "auto" else ctx.device,
                  ).save(ctx.out / "faithfulness" / spec.name, skip=ctx.skip_figures)


def run(ctx: StepContext) -> None:
    _across_models(ctx)


def _across_models(ctx: StepContext) -> None:
    """faithfulness/summary.csv/.md/.png: every model's ranking at every checkpoint, the final
    rankings side by side, the most faithful method over training, and a reading."""
    out = ctx.out / "faithfulness"
    results = {ctx.corpus_dir(c).name: FaithfulnessResult.load(out / ctx.corpus_dir(c).name)
               for c in ctx.study.corpora}
    rows = [[model, r.checkpoint, r.iteration, r.method, r.rank, r.faithfulness_score,
             r.deletion_auc, r.insertion_auc, r.comprehensiveness, r.sufficiency,
             r.randomization_abs_spearman]
            for model, result in results.items() for r in result.ranking]
    write_csv(out / "summary.csv", HEADER, rows)

    models = list(results)
    methods = list(dict.fromkeys(r.method for res in results.values() for r in res.ranking))
    final = {m: {r.method: r for r in results[m].ranking_at()} for m in models}
    table = markdown_table(
        ["method", *(f"{m} model" for m in models)],
        [[method, *(_cell(final[m].get(method)) for m in models)] for method in methods])
    iterations = sorted({it for res in results.values() for _, it in res.iterations})
    tops = {m: {it: results[m].most_faithful((name, it)) for name, it in results[m].iterations}
            for m in models}
    over_training = markdown_table(
        ["iteration", *(f"{m} model" for m in models)],
        [[it, *(tops[m].get(it, "") for m in models)] for it in iterations])
    atomic_write_text(out / "summary.md", (
        "# Which attribution method to believe\n\n"
        "Each method's faithfulness score (insertion AUC - deletion AUC of p(target) as tokens "
        "are restored or removed in the method's order, mean over the prompts; higher is more "
        "faithful) and its rank at each model's final checkpoint, the random order's beside "
        "them. faithfulness/<model>/ has every measure (comprehensiveness, sufficiency, the "
        "randomization check) at every checkpoint.\n\n" + table
        + "\n\nThe most faithful method at each checkpoint:\n\n" + over_training
        + "\n\n**Reading** (written from the numbers in faithfulness/ and attribution/).\n\n"
        + "\n".join(f"- {line}" for line in _reading(ctx, results, models)) + "\n"))

    fig, axes = plots.panels(len(models), title="Faithfulness score of each attribution method "
                             "over training", width=4.2, height=3.4)
    for ax, model in zip(axes, models, strict=True):
        result = results[model]
        xs = [it for _, it in result.iterations]
        for i, method in enumerate(methods):
            ys = [next((r.faithfulness_score for r in result.ranking_at(point)
                        if r.method == method), math.nan) for point in result.iterations]
            style = dict(color="grey", ls="--") if method == RANDOM else dict(color=f"C{i}")
            ax.plot(xs, ys, marker=".", label=method, **style)
        plots.iteration_axis(ax, xs, label="iteration")
        ax.set_title(f"{model} model", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("insertion AUC - deletion AUC")
    plots.legend_below(fig)
    plots.save(fig, out / "summary.png")


def _cell(row) -> str:
    return "" if row is None else f"{row.faithfulness_score:.4f} ({row.rank})"


def _reading(ctx: StepContext, results: dict[str, FaithfulnessResult], models) -> list[str]:
    """Sentences from the numbers: the most faithful method at the end and over training, the
    methods the randomization check flags, and the character classes under the winner."""
    lines = []
    winners = {m: results[m].most_faithful() for m in models}
    counts = Counter(winners.values())
    best, n = counts.most_common(1)[0]
    lines.append(f"At the final checkpoints the most faithful method is {best} for {n} of "
                 f"{len(models)} models" + ("" if n == len(models) else " (" + ", ".join(
                     f"{w} for the {m} model" for m, w in winners.items() if w != best) + ")")
                 + ".")
    for model in models:
        result = results[model]
        points = result.iterations
        changes = [(it, result.most_faithful((name, it))) for name, it in points]
        others = sorted({w for _, w in changes} - {winners[model]})
        final = result.ranking_at()
        random_rank = next(r.rank for r in final if r.method == RANDOM)
        below = [r.method for r in final if r.rank > random_rank]
        text = (f"The {model} model: {winners[model]} ranks first at "
                f"{sum(w == winners[model] for _, w in changes)} of {len(points)} checkpoints")
        if others:
            first = {w: next(it for it, x in changes if x == w) for w in others}
            text += " (" + ", ".join(f"{w} from iteration {it}" for w, it in first.items()) + ")"
        text += "; at the final checkpoint " + (
            f"{', '.join(below)} {'ranks' if len(below) == 1 else 'rank'} below random "
            "orders." if below
            else "every method ranks above random orders.")
        lines.append(text)
    blind = sorted({(m, r.method) for m in models for r in results[m].ranking_at()
                    if r.method != RANDOM and r.randomization_abs_spearman > WEIGHT_BLIND})
    if blind:
        lines.append("The randomization check flags " + ", ".join(
            f"{method} on the {model} model" for model, method in blind) + f" (mean |rho| above "
            f"{WEIGHT_BLIND} between the trained and a re-initialised model's scores).")
    else:
        lines.append(f"Every method passes the randomization check at the final checkpoints "
                     f"(mean |rho| at most {WEIGHT_BLIND} between the trained and a "
                     "re-initialised model's scores).")
    by_class = ctx.out / "attribution" / "by_class_models.csv"
    if by_class.is_file():
        values: dict[tuple[str, str], dict[str, float]] = {}
        for r in read_csv(by_class):
            values.setdefault((r["model"], r["method"]), {})[r["char_class"]] = float(
                r["mean_abs_normalized"])
        for model in models:
            classes = values.get((model, winners[model]))
            if not classes:
                continue
            order = sorted(classes, key=lambda c: -classes[c])
            lines.append(f"Under {winners[model]}, the {model} model's character classes rank "
                         f"{' > '.join(order)} (attribution/by_class_models.csv).")
    return lines


def readme(ctx: StepContext) -> str:
    return readme_section(ctx, "Which attribution to believe", "faithfulness/summary.md",
                          ["faithfulness/summary.png"])


STEP = Step(
    "faithfulness", "the faithfulness of each attribution method, every model and checkpoint: "
    "faithfulness/<corpus>/ranking.csv (deletion and insertion AUC, comprehensiveness, "
    "sufficiency, randomization check, ranked beside random orders), curves.png, "
    "faithfulness/summary.md", run, part=part, settings=FaithfulnessSettings,
    result=FaithfulnessResult, per_corpus=True, needs_prompts=True,
    command="lmscope probe faithfulness", readme=readme,
    report_title="Which attribution to believe", report_hide=("*/curves.png",),
    reads=("attribution",))  # its reading quotes the attribution step's character classes
