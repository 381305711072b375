"""Learning dynamics over a run's checkpoints: how each layer's weights, gradients and
representations change, and when each layer settles.

At every selected checkpoint, on one fixed set of token windows of a corpus split (evenly spaced,
the same at every checkpoint):

- weights: lmscope.metrics.matrices.matrix_statistics of every parameter (2-D: Frobenius and
  spectral norm, effective rank, proportional effective rank, condition number, Gini and Hoyer
  sparsity; 1-D gains and biases: the norm and the two sparsities) and, for a GPT, of each
  head's slices of the attention matrices, named as in TransformerLens: W_Q, W_K, W_V (the
  head's d_head rows of the query/key/value projection, (d_head, d_model)) and W_O (the head's
  d_head columns of the output projection, (d_model, d_head));
- gradients: the same statistics of the gradient of the mean next-token loss on the windows
  (lmscope.metrics.dynamics.probe_gradients: eval mode, unknown targets left out);
- activations: the same statistics of each layer's representation (model.layer_points(): the
  embeddings, then each layer's output) as a (tokens, width) matrix over all the windows'
  positions;
- similarity to the reference checkpoint (the last one selected, the final with "all"): linear
  and debiased CKA, SVCCA (99% of the variance kept) and PWCCA (this checkpoint's activations
  weighted) between each layer's activations here and the same layer's there
  (lmscope.metrics.similarity). A layer has *settled* at the first iteration from which its CKA
  to the reference stays at or above SETTLED (0.9).

These are pico-analyze's learning-dynamics metrics (github.com/pico-lm/pico-analyze: CKA and
PWCCA to a target checkpoint, effective rank, condition number, norms, Gini and Hoyer sparsity of
weights, activations and gradients), computed here from the checkpoints alone, for every
architecture, on text the user chooses. A run trained with track.dynamics_every also holds the
cheap ones at many more iterations in RUN/dynamics.jsonl (train/tracking.py); `compute` reads
them along (`tracked`) and `save` draws them.

`compute(run, corpus)` returns a `DynamicsResult`; `save(dir)` writes dynamics.csv (one row per
checkpoint, kind, name and head), similarity.csv (checkpoint x layer), tracked.csv (when the run
tracked), the figures weights.png, gradients.png, activations.png, similarity.png,
during_training.png and summary.md; `load(dir)` reads the tables back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmscope.api import run_with_cache
from lmscope.errors import LmscopeError
from lmscope.evaluate import corpus_windows
from lmscope.io import atomic_write_text, read_jsonl
from lmscope.metrics.dynamics import layer_order, parameter_layer, probe_gradients
from lmscope.metrics.matrices import STATISTICS, matrix_statistics
from lmscope.metrics.similarity import debiased_cka, linear_cka, pwcca, svcca
from lmscope.render import plots
from lmscope.render.progress import progress as _progress
from lmscope.render.tables import markdown_table, read_csv, write_csv
from lmscope.run.checkpoint import checkpoint_iteration, load, select_checkpoints
from lmscope.run.run_dir import RunDir

SETTLED = 0.9  # CKA to the reference from which a layer counts as settled
KINDS = ("weights", "heads", "gradients", "activations")
HEADER = ["checkpoint", "iteration", "kind", "name", "layer", "head", *STATISTICS]
SIMILARITY = ("cka", "debiased_cka", "svcca", "pwcca")
SIMILARITY_HEADER = ["checkpoint", "iteration", "reference", "layer", *SIMILARITY]
TRACKED_HEADER = ["iteration", "statistic", "name", "layer", "value"]
HEAD_MATRICES = ("W_Q", "W_K", "W_V", "W_O")


@dataclass
class StatisticsRow:
    """The statistics of one tensor at one checkpoint: a parameter, a head's slice of one, a
    parameter's probe gradient, or a layer's activations (kind); missing statistics are NaN."""

    checkpoint: str
    iteration: int
    kind: str
    name: str
    layer: str
    head: int | None
    values: dict[str, float]

    def cells(self) -> list:
        return [self.checkpoint, self.iteration, self.kind, self.name, self.layer,
                "" if self.head is None else self.head,
                *(self.values.get(s, math.nan) for s in STATISTICS)]


@dataclass
class SimilarityRow:
    """One layer's representation at one checkpoint against the same layer at the reference."""

    checkpoint: str
    iteration: int
    reference: str
    layer: str
    values: dict[str, float]

    def cells(self) -> list:
        return [self.checkpoint, self.iteration, self.reference, self.layer,
                *(self.values[s] for s in SIMILARITY)]


