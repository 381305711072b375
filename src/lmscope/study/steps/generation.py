"""generation: the quality, speed and generation-time attention of many samples of every run,
checkpoint by checkpoint (lmscope probe generation).

Not to be confused with the `generate` step, which writes one continuation per sampling setting."""

from __future__ import annotations

from dataclasses import dataclass

from lmscope.analysis import generation as probe
from lmscope.generate import DEFAULT_TEMPERATURE
from lmscope.study.plan import RunSpec
from lmscope.study.registry import Step, StepContext


@dataclass
class GenerationQualitySettings:
    """The study file's [generation] table."""

    num_samples: int = 8
    max_new_tokens: int = 200
    prompt: str = "\n"
    temperature: float = DEFAULT_TEMPERATURE
    checkpoints: str = "all"  # all | final


def part(ctx: StepContext, spec: RunSpec) -> None:
    g = ctx.settings
    result = probe.compute(ctx.run_dir(spec.name), num_samples=g.num_samples,
                           prompt=g.prompt, max_new_tokens=g.max_new_tokens,
                           temperature=g.temperature, which=g.checkpoints, device=ctx.device,
                           log=lambda m: ctx.log(f"  {spec.name} {m}"))
    result.save(ctx.out / "generation" / spec.name, title=f"of {spec.name}")


STEP = Step(
    "generation", "distinct-n, repetition, coherence, tokens/s and generation-time attention of "
    "samples at every checkpoint, and their correlations: generation/<run>/generation.md, "
    "correlation_*.md", None, part=part, settings=GenerationQualitySettings,
    result=probe.GenerationResult, command="lmscope probe generation",
    report_title="Generation quality and attention")
