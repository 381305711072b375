"""Multi-seed results: the same runs trained with several seeds, reported as means with standard
errors (the AI-Scientist nanoGPT template's final_info and plots, from ordinary run folders).

`compute(groups)` takes, for each dataset, the runs of each variant (one run folder per seed) and
returns a `SeedsResult`, whose `save(dir)` writes (`load(dir)` reads results.json back):

    results.json                  per dataset (and variant, when a dataset has several):
                                  final_train_loss, best_val_loss, total_train_time,
                                  avg_inference_tokens_per_second, each as <name>_mean and
                                  <name>_stderr, plus the per-seed values
    results.md                    the same as a table
    train_loss_<dataset>.png      train loss per iteration: mean over seeds, shaded +-1 SE
    val_loss_<dataset>.png        validation loss estimates, the same way
    attention_metrics_<dataset>.png  attention entropy and 90% span per layer over iterations
    layer_similarity_<dataset>.png   Jensen-Shannon divergence (and cosine similarity) between
                                  the head-averaged maps of each pair of layers, over iterations
    correlation_<dataset>.csv/.md  attention metrics vs validation loss, every seed's points pooled

The standard error of n values is their sample standard deviation (ddof 1) over sqrt(n); with one
seed it is left empty. Curves are averaged at the iterations every seed has.

Where the numbers come from, per run: final_train_loss is the train-loss estimate of the last
evaluation (metrics.jsonl), best_val_loss the lowest validation estimate (summary.json),
total_train_time the run's wall-clock training seconds (summary.json), and
avg_inference_tokens_per_second the sampling speed of the final checkpoint measured by the
generation step (generation/<run>/generation.csv; empty when that step did not run).
`aggregate_seeds(groups, out_dir)` is `compute`, then `save`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmscope.analysis.correlation import (
    attention_loss_correlations,
    attention_with_loss,
    write_correlations,
)
from lmscope.analysis.generation import GenerationResult
from lmscope.io import atomic_write_json, atomic_write_text
from lmscope.metrics.spread import describe, is_number
from lmscope.render import plots
from lmscope.render.tables import markdown_table
from lmscope.run.run_dir import Metrics, RunDir

QUANTITIES = ("final_train_loss", "best_val_loss", "total_train_time",
              "avg_inference_tokens_per_second")


def mean_stderr(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard error (ddof 1) of the finite values; None where undefined."""
    d = describe(values)
    return (d.mean if d.n else None), (d.stderr if d.n > 1 else None)


@dataclass
class RunRows:
    """What the aggregation reads of one run, read once: metrics.jsonl and attention.jsonl."""

    metrics: Metrics
    attention: list[dict]

    @classmethod
    def read(cls, run: Path) -> RunRows:
        folder = RunDir(run)
        return cls(folder.metrics(), folder.attention())


def run_figures(run_dir: Path, rows: RunRows, generation_dir: Path | None = None) -> dict:
    """The four quantities of one run (see the module docstring); `generation_dir` is where the
    generation step wrote this run's result."""
    evals = rows.metrics.evaluations
    summary = RunDir(run_dir).summary()
    speed = None
    if generation_dir is not None and (generation_dir / "generation.csv").is_file():
        table = GenerationResult.load(generation_dir).checkpoints
        if table:
            speed = float(table[-1]["tokens_per_s"])  # the last checkpoint: the final model
    return {"final_train_loss": evals[-1].train_loss if evals else None,
            "best_val_loss": summary.best_val_loss,
            "total_train_time": summary.elapsed_s,
            "avg_inference_tokens_per_second": speed}


def _curve(runs: Sequence[RunRows], pick) -> tuple[list[int], np.ndarray]:
    """Per-seed curves (iteration -> value) aligned on the iterations all seeds have."""
    curves = [dict(pick(run)) for run in runs]
    shared = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return shared, np.array([[c[i] for i in shared] for c in curves], dtype=np.float64)