@dataclass
class TrackedRow:
    """One number of RUN/dynamics.jsonl: a statistic of a matrix or a layer at an iteration."""

    iteration: int
    statistic: str
    name: str
    layer: str
    value: float

    def cells(self) -> list:
        return [self.iteration, self.statistic, self.name, self.layer, self.value]


@dataclass
class DynamicsResult:
    run: str
    corpus: str
    n_tokens: int
    rows: list[StatisticsRow]
    similarity: list[SimilarityRow]
    tracked: list[TrackedRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{Path(self.run).name} on {self.corpus}" if self.run else self.corpus

    @property
    def iterations(self) -> list[int]:
        return sorted({r.iteration for r in self.rows})

    @property
    def layers(self) -> list[str]:
        """The activation layers, in model order."""
        return sorted({r.layer for r in self.similarity}, key=layer_order)

    def series(self, kind: str, name: str, statistic: str, head: int | None = None
               ) -> tuple[list[int], list[float]]:
        """(iterations, values) of one statistic of one tensor over the checkpoints."""
        points = [(r.iteration, r.values.get(statistic, math.nan)) for r in self.rows
                  if r.kind == kind and r.name == name and r.head == head]
        return [i for i, _ in points], [v for _, v in points]

    def similarity_series(self, layer: str, measure: str = "cka"
                          ) -> tuple[list[int], list[float]]:
        points = [(r.iteration, r.values[measure]) for r in self.similarity if r.layer == layer]
        return [i for i, _ in points], [v for _, v in points]

    def settled_at(self, layer: str, threshold: float = SETTLED) -> int | None:
        """The first iteration from which the layer's CKA to the reference stays >= threshold,
        the reference itself left out (its CKA to itself is 1): None when the last checkpoint
        before the reference is below the threshold, or there is none."""
        rows = [r for r in self.similarity if r.layer == layer and r.checkpoint != r.reference]
        settled = None  # the start of the last run of values at or above the threshold
        for r in rows:
            below = not r.values["cka"] >= threshold  # NaN counts as below
            settled = None if below else (r.iteration if settled is None else settled)
        return settled

    def save(self, out_dir, *, skip: Sequence[str] = ()) -> dict[str, str]:
        """Write the tables, figures (but those matching a pattern of `skip`: plots.drawn) and
        summary.md; returns their paths by kind."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {
            "dynamics_csv": write_csv(out / "dynamics.csv", HEADER, [r.cells() for r in self.rows]),
            "similarity_csv": write_csv(out / "similarity.csv", SIMILARITY_HEADER,
                                        [r.cells() for r in self.similarity])}
        if self.tracked:
            files["tracked_csv"] = write_csv(out / "tracked.csv", TRACKED_HEADER,
                                             [r.cells() for r in self.tracked])
        def drawn(name: str) -> bool:
            return plots.drawn(out / name, skip)

        if self.rows and drawn("weights.png"):
            files["weights_png"] = _plot_matrices(self, "weights", out / "weights.png",
                                                  ("frobenius_norm", "effective_rank", "hoyer"))
        if self.rows and drawn("gradients.png"):
            files["gradients_png"] = _plot_matrices(self, "gradients", out / "gradients.png",
                                                    ("frobenius_norm", "effective_rank"))
        if self.rows and drawn("activations.png"):
            files["activations_png"] = _plot_activations(self, out / "activations.png")
        if self.similarity and drawn("similarity.png"):
            files["similarity_png"] = _plot_similarity(self, out / "similarity.png")
        if self.tracked and drawn("during_training.png"):
            files["during_training_png"] = _plot_tracked(self, out / "during_training.png")
        atomic_write_text(out / "summary.md", _summary(self))
        files["summary_md"] = out / "summary.md"
        return {k: str(v) for k, v in files.items()}

    @classmethod
    def load(cls, out_dir) -> DynamicsResult:
        """The tables `save` wrote (numbers to 6 significant digits); the run's name, corpus and
        token count are not in them and come back empty."""
        out = Path(out_dir)
        rows = [StatisticsRow(r["checkpoint"], int(r["iteration"]), r["kind"], r["name"],
                              r["layer"], int(r["head"]) if r["head"] else None,
                              {s: float(r[s]) for s in STATISTICS if r[s] != "nan"})
                for r in read_csv(out / "dynamics.csv")]
        similarity = [SimilarityRow(r["checkpoint"], int(r["iteration"]), r["reference"],
                                    r["layer"], {s: float(r[s]) for s in SIMILARITY})
                      for r in read_csv(out / "similarity.csv")]
        tracked = [TrackedRow(int(r["iteration"]), r["statistic"], r["name"], r["layer"],
                              float(r["value"]))
                   for r in (read_csv(out / "tracked.csv") if (out / "tracked.csv").is_file()
                             else [])]
        return cls("", "", 0, rows, similarity, tracked)


# --- measuring -----------------------------------------------------------------------------------

def compute(run, corpus: str, *, which: str = "all", split: str = "val", windows: int = 16,
            length: int | None = None, device: str = "auto") -> DynamicsResult:
    """Weights, probe gradients and activations of every layer at every checkpoint `which`
    selects ("all", "final" or a list such as "0,100,final"), and each layer's similarity to the
    last selected checkpoint, on `windows` windows of `corpus`'s `split` (module docstring)."""
    paths = select_checkpoints(run, which)
    reference = load(paths[-1], device=device)
    w = corpus_windows(reference, corpus, split, windows=windows, length=length)
    notes = [w.oov_note()] if w.oov_note() else []
    if len(paths) == 1:
        notes.append(f"one checkpoint ({paths[0].name}): its similarity to itself is 1; give "
                     "--checkpoints all to follow the layers over training")
    ids, mask = w.ids, w.target_mask()
    n_tokens = ids.numel()
    if n_tokens < 4:
        raise LmscopeError(f"{n_tokens} tokens are too few to compare representations (the "
                           "debiased CKA needs at least 4): give more --windows or a longer "
                           "--length")
    ref_acts = layer_activations(reference, ids)
    width = max(x.shape[1] for x in ref_acts.values())
    if n_tokens < 10 * 2 * width:
        notes.append(f"SVCCA and PWCCA on {n_tokens:,} tokens of layers up to {width} wide: "
                     f"CCA fits noise below about {20 * width:,} tokens (10 per feature of the "
                     "two sides), so their values are high even for unrelated representations; "
                     "read the CKA columns, or give more --windows")
    rows: list[StatisticsRow] = []
    similarity: list[SimilarityRow] = []
    diverged: list[str] = []
    for path in _progress(paths, "dynamics"):
        ckpt = reference if path == paths[-1] else load(path, device=device)
        name, it = path.name, checkpoint_iteration(path)
        rows += _parameter_rows(ckpt.model, name, it, diverged)
        _, grads = probe_gradients(ckpt.model, ids, mask)
        rows += [StatisticsRow(name, it, "gradients", p, parameter_layer(p), None,
                               _statistics(g, f"{name} gradient of {p}", diverged))
                 for p, g in grads.items()]
        acts = ref_acts if ckpt is reference else layer_activations(ckpt, ids)
        for layer, x in acts.items():
            rows.append(StatisticsRow(name, it, "activations", layer, layer, None,
                                      _statistics(x, f"{name} layer {layer}", diverged)))
            y = ref_acts[layer]
            finite = bool(torch.isfinite(x).all() and torch.isfinite(y).all())
            similarity.append(SimilarityRow(name, it, paths[-1].name, layer, {
                "cka": linear_cka(x, y), "debiased_cka": debiased_cka(x, y),
                "svcca": svcca(x, y), "pwcca": pwcca(x, y)} if finite
                else dict.fromkeys(SIMILARITY, math.nan)))
    if diverged:
        notes.append(f"non-finite values (a diverged run?) in {len(diverged)} tensors, their "
                     f"statistics left as NaN: {', '.join(diverged[:3])}"
                     + (", ..." if len(diverged) > 3 else ""))
    # a checkpoint folder has no dynamics.jsonl: only a run folder that tracked brings it along
    tracked = load_tracked(run) if RunDir(run).dynamics_file.is_file() else []
    return DynamicsResult(str(run), w.corpus, n_tokens, rows, similarity, tracked, notes)


def layer_activations(ckpt, ids: torch.Tensor, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """{layer label: (tokens, width) float32 CPU tensor} at model.layer_points() on `ids`."""
    points = ckpt.model.layer_points()
    _, cache = run_with_cache(ckpt, ids, [hook for _, hook in points], batch_size=batch_size)
    return {label: cache[hook].flatten(0, 1).float().cpu() for label, hook in points}


def _parameter_rows(model, checkpoint: str, it: int, diverged: list[str]
                    ) -> list[StatisticsRow]:
    rows = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            rows.append(StatisticsRow(checkpoint, it, "weights", name, parameter_layer(name),
                                      None, _statistics(p, f"{checkpoint} {name}", diverged)))
        for layer, matrix, head, w in head_matrices(model):
            name = f"blocks.{layer}.attn.{matrix}"
            rows.append(StatisticsRow(checkpoint, it, "heads", name, str(layer), head,
                                      _statistics(w, f"{checkpoint} {name}[{head}]", diverged)))
    return rows


def _statistics(t: torch.Tensor, what: str, diverged: list[str]) -> dict[str, float]:
    """matrix_statistics of `t`; none (NaN in the tables) for a tensor with NaN or inf entries,
    which is named in `diverged`."""
    if not bool(torch.isfinite(t).all()):
        diverged.append(what)
        return {}
    return matrix_statistics(t)


def head_matrices(model):
    """(layer, "W_Q"|"W_K"|"W_V"|"W_O", head, matrix) of each attention head of a GPT (module
    docstring; nothing for other models)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return
    n_head = model.config.n_head
    for layer, block in enumerate(blocks):
        qkv, proj = block.attn.qkv.weight, block.attn.proj.weight
        d_model = proj.shape[0]
        d_head = d_model // n_head
        for h in range(n_head):
            rows = slice(h * d_head, (h + 1) * d_head)
            for i, matrix in enumerate(("W_Q", "W_K", "W_V")):
                yield layer, matrix, h, qkv[i * d_model:(i + 1) * d_model][rows]
            yield layer, "W_O", h, proj[:, rows]


def load_tracked(run) -> list[TrackedRow]:
    """RUN/dynamics.jsonl (track.dynamics_every) as rows: per matrix its weight_norm,
    spectral_norm, effective_rank and matrix_grad_norm, per layer its layer_grad_norm, and the
    probe_loss and grad_norm (name "model")."""
    path = RunDir(run).dynamics_file
    if not path.is_file():
        raise LmscopeError(f"{run} has no dynamics.jsonl: train it with --set "
                           "track.dynamics_every=N to track the dynamics during training")
    rows = []
    for r in read_jsonl(path):
        it = int(r["iter"])
        for key in ("probe_loss", "grad_norm"):
            rows.append(TrackedRow(it, key, "model", "", _number(r.get(key))))
        for key, values in r.items():
            if isinstance(values, dict):
                for name, value in values.items():
                    layer = name if key == "layer_grad_norm" else parameter_layer(name)
                    rows.append(TrackedRow(it, key, name, layer, _number(value)))
    return rows


def _number(value) -> float:
    return math.nan if value is None else float(value)


def dynamics_probe(run, out_dir, corpus: str, **kwargs) -> dict:
    """Run `compute` and save its result in out_dir; returns the written paths and notes."""
    result = compute(run, corpus, **kwargs)
    return {**result.save(out_dir), "notes": result.notes}


# --- figures and summary -------------------------------------------------------------------------

def matrix_kind(name: str) -> str:
    """A parameter's name without its layer number: the same matrix in every layer."""
    return re.sub(r"_l\d+$", "", re.sub(r"(?:^|\.)\d+\.", ".", name)).lstrip(".")


def _plot_matrices(result: DynamicsResult, kind: str, path: Path, statistics) -> Path:
    """One row of panels per kind of 2-D matrix (attn.qkv.weight, ...), one column per
    statistic, one line per layer."""
    names = sorted({r.name for r in result.rows if r.kind == kind and r.head is None
                    and "effective_rank" in r.values}, key=lambda n: layer_order(
                        parameter_layer(n)))
    kinds = list(dict.fromkeys(matrix_kind(n) for n in names))
    fig, axes = plots.grid(max(len(kinds), 1), len(statistics),
                           title=f"{kind} over training: {result.title}", width=3.8, height=2.3)
    for row, mk in zip(axes, kinds, strict=False):
        members = [n for n in names if matrix_kind(n) == mk]
        colours = plots.sequential_colours(len(members))
        for ax, statistic in zip(row, statistics, strict=True):
            for colour, name in zip(colours, members, strict=True):
                x, y = result.series(kind, name, statistic)
                ax.plot(x, y, marker=".", color=colour, label=f"layer {parameter_layer(name)}")
            plots.iteration_axis(ax, result.iterations, label="")
            ax.set_title(f"{mk}: {statistic.replace('_', ' ')}", fontsize=9)
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("iteration")
    fullest = max((row[0] for row in axes), key=lambda ax: len(ax.get_lines()))
    plots.legend_below(fig, *fullest.get_legend_handles_labels(), ncol=8)
    return plots.save(fig, path)


def _plot_activations(result: DynamicsResult, path: Path) -> Path:
    statistics = ("frobenius_norm", "effective_rank", "gini", "hoyer")
    fig, axes = plots.panels(len(statistics), title=f"activations over training: {result.title}",
                             width=3.0, height=2.8)
    layers = result.layers
    colours = plots.sequential_colours(len(layers))
    for ax, statistic in zip(axes, statistics, strict=True):
        for colour, layer in zip(colours, layers, strict=True):
            x, y = result.series("activations", layer, statistic)
            ax.plot(x, y, marker=".", color=colour, label=f"layer {layer}")
        plots.iteration_axis(ax, result.iterations, label="iteration")
        ax.set_title(statistic.replace("_", " "), fontsize=9)
        ax.grid(alpha=0.3)
    plots.legend_below(fig, ncol=8)
    return plots.save(fig, path)


def _plot_similarity(result: DynamicsResult, path: Path) -> Path:
    reference = result.similarity[-1].reference
    fig, axes = plots.panels(3, title=f"each layer against itself at {reference}: "
                             f"{result.title}", width=3.8, height=3.0)
    layers = result.layers
    colours = plots.sequential_colours(len(layers))
    for ax, measure in zip(axes, ("cka", "debiased_cka", "pwcca"), strict=True):
        for colour, layer in zip(colours, layers, strict=True):
            x, y = result.similarity_series(layer, measure)
            ax.plot(x, y, marker=".", color=colour, label=f"layer {layer}")
        ax.axhline(SETTLED, color="grey", lw=0.8, ls=":")
        plots.iteration_axis(ax, result.iterations, label="iteration")
        ax.set_title(measure.replace("_", " ").replace("cka", "CKA").replace("pwCKA", "PWCCA")
                     if measure != "pwcca" else "PWCCA", fontsize=9)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    plots.legend_below(fig, ncol=8)
    return plots.save(fig, path)


def _plot_tracked(result: DynamicsResult, path: Path) -> Path:
    """During training: each layer's gradient norm, and each layer's weight norm and mean
    effective rank over its matrices."""
    fig, axes = plots.panels(3, title=f"during training (track.dynamics_every): {result.title}",
                             width=3.8, height=3.0)
    by_layer: dict[str, dict[str, dict[int, list[float]]]] = {}
    for r in result.tracked:
        if r.statistic in ("layer_grad_norm", "weight_norm", "effective_rank"):
            by_layer.setdefault(r.statistic, {}).setdefault(r.layer, {}).setdefault(
                r.iteration, []).append(r.value)
    titles = {"layer_grad_norm": "gradient norm", "weight_norm": "weight norm (its matrices)",
              "effective_rank": "mean effective rank of its matrices"}
    iterations = sorted({r.iteration for r in result.tracked})
    for ax, statistic in zip(axes, titles, strict=True):
        layers = sorted(by_layer.get(statistic, {}), key=layer_order)
        for colour, layer in zip(plots.sequential_colours(len(layers)), layers, strict=True):
            points = sorted(by_layer[statistic][layer].items())
            combine = ((lambda v: math.sqrt(sum(x * x for x in v))) if statistic == "weight_norm"
                       else (lambda v: sum(v) / len(v)))
            ax.plot([i for i, _ in points], [combine(v) for _, v in points], color=colour,
                    label=f"layer {layer}")
        plots.iteration_axis(ax, iterations, label="iteration")
        ax.set_title(titles[statistic], fontsize=9)
        ax.grid(alpha=0.3)
    plots.legend_below(fig, ncol=8)
    return plots.save(fig, path)


def _summary(result: DynamicsResult) -> str:
    lines = [f"# Learning dynamics: {result.title}", ""]
    if result.n_tokens:
        reference = result.similarity[-1].reference if result.similarity else "the reference"
        lines += [f"On {result.n_tokens:,} tokens of {result.corpus}; each layer's "
                  f"representation against the same layer at checkpoint {reference}.", ""]
    iters = result.iterations
    if result.similarity:
        header = ["layer", *(str(i) for i in iters), f"settled (CKA >= {SETTLED})"]
        table = []
        for layer in result.layers:
            _, values = result.similarity_series(layer)
            settled = result.settled_at(layer)
            table.append([layer, *values, "never" if settled is None else settled])
        lines += ["## Linear CKA to the reference, by iteration", "",
                  markdown_table(header, table), ""]
    if result.rows:
        first, last = iters[0], iters[-1]
        table = []
        for layer in result.layers:
            _, erank = result.series("activations", layer, "effective_rank")
            _, hoyer = result.series("activations", layer, "hoyer")
            table.append([layer, erank[0], erank[-1], hoyer[0], hoyer[-1]])
        lines += ["## Activations", "",
                  markdown_table(["layer", f"effective rank at {first}", f"at {last}",
                                  f"Hoyer sparsity at {first}", f"at {last}"], table), ""]
        table = []
        for r in result.rows:
            if r.kind == "weights" and r.iteration == first and "effective_rank" in r.values:
                _, norm = result.series("weights", r.name, "frobenius_norm")
                _, erank = result.series("weights", r.name, "effective_rank")
                _, grad = result.series("gradients", r.name, "frobenius_norm")
                table.append([r.name, norm[0], norm[-1], erank[0], erank[-1],
                              grad[0] if grad else math.nan, grad[-1] if grad else math.nan])
        lines += ["## Weight matrices", "",
                  markdown_table(["matrix", f"norm at {first}", f"at {last}",
                                  f"effective rank at {first}", f"at {last}",
                                  f"gradient norm at {first}", f"at {last}"], table), ""]
    lines += [f"Note: {note}." for note in result.notes]
    return "\n".join(lines) + "\n"
