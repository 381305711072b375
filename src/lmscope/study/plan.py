"""A study's plan: the runs it trains, the config of each, and each step's settings.

`Study` is what a study file says once it is read and checked (study/spec.py): the corpora, the
[model]/[train]/[data]/[track]/[log] tables every run gets, [corpus.NAME] tables, [[variant]]
tables, seeds, the steps to run and each step's settings table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lmscope.config import RunConfig, config_from_dict, load_preset
from lmscope.data.corpora import folder_name
from lmscope.settings import merge

RUN_TABLES = ("model", "train", "data", "track", "log")  # config sections a study sets for its runs


@dataclass
class Variant:
    """One model of an architecture study: a name and its [model] / [train] / [data] settings."""

    name: str
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)


@dataclass
class RunSpec:
    name: str  # the run folder's name under DIR/runs/
    corpus: str
    variant: Variant | None = None
    seed: int | None = None  # train.seed, in a multi-seed study


FIGURES = ("all", "report")  # [study] figures


@dataclass
class Study:
    corpora: list[str]
    name: str = "study"
    preset: str = ""
    joint_vocabulary: bool = True
    prompts: str = ""
    steps: list[str] = field(default_factory=list)  # empty: DEFAULT_STEPS, or VARIANT_STEPS
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # e.g. tokenizer = "bpe"
    track: dict = field(default_factory=dict)  # e.g. attention_every = 100
    log: dict = field(default_factory=dict)  # e.g. tensorboard = true
    seeds: list[int] = field(default_factory=list)  # train every run once per seed
    processes_per_run: int = 1  # > 1: each run data-parallel (DDP through torchrun), a GPU each
    # "all": every figure of every step; "report": only those report.html shows (a step's
    # `report_hide` figures are not drawn)
    figures: str = "all"  # one of FIGURES
    corpus: dict = field(default_factory=dict)  # [corpus.NAME]: model/train/data for one corpus
    variants: list[Variant] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # step name -> its [step] table

    def to_dict(self) -> dict:
        """What study.json holds: every field, the steps' tables under their own names."""
        d = dataclasses.asdict(self)
        settings = d.pop("settings")
        return {**d, **settings}

    def runs(self) -> list[RunSpec]:
        """One run per corpus, or per variant and corpus in an architecture study."""
        if not self.variants:
            runs = [RunSpec(folder_name(c), c) for c in self.corpora]
        else:
            runs = [RunSpec(v.name if len(self.corpora) == 1 else f"{v.name}-{folder_name(c)}", c, v)
                    for v in self.variants for c in self.corpora]
        if not self.seeds:
            return runs
        return [dataclasses.replace(r, name=f"{r.name}-s{seed}", seed=seed)
                for r in runs for seed in self.seeds]

    def run_config(self, run: RunSpec) -> RunConfig:
        """The training config of one run: preset < [model]/[train]/[data] < [corpus.NAME] <
        the variant's tables < the run's seed.
        A variant with another architecture (model.name) starts from that model's defaults."""
        raw = load_preset(self.preset) if self.preset else {}
        variant = run.variant or Variant("")
        name = variant.model.get("name")
        if name is not None and name != raw.get("model", {}).get("name", "gpt"):
            raw = {**raw, "model": {"name": name}}
        raw = merge(raw, {"data": {"corpus": run.corpus}})
        own = self.corpus.get(run.corpus, {})
        for section in RUN_TABLES:
            raw = merge(raw, {section: {**getattr(self, section), **own.get(section, {}),
                                        **getattr(variant, section, {})}})
        if run.seed is not None:
            raw = merge(raw, {"train": {"seed": run.seed}})
        if self.joint_vocabulary and len(self.corpora) > 1:
            raw = merge(raw, {"data": {"vocab_from": [c for c in self.corpora if c != run.corpus]}})
        return config_from_dict(raw)
