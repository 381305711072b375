"""Representation similarity across runs: layer by layer, on the same tokens, checkpoint by
checkpoint. Do two runs learn the same representations, and when do they part?

What is compared. Every model names one representation per layer (`model.layer_points()`): GPT
the residual stream entering block 0 ("embed") and leaving each block ("0", "1", ...); the LSTM
its token embeddings and each layer's hidden state; the k-gram MLP its k input vectors
concatenated and each hidden layer's output. For two runs A and B and a checkpoint of each, every
layer i of A is compared with every layer j of B on the same N tokens: X_i (N, width_i) and
Y_j (N, width_j) are the activations at every position of every window, flattened, row n of both
belonging to the same token of the text. The result is a layer x layer matrix per pair of runs
(A before B in the order given; rectangular when the depths differ), as in the layer x layer
CKA heatmaps between networks of Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of Neural
Network Representations Revisited" (ICML). pico-analyze (the learning-dynamics companion of the
pico-lm framework) compares checkpoints within one run; this probe compares runs with each other
at the same iteration.

Which CKA (lmscope.metrics.similarity, where the formulas are):

    cka            linear CKA, ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), Xc, Yc the
                   activations with every column centred over the tokens (Kornblith et al. 2019).
                   In [0, 1]; 1 iff Y is X up to an orthogonal map, a scale and a shift. NaN for
                   a layer with no variance.
    debiased_cka   the same ratio with the unbiased HSIC estimator of Song et al. 2012 (as in
                   Nguyen, Raghu & Kornblith 2021): plain CKA is biased upwards on a finite
                   sample (unrelated wide layers score well above 0), the debiased one is ~0 for
                   unrelated representations (it may be slightly negative).

Which checkpoints. With which="final" each run's final checkpoint is compared whatever its
iteration, and the comparison is labelled "final" (the iterations are in the notes). Otherwise
(which="all" or a list such as "0,100,final") checkpoints are matched by iteration
(`checkpoint_iteration`): only the iterations every run kept are compared, and the ones left out
are named in the notes.

On which tokens. `windows` windows of `length` tokens (default: the smallest context length among
the runs) of the corpus split, cut by `evaluate.corpus_windows` with each run's final checkpoint
(its tokenizer), with the first run's data.val_fraction for every run so that the split is the
same text. Alignment rule: two runs read the same tokens if their tokenizers are identical (equal
fingerprints), or if both are character- or byte-level (char or byte) and the split encodes to
the same number of tokens with the same window starts: two char tokenizers always do (one token
per character; characters outside a vocabulary are <unk> tokens in the same places), and char
and byte agree exactly on ASCII text (one byte per character) and never on text with other
characters. Any other pair (a BPE run with anything but the same BPE, char vs byte on non-ASCII
text) is an error: their positions are different tokens.

Summaries. Same-layer CKA: the diagonal of the matrix when the two runs have the same layer
labels (mean same-layer CKA: its mean over layers). Best match of layer i of A: the layer j of B
with the largest CKA (NaN left out). Two runs have the same architecture when they are the same
model kind with the same layer labels and widths; for such a pair over iterations, "diverged at"
is the first iteration at which the mean same-layer CKA is below DIVERGED = 0.9 (runs trained from
the same seed and vocabulary start identical, CKA 1 at iteration 0).

`compute(runs, corpus)` returns a `SimilarityResult`; `save(dir)` writes cka.csv (one row per
iteration, pair and cell: iteration, run_a, run_b, layer_a, layer_b, cka, debiased_cka, at full
precision), similarity.json (the runs, layers and tokens), cka_<a>_<b>.png (the heatmap of each
pair at the last iteration, rows A's layers, columns B's), same_layer.png (with more than one
iteration: same-layer CKA over training, one panel per pair with the same layer labels) and
summary.md; `load(dir)` reads them back into an equal result.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmscope.api import run_with_cache
from lmscope.data import corpora
from lmscope.data.tokens import encode_to_file
from lmscope.errors import LmscopeError
from lmscope.evaluate import Windows, corpus_windows
from lmscope.io import atomic_write_json, atomic_write_text
from lmscope.metrics.similarity import cka_matrix
from lmscope.render import plots
from lmscope.render.progress import progress as _progress
from lmscope.render.tables import markdown_table, read_csv, write_csv
from lmscope.run.checkpoint import checkpoint_iteration, load, select_checkpoints

DIVERGED = 0.9  # mean same-layer CKA below this: the runs have diverged
FINAL = "final"  # the label of the comparison of the finals (which="final")
HEADER = ["iteration", "run_a", "run_b", "layer_a", "layer_b", "cka", "debiased_cka"]
CHAR_LEVEL = ("char", "byte")  # tokenizers that can agree position by position across kinds

Key = tuple  # (iteration or "final", run_a, run_b)


@dataclass(eq=False)
class SimilarityResult:
    runs: list[str]  # labels: folder names (the parent's name prefixed where two collide)
    paths: list[str]  # the run (or checkpoint) folders, as given
    corpus: str
    split: str
    n_tokens: int  # tokens compared: windows x length
    iterations: list  # matched iterations (ints), or ["final"] for which="final"
    layers: dict[str, list[str]]  # run -> its layer labels, in the order of the forward pass
    cka: dict[Key, np.ndarray]  # (iteration, a, b) -> (len(layers[a]), len(layers[b]))
    debiased: dict[Key, np.ndarray]
    notes: list[str] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)  # run -> model kind (gpt, lstm, kgram)
    widths: dict[str, list[int]] = field(default_factory=dict)  # run -> width of each layer
    windows: int = 0
    length: int = 0

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """Every pair of runs, a before b in the order given."""
        return [(a, b) for i, a in enumerate(self.runs) for b in self.runs[i + 1:]]

    def matrix(self, iteration, a: str, b: str, debiased: bool = False) -> np.ndarray:
        """The (layers of a, layers of b) CKA matrix at `iteration` (transposed when the pair
        was computed as (b, a))."""
        table = self.debiased if debiased else self.cka
        if (iteration, a, b) in table:
            return table[(iteration, a, b)]
        if (iteration, b, a) in table:
            return table[(iteration, b, a)].T
        raise KeyError(f"no comparison of {a!r} and {b!r} at iteration {iteration!r}")

    def same_labels(self, a: str, b: str) -> bool:
        return self.layers[a] == self.layers[b]

    def same_architecture(self, a: str, b: str) -> bool:
        return (self.same_labels(a, b) and self.models.get(a) == self.models.get(b)
                and self.widths.get(a) == self.widths.get(b))

    def same_layer(self, a: str, b: str, debiased: bool = False) -> dict[str, list[float]]:
        """{layer: [CKA of that layer of a with the same layer of b, per iteration]}, for two
        runs with the same layer labels."""
        if not self.same_labels(a, b):
            raise ValueError(f"{a} and {b} have different layers ({', '.join(self.layers[a])} "
                             f"vs {', '.join(self.layers[b])}); read matrix() instead")
        diagonals = [np.diag(self.matrix(it, a, b, debiased)) for it in self.iterations]
        return {layer: [float(d[i]) for d in diagonals] for i, layer in enumerate(self.layers[a])}

    def mean_same_layer(self, iteration, a: str, b: str, debiased: bool = False) -> float:
        """The mean over layers of the same-layer CKA (NaN layers left out; NaN if all are)."""
        diagonal = np.diag(self.matrix(iteration, a, b, debiased))
        finite = diagonal[np.isfinite(diagonal)]
        return float(finite.mean()) if finite.size else math.nan

    def best_match(self, iteration, a: str, b: str,
                   debiased: bool = False) -> dict[str, tuple[str, float]]:
        """{layer of a: (the layer of b with the largest CKA, that CKA)}; ("", NaN) for a layer
        whose every CKA is NaN."""
        m = self.matrix(iteration, a, b, debiased)
        out = {}
        for i, layer in enumerate(self.layers[a]):
            row = m[i]
            if not np.isfinite(row).any():
                out[layer] = ("", math.nan)
                continue
            j = int(np.nanargmax(row))
            out[layer] = (self.layers[b][j], float(row[j]))
        return out

    def diverged_at(self, a: str, b: str, threshold: float = DIVERGED):
        """The first iteration whose mean same-layer CKA is below `threshold`, or None."""
        for it in self.iterations:
            if self.mean_same_layer(it, a, b) < threshold:
                return it
        return None

    def __eq__(self, other) -> bool:
        if not isinstance(other, SimilarityResult):
            return NotImplemented
        plain = ("runs", "paths", "corpus", "split", "n_tokens", "iterations", "layers", "notes",
                 "models", "widths", "windows", "length")
        if any(getattr(self, f) != getattr(other, f) for f in plain):
            return False
        for name in ("cka", "debiased"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine.keys() != theirs.keys() or not all(
                    np.array_equal(mine[k], theirs[k], equal_nan=True) for k in mine):
                return False
        return True

    __hash__ = None

    # --- files ---------------------------------------------------------------------------------

    def save(self, out_dir, *, skip: Sequence[str] = ()) -> dict[str, str]:
        """Write cka.csv, similarity.json, the figures (but those matching a pattern of `skip`:
        plots.drawn) and summary.md; returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        for it in self.iterations:
            for a, b in self.pairs:
                m, d = self.matrix(it, a, b), self.matrix(it, a, b, debiased=True)
                for i, la in enumerate(self.layers[a]):
                    for j, lb in enumerate(self.layers[b]):  # repr: read back exactly
                        rows.append([it, a, b, la, lb, repr(float(m[i, j])),
                                     repr(float(d[i, j]))])
        files = {"cka_csv": write_csv(out / "cka.csv", HEADER, rows)}
        meta = {"runs": self.runs, "paths": self.paths, "corpus": self.corpus,
                "split": self.split, "n_tokens": self.n_tokens, "windows": self.windows,
                "length": self.length, "iterations": self.iterations, "layers": self.layers,
                "models": self.models, "widths": self.widths, "notes": self.notes}
        atomic_write_json(out / "similarity.json", meta)
        files["similarity_json"] = out / "similarity.json"
        last = self.iterations[-1]
        taken = set()
        for a, b in self.pairs:
            name = f"cka_{_file_part(a)}_{_file_part(b)}"
            while name in taken:  # two labels that differ only in odd characters
                name += "_"
            taken.add(name)
            if not plots.drawn(out / f"{name}.png", skip):
                continue
            files[f"{name}_png"] = plots.heatmap(
                self.matrix(last, a, b), self.layers[a], self.layers[b], out / f"{name}.png",
                title=f"Linear CKA at {iteration_label(last)}: {a} vs {b}", xlabel=f"layer of {b}",
                ylabel=f"layer of {a}", colorbar="linear CKA")
        matching = [(a, b) for a, b in self.pairs if self.same_labels(a, b)]
        if len(self.iterations) > 1 and matching and plots.drawn(out / "same_layer.png", skip):
            files["same_layer_png"] = _same_layer_figure(self, matching, out / "same_layer.png")
        files["summary_md"] = _summary(self, out / "summary.md")
        return {k: str(v) for k, v in files.items()}

    @classmethod
    def load(cls, out_dir) -> SimilarityResult:
        """The result `save` wrote (cka.csv and similarity.json), equal to the saved one."""
        out = Path(out_dir)
        try:
            meta = _read_json(out / "similarity.json")
            table = read_csv(out / "cka.csv")
        except FileNotFoundError as e:
            raise LmscopeError(f"{out} holds no similarity result ({Path(e.filename).name} is "
                               "missing); run `lmscope probe similarity` into it first") from None
        iterations = meta["iterations"]
        by_text = {str(it): it for it in iterations}
        layers = meta["layers"]
        cka, debiased = {}, {}
        for r in table:
            key = (by_text[r["iteration"]], r["run_a"], r["run_b"])
            if key not in cka:
                shape = (len(layers[key[1]]), len(layers[key[2]]))
                cka[key] = np.full(shape, math.nan)
                debiased[key] = np.full(shape, math.nan)
            i, j = layers[key[1]].index(r["layer_a"]), layers[key[2]].index(r["layer_b"])
            cka[key][i, j] = float(r["cka"])
            debiased[key][i, j] = float(r["debiased_cka"])
        return cls(meta["runs"], meta["paths"], meta["corpus"], meta["split"], meta["n_tokens"],
                   iterations, layers, cka, debiased, meta["notes"], meta["models"],
                   meta["widths"], meta["windows"], meta["length"])


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# --- computing ------------------------------------------------------------------------------------


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Each run's folder name (a run's checkpoints/ folder stands for the run); where two
    collide, the parent folder's name is prefixed ("parent/name"), and where that still
    collides, a number (#2, #3, ...)."""
    paths = [p.parent if p.name == "checkpoints" else p for p in map(Path, paths)]
    names = [p.name or str(p) for p in paths]
    labels = []
    for p, name in zip(paths, names, strict=True):
        if names.count(name) > 1:
            parent = p.parent.parent if p.parent.name == "checkpoints" else p.parent
            name = f"{parent.name}/{name}" if parent.name else name
        labels.append(name)
    out = []
    for label in labels:
        n = labels[:len(out)].count(label)
        out.append(label if n == 0 else f"{label}#{n + 1}")
    return out


def compute(runs: Sequence[str | Path], corpus: str, *, which: str = "all", split: str = "val",
            windows: int = 16, length: int | None = None, device: str = "auto",
            progress: Callable = _progress, batch_size: int = 64) -> SimilarityResult:
    """Linear and debiased CKA between every layer of every pair of `runs` (run or checkpoint
    folders), at every iteration they all kept (which="all" or a list of iterations and names)
    or at their finals (which="final"), on `windows` windows of the corpus split."""
    paths = [Path(r) for r in runs]
    if len(paths) < 2:
        raise LmscopeError(f"give at least two runs to compare (got {len(paths)}): "
                           "lmscope probe similarity RUN_A RUN_B [RUN...] --data CORPUS")
    labels = run_labels(paths)
    selected = {label: select_checkpoints(p, which) for label, p in zip(labels, paths,
                                                                        strict=True)}
    notes: list[str] = []
    plan = _match(selected, which, notes)  # [(iteration or "final", {run: checkpoint})]
    texts = _windows(labels, paths, corpus, split, windows, length, notes)
    n_tokens = texts[labels[0]].ids.numel()
    if n_tokens < 4:
        raise LmscopeError(f"{n_tokens} tokens are too few to compare representations (the "
                           "debiased CKA needs at least 4): give more --windows or a longer "
                           "--length")
    layers: dict[str, list[str]] = {}
    widths: dict[str, list[int]] = {}
    models: dict[str, str] = {}
    cka, debiased = {}, {}
    pairs = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:]]
    for iteration, checkpoints in progress(plan, "similarity"):
        acts = {}
        for label in labels:  # one checkpoint in memory at a time
            ckpt = load(checkpoints[label], device=device)
            points = ckpt.model.layer_points()
            _, cache = run_with_cache(ckpt, texts[label].ids, [name for _, name in points],
                                      batch_size=batch_size)
            acts[label] = [_flat(cache[name]) for _, name in points]
            for (point, _), x in zip(points, acts[label], strict=True):
                if not bool(torch.isfinite(x).all()):
                    raise LmscopeError(
                        f"run {label}: layer {point} of {checkpoints[label].name} has NaN or "
                        "inf activations (a diverged run?); compare earlier checkpoints "
                        "(--checkpoints 0,100,...)")
            layers[label] = [point for point, _ in points]
            widths[label] = [x.shape[1] for x in acts[label]]
            models[label] = ckpt.model_name
            del ckpt, cache
        for a, b in pairs:
            cka[(iteration, a, b)] = cka_matrix(acts[a], acts[b]).cpu().numpy()
            debiased[(iteration, a, b)] = cka_matrix(acts[a], acts[b],
                                                     debiased=True).cpu().numpy()
        del acts
    first = texts[labels[0]]
    return SimilarityResult(labels, [str(p) for p in paths], first.corpus, split, n_tokens,
                            [it for it, _ in plan], layers, cka, debiased, notes, models, widths,
                            first.ids.size(0), first.ids.size(1))


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(batch, pos, width) -> (tokens, width); on the CPU where float64 is missing (MPS)."""
    t = t.reshape(-1, t.shape[-1])
    return t.cpu() if t.device.type == "mps" else t


def _match(selected: dict[str, list[Path]], which: str, notes: list[str]) -> list:
    """[(iteration, {run: checkpoint folder})]: the finals (labelled "final") or the
    iterations every run kept."""
    if which == FINAL:
        finals = {label: paths[-1] for label, paths in selected.items()}
        notes.append("compared the final checkpoints: " + ", ".join(
            f"{label} at iteration {checkpoint_iteration(p)}" for label, p in finals.items()))
        return [(FINAL, finals)]
    by_run = {}
    for label, paths in selected.items():
        kept: dict[int, Path] = {}
        for p in paths:  # iter_N before final at the same iteration: the scheduled one
            kept.setdefault(checkpoint_iteration(p), p)
        by_run[label] = kept
    common = sorted(set.intersection(*(set(kept) for kept in by_run.values())))
    if not common:
        listed = "; ".join(f"{label}: {', '.join(map(str, sorted(kept)))}"
                           for label, kept in by_run.items())
        raise LmscopeError(f"the runs kept no checkpoint at a common iteration ({listed}); "
                           "compare their finals with --checkpoints final, or give runs trained "
                           "with the same checkpoint schedule (train.checkpoint_at)")
    dropped = {label: sorted(set(kept) - set(common)) for label, kept in by_run.items()}
    if any(dropped.values()):
        notes.append("left out the iterations not kept by every run: " + "; ".join(
            f"{label} at {', '.join(map(str, its))}" for label, its in dropped.items() if its))
    return [(it, {label: kept[it] for label, kept in by_run.items()}) for it in common]


@dataclass
class _Text:
    """What a run reads of the split: its windows and how its tokenizer cuts the split."""

    windows: Windows
    kind: str
    fingerprint: str
    n_split: int  # tokens of the whole split


def _windows(labels, paths, corpus, split, windows, length, notes) -> dict[str, Windows]:
    """Each run's windows of the same text (see the alignment rule), cut with its final
    checkpoint's tokenizer; an error where two runs' tokens are not the same positions."""
    if length is None:
        contexts = []
        for p in paths:
            ckpt = load(p, device="cpu")
            contexts.append(ckpt.model.context_length)
            del ckpt
        length = min(contexts)
    texts: dict[str, _Text] = {}
    other_fractions = []
    val_fraction = None  # the first run's, for every run: the same text
    for label, p in zip(labels, paths, strict=True):
        ckpt = load(p, device="cpu")
        if val_fraction is None:
            val_fraction = _val_fraction(ckpt)
        elif _val_fraction(ckpt) != val_fraction:
            other_fractions.append(f"{label} ({_val_fraction(ckpt)})")
        w = corpus_windows(ckpt, corpus, split, windows=windows, length=length,
                           val_fraction=val_fraction)
        if w.oov_note():
            notes.append(f"{label}: {w.oov_note()}")
        found = corpora.resolve(corpus, val_fraction=val_fraction)
        n_split = len(encode_to_file(found, split, ckpt.tokenizer))
        texts[label] = _Text(w, ckpt.tokenizer.kind, ckpt.tokenizer.fingerprint(), n_split)
        del ckpt
    if other_fractions:
        notes.append(f"the {split} split is cut with {labels[0]}'s data.val_fraction "
                     f"({val_fraction}) for every run; trained with another: "
                     + ", ".join(other_fractions))
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            _check_aligned(a, texts[a], b, texts[b], texts[a].windows.corpus, split)
    return {label: t.windows for label, t in texts.items()}


def _val_fraction(ckpt) -> float:
    return ckpt.meta.get("run_config", {}).get("data", {}).get("val_fraction", 0.1)


def _check_aligned(a: str, ta: _Text, b: str, tb: _Text, corpus: str, split: str) -> None:
    """The alignment rule of the module docstring."""
    if ta.fingerprint == tb.fingerprint:
        return
    way_out = ("compare runs with the same tokenizer, or char/byte runs on text both read alike "
               "(ASCII)")
    if ta.kind in CHAR_LEVEL and tb.kind in CHAR_LEVEL:
        if ta.n_split == tb.n_split and ta.windows.starts == tb.windows.starts:
            return
        raise LmscopeError(
            f"runs {a} ({ta.kind} tokenizer) and {b} ({tb.kind} tokenizer) do not read the "
            f"same tokens of {corpus} ({split} split): it is {ta.n_split} {ta.kind} tokens and "
            f"{tb.n_split} {tb.kind} tokens (text that is not ASCII); {way_out}")
    what = "a different tokenizer" if ta.kind == tb.kind else "different tokenizers"
    raise LmscopeError(
        f"runs {a} ({ta.kind} tokenizer) and {b} ({tb.kind} tokenizer) do not read the same "
        f"tokens of {corpus} ({split} split): {what} cut the text differently; {way_out}")


# --- figures and summary ------------------------------------------------------------------------


def _file_part(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "run"


def iteration_label(iteration) -> str:
    """The label of a compared checkpoint: iteration N, or the final checkpoints."""
    return "the final checkpoints" if iteration == FINAL else f"iteration {iteration}"


def _same_layer_figure(result: SimilarityResult, pairs, path: Path) -> Path:
    """One panel per pair with the same layer labels: one line per layer, CKA over training."""
    cols = min(len(pairs), 3)
    rows = math.ceil(len(pairs) / cols)
    fig, axes = plots.grid(rows, cols, title=f"Same-layer linear CKA over training "
                                             f"({result.corpus}, {result.n_tokens} tokens)",
                           width=4.2, height=3.2)
    flat = [ax for row in axes for ax in row]
    handles: dict[str, object] = {}
    for ax, (a, b) in zip(flat, pairs, strict=False):
        lines = result.same_layer(a, b)
        colours = plots.sequential_colours(len(lines))
        for colour, (layer, values) in zip(colours, lines.items(), strict=True):
            (line,) = ax.plot(result.iterations, values, marker=".", color=colour)
            handles.setdefault(f"layer {layer}", line)
        rule = ax.axhline(DIVERGED, color="grey", linestyle=":", linewidth=1)
        handles.setdefault(f"{DIVERGED} (diverged below)", rule)
        plots.iteration_axis(ax, result.iterations)
        ax.set_ylabel("linear CKA")
        ax.set_title(f"{a} vs {b}", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in flat[len(pairs):]:
        ax.set_visible(False)
    plots.legend_below(fig, list(handles.values()), list(handles))
    return plots.save(fig, path)


def cka_text(value: float) -> str:
    """A CKA to 3 decimals, "nan" where it cannot be computed."""
    return "nan" if not math.isfinite(value) else f"{value:.3f}"


def _summary(result: SimilarityResult, path: Path) -> Path:
    last = result.iterations[-1]
    runs = ", ".join(f"{r} ({result.models.get(r) or 'model unknown'})" for r in result.runs)
    text = (f"# Representation similarity across runs\n\n"
            f"Runs: {runs}. "
            f"Tokens: {result.n_tokens} ({result.windows} windows of {result.length}) of "
            f"{result.corpus} ({result.split} split), the same text for every run. Linear CKA "
            "(Kornblith et al. 2019) between every layer of one run and every layer of the "
            "other, and its debiased form (about 0 for unrelated representations).\n\n"
            f"## At {iteration_label(last)}\n\n")
    table = []
    for a, b in result.pairs:
        if result.same_labels(a, b):
            table.append([a, b, cka_text(result.mean_same_layer(last, a, b)),
                          cka_text(result.mean_same_layer(last, a, b, debiased=True))])
        else:
            table.append([a, b, "(different layers)", "(different layers)"])
    text += ("Mean same-layer CKA: the mean over layers of the CKA of each layer with the same "
             "layer of the other run.\n\n"
             + markdown_table(["run a", "run b", "mean same-layer CKA",
                               "mean same-layer debiased CKA"], table))
    best = []
    for a, b in result.pairs:
        plain = result.best_match(last, a, b)
        d = result.matrix(last, a, b, debiased=True)
        for i, (layer, (other, value)) in enumerate(plain.items()):
            j = result.layers[b].index(other) if other else None
            best.append([a, b, layer, other or "-", cka_text(value),
                         cka_text(float(d[i, j])) if j is not None else "nan"])
    text += ("\nMost similar layer of run b for each layer of run a (largest linear CKA), with "
             "the debiased CKA of that cell.\n\n"
             + markdown_table(["run a", "run b", "layer of a", "most similar layer of b", "CKA",
                               "debiased CKA"], best))
    alike = [(a, b) for a, b in result.pairs if result.same_architecture(a, b)]
    if len(result.iterations) > 1 and alike:
        first = result.iterations[0]
        rows = []
        for a, b in alike:
            start = result.mean_same_layer(first, a, b)
            at = result.diverged_at(a, b)
            if at is None:
                verdict = f"not below {DIVERGED} up to iteration {last}"
            elif at == first:
                verdict = f"below {DIVERGED} from the first iteration compared ({first})"
            else:
                verdict = str(at)
            rows.append([a, b, cka_text(start), cka_text(result.mean_same_layer(last, a, b)), verdict])
        text += (f"\n## Over training\n\nFor each pair of the same architecture (model, layers "
                 f"and widths): the mean same-layer CKA at the first ({first}) and the last "
                 f"({last}) iteration compared, and \"diverged at\": the first iteration at which "
                 f"it is below {DIVERGED}. Runs trained from the same seed and vocabulary start "
                 "identical (CKA 1 at iteration 0).\n\n"
                 + markdown_table(["run a", "run b", f"at {first}", f"at {last}",
                                   "diverged at"], rows))
    if result.notes:
        text += "\n" + "".join(f"Note: {note}.\n" for note in result.notes)
    atomic_write_text(path, text)
    return path