def _losses(kind: str):
    """The finite training losses (kind "train") or validation estimates (kind "eval")."""
    def pick(run: RunRows):
        points = (run.metrics.train_losses if kind == "train" else
                  [(e.iter, e.val_loss) for e in run.metrics.evaluations])
        return [(it, loss) for it, loss in points if math.isfinite(loss)]
    return pick


def _attention(key, layer=None, pair=None):
    def pick(run: RunRows):
        if layer is not None:
            return [(r["iter"], float(np.mean(r["layers"][layer][key]))) for r in run.attention]
        i, j = pair
        return [(r["iter"], r[key][i][j]) for r in run.attention]
    return pick


@dataclass
class SeedsResult:
    """Means over seeds: `results` is what results.json holds, `table` the rows of results.md."""

    results: dict
    table: list[list] = field(default_factory=list)
    # dataset -> variant -> each seed's rows, for the figures; empty after load
    runs: dict[str, dict[str, list[RunRows]]] = field(default_factory=dict, repr=False)

    def save(self, out_dir) -> dict:
        out_dir = Path(out_dir)
        for dataset, variants in self.runs.items():
            _plot_dataset(dataset, variants, out_dir)
            rows = [r for runs in variants.values() for run in runs
                    for r in attention_with_loss(run.attention, run.metrics)]
            if rows:
                write_correlations(
                    attention_loss_correlations(rows), out_dir, f"correlation_{dataset}",
                    f"{dataset}: attention metrics vs validation loss (all seeds' points)")
        atomic_write_json(out_dir / "results.json", self.results)
        drops = [f"- {dataset}{'' if 'variant' in entry else ' ' + variant}: {d['run']} left out "
                 f"of {d['quantity']}: {d['why']}\n"
                 for dataset, variants in self.results.items()
                 for variant, entry in (variants.items() if "variant" not in variants
                                        else [(variants["variant"], variants)])
                 for d in entry.get("dropped", [])]
        atomic_write_text(out_dir / "results.md", "# Means over seeds (+- standard error)\n\n" +
                          markdown_table(["dataset", "variant", "seeds", *QUANTITIES], self.table)
                          + ("\nSeeds left out of a mean (seeds counts only those used):\n\n"
                             + "".join(drops) if drops else ""))
        return self.results

    @classmethod
    def load(cls, out_dir) -> SeedsResult:
        """results.json."""
        return cls(json.loads((Path(out_dir) / "results.json").read_text(encoding="utf-8")))


def aggregate_seeds(groups: Mapping[str, Mapping[str, Sequence[Path]]], out_dir: str | Path, *,
                    generation_dir: Path | None = None) -> dict:
    """`compute`, then `save` into out_dir. Returns what results.json holds."""
    return compute(groups, generation_dir=generation_dir).save(out_dir)


def compute(groups: Mapping[str, Mapping[str, Sequence[Path]]], *,
            generation_dir: Path | None = None) -> SeedsResult:
    """groups: dataset -> variant -> run folders (one per seed); `generation_dir` holds the
    generation step's results, one folder per run."""
    results: dict = {}
    table = []
    all_runs = {}
    for dataset, folders in groups.items():
        results[dataset] = {}
        variants = {v: [RunRows.read(run) for run in runs] for v, runs in folders.items()}
        all_runs[dataset] = variants
        for variant, runs in folders.items():
            per_seed = [run_figures(run, rows, generation_dir / run.name
                                    if generation_dir else None)
                        for run, rows in zip(runs, variants[variant], strict=True)]
            dropped = _dropped(runs, per_seed)
            used = len(runs) - len({d["run"] for d in dropped})
            entry: dict = {"n_seeds": used, "runs": [run.name for run in runs],
                           "dropped": dropped}
            for q in QUANTITIES:
                mean, se = mean_stderr([s[q] for s in per_seed])
                entry[f"{q}_mean"], entry[f"{q}_stderr"] = mean, se
                entry[f"{q}_n"] = describe(s[q] for s in per_seed).n
                entry[q] = [s[q] if s[q] is None or is_number(s[q]) else repr(s[q])
                            for s in per_seed]  # nan as text: results.json stays valid JSON
            results[dataset][variant] = entry
            table.append([dataset, variant, used if used == len(runs) else
                          f"{used} of {len(runs)}",
                          *(_pm(entry[f"{q}_mean"], entry[f"{q}_stderr"]) for q in QUANTITIES)])
        if len(variants) == 1:  # one model per dataset: its figures directly under the dataset
            (variant,) = variants
            results[dataset] = {"variant": variant, **results[dataset][variant]}
    return SeedsResult(results, table, all_runs)


