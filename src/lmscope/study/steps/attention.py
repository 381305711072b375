"""attention: the attention maps of one prompt for every run with attention, at every kept
checkpoint (lmscope probe attention --checkpoints all): the report's hover view."""

from __future__ import annotations

from dataclasses import dataclass

from lmscope.analysis import attention as probe
from lmscope.report.html import attention_view
from lmscope.run.checkpoint import load
from lmscope.study.plan import RunSpec
from lmscope.study.registry import Step, StepContext


@dataclass
class AttentionSettings:
    prompt: str = "\n"
    layer: int = -1
    heads: str = ""  # all


def part(ctx: StepContext, spec: RunSpec) -> None:
    a = ctx.settings
    ckpt = load(ctx.run_dir(spec.name), device=ctx.device)
    if not hasattr(ckpt.model, "forward_with_attention"):
        ctx.log(f"  {spec.name}: {ckpt.model_name} has no attention, skipped")
        return
    probe.compute(ctx.run_dir(spec.name), a.prompt, layer=a.layer, heads=a.heads or None,
                  which="all", device=ctx.device).save(
        ctx.out / "attention" / spec.name, skip=ctx.skip_figures)


STEP = Step(
    "attention", "attention maps of a prompt for every run with attention: "
    "attention/<run>/attention_L<l>.png, summary.md (per-head scores), attention.json (every "
    "layer and head at every checkpoint)", None, part=part, settings=AttentionSettings,
    result=probe.AttentionResult, command="lmscope probe attention --checkpoints all",
    report_title="Attention maps", report_view=attention_view,
    report_hide=("attention_L*_H*.png",))
