"""matrix: the zero-shot cross-domain loss of every model on every corpus (lmscope matrix)."""

from __future__ import annotations

from lmscope.analysis import cross_domain
from lmscope.report.html import matrix_view
from lmscope.study.registry import Step, StepContext, readme_section


def run(ctx: StepContext) -> None:
    corpora = ctx.study.corpora
    matrix = cross_domain.compute([ctx.corpus_dir(c) for c in corpora], corpora,
                                  device=ctx.device, log=lambda m: ctx.log(f"  {m}"))
    matrix.save(ctx.out / "matrix")


def readme(ctx: StepContext) -> str:
    return readme_section(ctx, "Zero-shot cross-domain matrix", "matrix/matrix.md",
                          ["matrix/matrix.png"])


STEP = Step(
    "matrix", "every model on the validation split of every corpus: matrix/matrix.csv "
    "(nats/char), matrix_bits.csv, oov.csv, matrix.png", run, result=cross_domain.Matrix,
    per_corpus=True, command="lmscope matrix", readme=readme,
    report_title="Zero-shot cross-domain matrix", report_view=matrix_view,
    report_skip=("matrix.md",), report_hide=("matrix.png",))
