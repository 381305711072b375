"""matrix: the zero-shot cross-domain loss of every model on every corpus (lmscope matrix)."""

from __future__ import annotations

from lmscope.analysis import cross_domain
from lmscope.report.html import matrix_view
from lmscope.study.plan import RunSpec
from lmscope.study.registry import Step, StepContext, readme_section


def part(ctx: StepContext, spec: RunSpec) -> None:
    """One model's row (its own unit, beside the other models' rows with --jobs N)."""
    row = cross_domain.compute_row(ctx.run_dir(spec.name), ctx.study.corpora, label=spec.name,
                                   device=ctx.device, log=lambda m: ctx.log(f"  {m}"))
    row.save(ctx.out / "matrix" / spec.name / "row.json")


def run(ctx: StepContext) -> None:
    rows = [cross_domain.MatrixRow.load(ctx.out / "matrix" / spec.name / "row.json")
            for spec in ctx.study.runs()]  # where `part` wrote them, in the corpora's order
    cross_domain.from_rows(rows).save(ctx.out / "matrix", skip=ctx.skip_figures)


def readme(ctx: StepContext) -> str:
    return readme_section(ctx, "Zero-shot cross-domain matrix", "matrix/matrix.md",
                          ["matrix/matrix.png"])


STEP = Step(
    "matrix", "every model on the validation split of every corpus: matrix/matrix.csv "
    "(nats/char), matrix_bits.csv, oov.csv, matrix.png", run, result=cross_domain.Matrix,
    part=part,
    per_corpus=True, command="lmscope matrix", readme=readme,
    report_title="Zero-shot cross-domain matrix", report_view=matrix_view,
    report_skip=("matrix.md",), report_hide=("matrix.png",))
