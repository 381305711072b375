"""seeds: means over the seeds of every run with standard errors, and curves with error bands
(the multi-seed studies)."""

from __future__ import annotations

from pathlib import Path

from lmscope.analysis import seeds
from lmscope.data.corpora import folder_name
from lmscope.study.registry import Step, StepContext, readme_section

FIGURES = ("train_loss", "val_loss", "attention_metrics", "layer_similarity")


def run(ctx: StepContext) -> None:
    groups: dict[str, dict[str, list[Path]]] = {}
    for spec in ctx.study.runs():
        variant = spec.variant.name if spec.variant else ctx.study.name
        groups.setdefault(folder_name(spec.corpus), {}).setdefault(variant, []).append(
            ctx.run_dir(spec.name))
    generation = ctx.out / "generation"
    seeds.compute(groups, generation_dir=generation if generation.is_dir() else None).save(
        ctx.out / "seeds")


def readme(ctx: StepContext) -> str:
    return readme_section(ctx, "Means over seeds", "seeds/results.md",
                          [f"seeds/{kind}_{ctx.corpus_dir(c).name}.png"
                           for c in ctx.study.corpora for kind in FIGURES])


STEP = Step(
    "seeds", "final train loss, best val loss, training time and sampling speed as means over "
    "seeds +- standard error, curves with error bands: seeds/results.md, results.json",
    run, result=seeds.SeedsResult, command="lmscope study --seeds", readme=readme,
    report_title="Means over seeds", reads=("generation",))
