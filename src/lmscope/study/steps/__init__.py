"""The study steps, one module each, in the order a study runs them. To add a step, write its
module (a Step named STEP; see study/registry.py and docs/adding-a-probe.md) and add it here."""

from __future__ import annotations

from lmscope.study.registry import Step
from lmscope.study.steps import (
    ablate,
    attention,
    attribution,
    compare,
    dynamics,
    faithfulness,
    generate,
    generation,
    heads,
    lens,
    matrix,
    seeds,
    similarity,
    softmax,
    stats,
    train,
    transfer,
)

STEPS: tuple[Step, ...] = (
    stats.STEP,
    train.STEP,
    matrix.STEP,
    transfer.STEP,
    softmax.STEP,
    attribution.STEP,
    faithfulness.STEP,
    lens.STEP,
    ablate.STEP,
    dynamics.STEP,
    similarity.STEP,
    compare.STEP,
    generate.STEP,
    attention.STEP,
    generation.STEP,
    heads.STEP,
    seeds.STEP,  # after generation, whose sampling speeds it averages
)


def by_name() -> dict[str, Step]:
    """The registered steps by name."""
    return {step.name: step for step in STEPS}


def settings_tables() -> dict[str, type]:
    """Step name -> the dataclass of its [<name>] table, for the steps that have one."""
    return {step.name: step.settings for step in STEPS if step.settings is not None}

DEFAULT_STEPS = ("stats", "train", "matrix", "transfer", "softmax", "attribution")
VARIANT_STEPS = ("stats", "train", "compare", "generate", "attention")  # [[variant]] studies
