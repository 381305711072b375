"""compare: the runs' loss curves overlaid, early-stopping points and fit verdicts
(lmscope compare)."""

from __future__ import annotations

from lmscope.analysis import compare
from lmscope.study.registry import Step, StepContext, readme_section


def run(ctx: StepContext) -> None:
    runs = ctx.study.runs()
    compare.compute([ctx.run_dir(r.name) for r in runs],
                    names=[r.name for r in runs]).save(ctx.out / "compare")


def readme(ctx: StepContext) -> str:
    return readme_section(ctx, "Run comparison", "compare/compare.md", ["compare/curves.png"])


STEP = Step(
    "compare", "curves of every run overlaid, minimum validation loss and where, final gap and "
    "an under-/good/over-fit verdict: compare/compare.md, curves.png", run,
    result=compare.CompareResult, command="lmscope compare", readme=readme,
    report_title="Run comparison")
