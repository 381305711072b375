"""generate: the same prompt continued greedily and at several nucleus (top-p) thresholds, from
the same seed, for every run (lmscope sample --sweep-top-p); the greedy rows side by side.

Not to be confused with the `generation` step, which measures the quality of many samples."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmscope.analysis import sampling
from lmscope.io import atomic_write_text
from lmscope.render.tables import markdown_table, write_csv
from lmscope.run.checkpoint import load
from lmscope.study.registry import Step, StepContext, readme_section


@dataclass
class TopPSweepSettings:
    """The study file's [generate] table."""

    prompt: str = "\n"
    top_p: list[float] = field(default_factory=lambda: [0.2, 0.5, 0.75, 0.95, 1.0])
    greedy: bool = True
    max_new_tokens: int = 100
    seed: int = 0
    temperature: float = 1.0  # nucleus sampling on the model's own distribution, as defined


def run(ctx: StepContext) -> None:
    g = ctx.settings
    greedy_rows = []
    for spec in ctx.study.runs():
        ckpt = load(ctx.run_dir(spec.name), device=ctx.device)
        sweep = sampling.compute(ckpt, g.prompt, g.top_p, greedy=g.greedy,
                                 max_new_tokens=g.max_new_tokens, seed=g.seed,
                                 temperature=g.temperature)
        sweep.save(ctx.out / "generate" / spec.name)
        greedy_rows.append([spec.name, (g.prompt + sweep.rows[0][1]).replace("\n", " ⏎ ")])
    write_csv(ctx.out / "generate" / "summary.csv", ["run", "generated"], greedy_rows)
    atomic_write_text(ctx.out / "generate" / "summary.md",
                      f"# Generation, every run\n\nPrompt {g.prompt!r}, "
                      f"{'greedy' if g.greedy else f'top-p {g.top_p[0]:g}'}; one table per "
                      "run with every top-p setting in generate/<run>/.\n\n"
                      + markdown_table(["run", "generated"], greedy_rows))


def readme(ctx: StepContext) -> str:
    return readme_section(ctx, "Generation", "generate/summary.md")


STEP = Step(
    "generate", "greedy and nucleus-sampling continuations of one prompt, per run, from the same "
    "seed: generate/<run>/top_p_sweep.md, generate/summary.md", run,
    settings=TopPSweepSettings, result=sampling.SweepResult,
    command="lmscope sample --sweep-top-p", readme=readme, report_title="Generation")
