"""Zero-shot cross-domain matrix: every model evaluated on the validation split of every corpus.

Each cell is a whole-split, deterministic evaluation (`lmscope.evaluate`): cross-entropy in nats
per character and in bits per character. Rows are models (runs), columns are corpora.

Characters a model has never seen (outside its character vocabulary) cannot be scored: they are
left out of the loss and counted in `oov.csv`. Models trained with one joint vocabulary
(`data.vocab_from`) have no such characters, and their numbers are directly comparable.

`compute(runs, corpora)` returns a `Matrix`; `Matrix.save(dir)` writes matrix.csv (nats/char),
matrix_bits.csv, oov.csv, matrix.md, matrix.json and matrix.png, and `Matrix.load(dir)` reads
matrix.json back.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmscope.errors import LmscopeError
from lmscope.evaluate import evaluate
from lmscope.io import atomic_write_json, atomic_write_text
from lmscope.render import plots
from lmscope.render.tables import markdown_table, write_csv
from lmscope.run.checkpoint import Checkpoint, as_checkpoint, load


@dataclass
class Matrix:
    runs: list[str]  # row labels
    corpora: list[str]  # column labels
    trained_on: list[str]  # the corpus each row's model was trained on
    nats: np.ndarray  # (runs, corpora) nats per character
    oov_rate: np.ndarray  # (runs, corpora) fraction of characters outside the model's vocabulary
    results: list[list[dict]] = field(default_factory=list)  # EvalResult.to_dict() per cell
    joint_vocabulary: bool = True

    @property
    def bits(self) -> np.ndarray:
        return self.nats / math.log(2)

    def own_domain_lowest(self) -> dict[str, bool | None]:
        """For each corpus column: is the model trained on it the lowest? (None: no such model)."""
        out = {}
        for c, corpus in enumerate(self.corpora):
            own = [r for r, t in enumerate(self.trained_on) if t == corpus]
            out[corpus] = None if not own else int(np.argmin(self.nats[:, c])) in own
        return out

    def save(self, out_dir, *, skip: Sequence[str] = ()) -> list[Path]:
        return write_matrix(self, out_dir, skip=skip)

    @classmethod
    def load(cls, out_dir) -> Matrix:
        d = json.loads((Path(out_dir) / "matrix.json").read_text(encoding="utf-8"))
        return cls(runs=d["runs"], corpora=d["corpora"], trained_on=d["trained_on"],
                   nats=np.array(d["nats_per_char"], dtype=np.float64),
                   oov_rate=np.array(d["oov_rate"], dtype=np.float64), results=d["cells"],
                   joint_vocabulary=d["joint_vocabulary"])


def compute(runs, corpora, *, split: str = "val", batch_size: int = 32,
            device: str = "auto", log=print) -> Matrix:
    """Evaluate the final checkpoint of each run (or a checkpoint folder) on each corpus."""
    runs, corpora = list(runs), list(corpora)
    if not runs or not corpora:
        raise LmscopeError("the matrix needs at least one run (--runs) and one corpus (--data)")
    checkpoints = [load(run, device=device) for run in runs]  # every run is checked first
    labels = _unique_labels([Path(run).resolve() for run in runs])
    return from_rows([compute_row(ckpt, corpora, split=split, batch_size=batch_size,
                                  label=label, log=log)
                      for ckpt, label in zip(checkpoints, labels, strict=True)])


@dataclass
class MatrixRow:
    """One model's row of the matrix: its label, the corpus it was trained on, its vocabulary's
    fingerprint and the EvalResult (as a dict) of each corpus, so that rows computed apart (a
    study's units, one per model) make the same Matrix as `compute`."""

    run: str
    trained_on: str
    vocabulary: str  # the tokenizer's fingerprint
    cells: list[dict]

    def save(self, path) -> Path:
        atomic_write_json(Path(path), dataclasses.asdict(self))
        return Path(path)

    @classmethod
    def load(cls, path) -> MatrixRow:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def compute_row(model_or_path, corpora, *, split: str = "val", batch_size: int = 32,
                label: str = "", device: str = "auto", log=print) -> MatrixRow:
    """One model (a checkpoint, a run folder or a checkpoint folder) on each corpus."""
    ckpt = as_checkpoint(model_or_path, device=device)
    where = ckpt.path if isinstance(model_or_path, Checkpoint) else model_or_path
    label = label or _unique_labels([Path(where).resolve()])[0]
    cells = []
    for corpus in corpora:
        result = evaluate(ckpt, corpus, split, batch_size=batch_size)
        cells.append(result.to_dict())
        log(f"{label} on {result.corpus}: {result.bits_per_char * math.log(2):.4f} nats/char "
            f"({result.bits_per_char:.4f} bits/char)")
    return MatrixRow(label, ckpt.trained_on, ckpt.tokenizer.fingerprint(), cells)


def from_rows(rows: list[MatrixRow]) -> Matrix:
    """The matrix of `rows` (one per model, each over the same corpora in the same order)."""
    nats = np.array([[c["bits_per_char"] * math.log(2) for c in r.cells] for r in rows])
    oov = np.array([[c["oov_rate"] for c in r.cells] for r in rows])
    return Matrix(runs=[r.run for r in rows], corpora=[c["corpus"] for c in rows[0].cells],
                  trained_on=[r.trained_on for r in rows], nats=nats, oov_rate=oov,
                  results=[r.cells for r in rows],
                  joint_vocabulary=len({r.vocabulary for r in rows}) == 1)


cross_domain_matrix = compute  # its name before the probes shared one; kept for callers


def _unique_labels(paths: list[Path]) -> list[str]:
    """Short row labels: the run folder's name, or the checkpoint's run and name."""
    labels = []
    for p in paths:
        is_ckpt = (p / "meta.json").is_file()
        labels.append(f"{p.parent.parent.name}/{p.name}" if is_ckpt else p.name)
    for i, label in enumerate(labels):
        if labels.count(label) > 1:
            labels[i] = str(paths[i])
    return labels


def vocabulary_note(matrix: Matrix) -> str:
    if matrix.joint_vocabulary:
        return "All models share one vocabulary: every character is scored."
    return ("The models' vocabularies differ. Characters outside a model's vocabulary are left out "
            "of its loss (they cannot be predicted) and counted in oov.csv; the mean is over the "
            "characters the model can represent.")


def write_matrix(matrix: Matrix, out_dir, *, skip: Sequence[str] = ()) -> list[Path]:
    """matrix.csv (nats/char), matrix_bits.csv, oov.csv, matrix.md, matrix.json, matrix.png
    (unless it matches a pattern of `skip`: plots.drawn)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = ["model", "trained_on", *matrix.corpora]

    def rows(values):
        return [[run, t, *map(float, v)]
                for run, t, v in zip(matrix.runs, matrix.trained_on, values, strict=True)]

    paths = [write_csv(out / "matrix.csv", header, rows(matrix.nats)),
             write_csv(out / "matrix_bits.csv", header, rows(matrix.bits)),
             write_csv(out / "oov.csv", header, rows(matrix.oov_rate))]
    lowest = matrix.own_domain_lowest()
    md = ["# Zero-shot cross-domain matrix\n\n",
          "Cross-entropy on each corpus's validation split, whole split, in nats per character "
          "(rows: models, columns: data).\n\n", markdown_table(header, rows(matrix.nats)),
          "\nIn bits per character:\n\n", markdown_table(header, rows(matrix.bits)),
          f"\n{vocabulary_note(matrix)}\n\n"]
    for corpus, ok in lowest.items():
        if ok is not None:
            md.append(f"- {corpus}: the model trained on it is "
                      f"{'the lowest' if ok else 'NOT the lowest'} in its column\n")
    atomic_write_text(out / "matrix.md", "".join(md))
    atomic_write_json(out / "matrix.json", {
        "runs": matrix.runs, "corpora": matrix.corpora, "trained_on": matrix.trained_on,
        "nats_per_char": matrix.nats.tolist(), "bits_per_char": matrix.bits.tolist(),
        "oov_rate": matrix.oov_rate.tolist(), "joint_vocabulary": matrix.joint_vocabulary,
        "own_domain_lowest": lowest, "cells": matrix.results})
    paths += [out / "matrix.md", out / "matrix.json"]
    if not plots.drawn(out / "matrix.png", skip):
        return paths
    paths.append(plots.heatmap(
        matrix.nats, [f"{r} ({t})" if t and t != r else r
                      for r, t in zip(matrix.runs, matrix.trained_on, strict=True)],
        matrix.corpora, out / "matrix.png", title="Zero-shot cross-entropy (nats/char)",
        xlabel="evaluated on", ylabel="model (trained on)", cmap="viridis_r", colorbar="nats/char"))
    return paths