def _dropped(runs: Sequence[Path], per_seed: list[dict]) -> list[dict]:
    """The seeds left out of a mean, and why: a value that is not a finite number (a diverged
    run's nan loss), or one missing where other seeds have it. A quantity no seed has (sampling
    speed without the generation step) leaves nobody out."""
    out = []
    for q in QUANTITIES:
        if all(s[q] is None for s in per_seed):
            continue
        for run, s in zip(runs, per_seed, strict=True):
            if not is_number(s[q]):
                why = "missing" if s[q] is None else f"not a finite number ({s[q]!r})"
                out.append({"run": run.name, "quantity": q, "why": why})
    return out


def _pm(mean, se) -> str:
    if mean is None:
        return ""
    return f"{mean:.4g}" + (f" ± {se:.2g}" if se is not None else "")


def _plot_dataset(dataset: str, variants: Mapping[str, Sequence[RunRows]], out_dir: Path) -> None:
    for kind, name, label in (("train", "train_loss", "train loss"),
                              ("eval", "val_loss", "validation loss")):
        fig, axes = plots.panels(1, title=f"{dataset}: {label}, mean over seeds +- 1 SE",
                                 width=7, height=4)
        for i, (variant, runs) in enumerate(variants.items()):
            iters, values = _curve(runs, _losses(kind))
            plots.mean_band(axes[0], iters, values, f"{variant} ({len(runs)} seeds)", f"C{i}")
        plots.finish_axes(axes, ylabel=f"{label} (nats/token)")
        plots.save(fig, out_dir / f"{name}_{dataset}.png")

    runs_all = [run for runs in variants.values() for run in runs]
    n_layers = next((int(r.attention[0]["n_layers"]) for r in runs_all if r.attention), 0)
    fig, axes = plots.panels(2, title=f"{dataset}: attention over training, per layer "
                                      "(mean over heads; +- 1 SE over seeds)")
    for i, (variant, runs) in enumerate(variants.items()):
        for layer in range(n_layers):
            style = f"C{layer}" if len(variants) == 1 else f"C{i}"
            tag = f"layer {layer}" if len(variants) == 1 else f"{variant} L{layer}"
            for ax, key in zip(axes, ("entropy_bits", "span90"), strict=True):
                iters, values = _curve(runs, _attention(key, layer=layer))
                plots.mean_band(ax, iters, values, tag, style)
    axes[0].set_title("attention entropy (bits)")
    axes[1].set_title("90% attention span (tokens)")
    plots.finish_axes(axes)
    plots.save(fig, out_dir / f"attention_metrics_{dataset}.png")

    fig, axes = plots.panels(2, title=f"{dataset}: similarity of layers' head-averaged "
                                      "attention (+- 1 SE over seeds)")
    pairs = [(a, b) for a in range(n_layers) for b in range(a + 1, n_layers)]
    for k, (a, b) in enumerate(pairs):
        for ax, key in zip(axes, ("layer_js", "layer_cosine"), strict=True):
            for runs in variants.values():
                iters, values = _curve(runs, _attention(key, pair=(a, b)))
                plots.mean_band(ax, iters, values, f"L{a}-L{b}", f"C{k % 10}")
    axes[0].set_title("Jensen-Shannon divergence (bits)")
    axes[1].set_title("cosine similarity")
    plots.finish_axes(axes)
    plots.save(fig, out_dir / f"layer_similarity_{dataset}.png")
