"""softmax: next-character confidence of every model on the study's prompts, checkpoint by
checkpoint (lmscope probe softmax), and the models side by side, in- vs out-of-domain."""

from __future__ import annotations

from dataclasses import dataclass

from lmscope.analysis import softmax as probe
from lmscope.analysis.softmax import SoftmaxResult
from lmscope.io import atomic_write_text
from lmscope.metrics.spread import describe
from lmscope.render import plots
from lmscope.render.tables import markdown_table, write_csv
from lmscope.study.plan import RunSpec
from lmscope.study.registry import Step, StepContext, readme_section

# means over the prompts of a domain, with their count and standard deviation (p_expected only
# over the prompts that give an expected character)
HEADER = ["model", "iteration", "domain", "prompts", "entropy_bits", "entropy_sd", "p_expected",
          "p_expected_sd", "p_expected_n"]


@dataclass
class SoftmaxSettings:
    top_k: int = 5


def part(ctx: StepContext, spec: RunSpec) -> None:
    probe.compute(ctx.run_dir(spec.name), ctx.study.prompts, corpora=tuple(ctx.study.corpora),
                  top_k=ctx.settings.top_k, device=ctx.device).save(ctx.out / "softmax" / spec.name)


def run(ctx: StepContext) -> None:
    _across_models(ctx)


def _across_models(ctx: StepContext) -> None:
    """softmax/summary.csv/.md/.png: mean entropy and p(expected), in- vs out-of-domain, per
    model and iteration."""
    out = ctx.out / "softmax"
    rows = []
    for corpus in ctx.study.corpora:
        name = ctx.corpus_dir(corpus).name
        result = SoftmaxResult.load(out / name)
        for it in sorted({r.iteration for r in result.rows}):
            for domain in ("in-domain", "out-of-domain"):
                sel = [r for r in result.rows if r.iteration == it and r.domain == domain]
                if sel:
                    entropy = describe(r.entropy_bits for r in sel)
                    expected = describe(r.p_expected for r in sel)
                    rows.append([name, it, domain, len(sel), entropy.mean, entropy.sd,
                                 expected.mean, expected.sd, expected.n])
    write_csv(out / "summary.csv", HEADER, rows)
    last = {}
    for r in rows:
        last[r[0]] = max(last.get(r[0], 0), r[1])
    atomic_write_text(out / "summary.md",
                      "# Softmax confidence across models\n\nMeans over the prompts of each "
                      "domain at the final checkpoint, with their number (prompts; p_expected_n "
                      "for those that give the expected character) and standard deviation (_sd, "
                      "nan for one prompt); the full curves are in summary.csv.\n\n"
                      + markdown_table(
                          HEADER, [r for r in rows if r[1] == last[r[0]]]))
    fig, axes = plots.panels(2, title="Next-character confidence: in-domain vs out-of-domain "
                                       "prompts, means over prompts", width=5.2, height=3.6)
    handles = []
    for i, name in enumerate(last):
        for domain, style in (("in-domain", "-"), ("out-of-domain", "--")):
            pts = [(r[1], r[4], r[6]) for r in rows if r[0] == name and r[2] == domain]
            if pts:
                its, ent, pexp = zip(*pts, strict=True)
                (line,) = axes[0].plot(its, ent, style, color=f"C{i}", marker=".")
                axes[1].plot(its, pexp, style, color=f"C{i}", marker=".")
                handles.append((line, f"{name} model, {domain}"))
    for ax, label in zip(axes, ("entropy (bits)", "p(expected next character)"), strict=True):
        plots.iteration_axis(ax, [r[1] for r in rows])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    plots.legend_below(fig, [h for h, _ in handles], [label for _, label in handles],
                       ncol=len(last))  # a column per model: in-domain above out-of-domain
    plots.save(fig, out / "summary.png")


def readme(ctx: StepContext) -> str:
    return readme_section(ctx, "Softmax confidence", "softmax/summary.md",
                          ["softmax/summary.png"])


STEP = Step(
    "softmax", "next-character entropy and p(expected) of every model at every checkpoint: "
    "softmax/<corpus>/softmax.csv, entropy.png, expected_prob.png, softmax/summary.md",
    run, part=part, settings=SoftmaxSettings, result=SoftmaxResult, per_corpus=True, needs_prompts=True,
    command="lmscope probe softmax", readme=readme, report_title="Softmax confidence")
