"""ablate: every component of every model ablated, the loss measured on every corpus of the
study (lmscope probe ablate): which components a model needs on its own domain and not on the
others."""

from __future__ import annotations

from dataclasses import dataclass

from lmscope.analysis import ablation as probe
from lmscope.analysis.ablation import AblationResult
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.render.tables import markdown_table, write_csv
from lmscope.study.plan import RunSpec
from lmscope.study.registry import Step, StepContext, readme_section

HEADER = ["model", "component", "specificity", "se", "own_increase", "own_se",
          "others_increase", "n_windows"]
TOP = 3  # components per model in summary.md


@dataclass
class AblationSettings:
    method: str = "mean"  # zero | mean | resample
    windows: int = 16  # windows of each corpus's validation split

    def __post_init__(self):  # checked when the study file is read, before any training
        probe.check_method(self.method)
        if self.windows < 1 or (self.method == "resample" and self.windows < 2):
            raise LmscopeError(f"[ablate] windows must be at least "
                               f"{2 if self.method == 'resample' else 1} for {self.method} "
                               f"ablation, got {self.windows}")


def part(ctx: StepContext, spec: RunSpec) -> None:
    s = ctx.settings
    probe.compute(ctx.run_dir(spec.name), list(ctx.study.corpora), method=s.method,
                  windows=s.windows, device=ctx.device).save(ctx.out / "ablate" / spec.name)


def run(ctx: StepContext) -> None:
    _across_models(ctx)


def _across_models(ctx: StepContext) -> None:
    """ablate/summary.csv/.md: each model's components by specificity to its own corpus."""
    out = ctx.out / "ablate"
    rows, table = [], []
    for corpus in ctx.study.corpora:
        model = ctx.corpus_dir(corpus).name
        result = AblationResult.load(out / model)
        spec = result.specificity()
        rows += [[model, s.component, s.specificity, s.se, s.own_increase, s.own_se,
                  s.others_increase, s.n_windows] for s in spec]
        table += [[model, s.component, s.specificity, s.se, s.own_increase,
                   s.others_increase, s.n_windows] for s in spec[:TOP]]
        method = result.method
    write_csv(out / "summary.csv", HEADER, rows)
    atomic_write_text(out / "summary.md", (
        "# The components each model needs on its own domain\n\nEach component "
        f"{method}-ablated at the final checkpoint; specificity = the loss increase on the "
        "model's own corpus minus the mean increase on the other corpora (nats per token, ± se "
        f"over the n windows); the {TOP} most specific per model. Every component is in "
        "summary.csv and each model's folder.\n\n" + markdown_table(
            ["model", "component", "specificity", "se", "increase on own", "mean on others",
             "n"], table)))


def readme(ctx: StepContext) -> str:
    return readme_section(ctx, "Component ablation", "ablate/summary.md")


STEP = Step(
    "ablate", "every head, attention layer and MLP (or LSTM / k-gram layer) of every model "
    "ablated, the loss on every corpus: ablate/<model>/ablation.csv, heads.png, layers.png, "
    "ablate/summary.md (the components most specific to each model's domain)",
    run, part=part, settings=AblationSettings, result=AblationResult, per_corpus=True,
    command="lmscope probe ablate", readme=readme, report_title="Component ablation")
