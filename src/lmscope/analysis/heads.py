"""Attention-head detectors and the in-context-learning score, checkpoint by checkpoint, and as
tracked during training.

The measures are defined in lmscope/metrics/heads.py (its docstring): four head detectors on
repeated random tokens (previous_token, duplicate_token, induction: Olsson et al.'s prefix
matching, first_token), the induction losses (the mean next-token loss on the first and the
repeated second half of those sequences) and the in-context-learning score (late minus early
mean loss on natural-text windows, after Olsson et al. 2022). Their pure functions are imported
here too, so `from lmscope.analysis.heads import head_scores` keeps working.

`compute(run)` walks a run's checkpoints and returns a `HeadsResult`, whose `save(dir)` writes
heads.csv, icl.csv, heads_<detector>.png (final checkpoint, layer x head),
heads_over_iterations.png, icl.png and summary.md (top heads, the induction onset: the first
iteration at which the best induction head scores at least 0.3), and `load(dir)` reads the
tables back. A run trained with track.heads_every holds the same measures at many more
iterations in RUN/heads.jsonl (train/tracking.py): `load_tracked(run)` reads them into the same
rows (checkpoint "tracked"), and `save` then also draws heads_during_training.png, the best
induction score per layer and the ICL score against the iteration, the induction-head phase
change in one figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmscope.errors import LmscopeError
from lmscope.evaluate import corpus_windows
from lmscope.io import atomic_write_text, read_jsonl
from lmscope.metrics.heads import (  # noqa: F401 (re-exported: the probe's public names)
    DETECTORS,
    InductionLoss,
    allowed_ids,
    check_seq_len,
    default_seq_len,
    has_heads,
    head_scores,
    icl_losses,
    icl_positions,
    in_context_score,
    induction_loss,
    pattern_name,
    pattern_scores,
    repeated_random_tokens,
    repeated_run,
)
from lmscope.render import plots
from lmscope.render.progress import progress as _progress
from lmscope.render.tables import markdown_table, read_csv, write_csv
from lmscope.run.checkpoint import load, select_checkpoints
from lmscope.run.run_dir import RunDir

ONSET = 0.3  # the induction score whose first crossing is the induction onset
TOP = 3  # heads listed per detector in summary.md
HEADER = ["checkpoint", "iteration", "layer", "head", "detector", "score"]
ICL_HEADER = ["checkpoint", "iteration", "seq_len", "n_sequences", "first_half_loss",
              "second_half_loss", "uniform_loss", "data", "early_loss", "late_loss", "icl_score"]
TRACKED = "tracked"  # the checkpoint name of rows read from RUN/heads.jsonl
LOSS_HEADER = ["iteration", "train_loss"]


# --- the probe over checkpoints ------------------------------------------------------------

@dataclass
class HeadRow:
    """One head's score for one detector at one checkpoint (a row of heads.csv)."""

    checkpoint: str
    iteration: int
    layer: int
    head: int
    detector: str
    score: float

    def cells(self) -> list:
        return [self.checkpoint, self.iteration, self.layer, self.head, self.detector,
                self.score]


@dataclass
class IclRow:
    """One checkpoint's induction losses and ICL score (a row of icl.csv)."""

    checkpoint: str
    iteration: int
    seq_len: int
    n_sequences: int
    first_half_loss: float
    second_half_loss: float
    uniform_loss: float
    data: str  # the corpus of the ICL score; "" without one
    early_loss: float  # NaN without a corpus
    late_loss: float
    icl_score: float

    def cells(self) -> list:
        return [self.checkpoint, self.iteration, self.seq_len, self.n_sequences,
                self.first_half_loss, self.second_half_loss, self.uniform_loss, self.data,
                self.early_loss, self.late_loss, self.icl_score]


@dataclass
class HeadsResult:
    run: str  # the run's folder name
    corpus: str  # what it was trained on
    rows: list[HeadRow]
    icl: list[IclRow]
    heads_skipped: str = ""  # why there are no head rows ("" when there are)
    top: int = TOP
    # what training tracked (RUN/heads.jsonl, `load_tracked`), when the run has it
    tracked: HeadsResult | None = None
    train_loss: list[tuple[int, float]] = field(default_factory=list)  # (iteration, loss)

    @property
    def title(self) -> str:
        return f"{self.run} (trained on {self.corpus or '?'})" if self.run else "heads"

    @property
    def final_iteration(self) -> int | None:
        iters = [r.iteration for r in self.rows] or [r.iteration for r in self.icl]
        return max(iters) if iters else None

    def scores(self, detector: str, iteration: int | None = None) -> np.ndarray:
        """(layer, head) scores of a detector at an iteration (default the final one)."""
        iteration = self.final_iteration if iteration is None else iteration
        sel = [r for r in self.rows if r.detector == detector and r.iteration == iteration]
        if not sel:
            raise LmscopeError(f"no {detector} scores at iteration {iteration}")
        out = np.full((max(r.layer for r in sel) + 1, max(r.head for r in sel) + 1), np.nan)
        for r in sel:
            out[r.layer, r.head] = r.score
        return out

    def top_heads(self, detector: str, k: int | None = None) -> list[HeadRow]:
        """The `k` highest-scoring heads of a detector at the final checkpoint."""
        final = self.final_iteration
        sel = [r for r in self.rows if r.detector == detector and r.iteration == final]
        return sorted(sel, key=lambda r: (-r.score, r.layer, r.head))[:k or self.top]

    def induction_onset(self, threshold: float = ONSET) -> int | None:
        """The first iteration at which the best induction head scores at least `threshold`;
        None when none does."""
        best: dict[int, float] = {}
        for r in self.rows:
            if r.detector == "induction":
                best[r.iteration] = max(best.get(r.iteration, -math.inf), r.score)
        return next((it for it in sorted(best) if best[it] >= threshold), None)

    def save(self, out_dir) -> dict[str, str]:
        """Write the tables, figures and summary.md; returns their paths by kind."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {"heads_csv": write_csv(out / "heads.csv", HEADER, [r.cells() for r in self.rows]),
                 "icl_csv": write_csv(out / "icl.csv", ICL_HEADER, [r.cells() for r in self.icl])}
        if self.rows:
            final = self.final_iteration
            for d in DETECTORS:
                values = self.scores(d)
                files[f"heads_{d}_png"] = plots.heatmap(
                    values, [str(i) for i in range(values.shape[0])],
                    [str(i) for i in range(values.shape[1])], out / f"heads_{d}.png",
                    title=f"{d.replace('_', '-')} score at iteration {final}: {self.title}",
                    xlabel="head", ylabel="layer", colorbar="score", fmt="{:.3f}")
            files["heads_over_iterations_png"] = _plot_heads(self.rows, out /
                                                             "heads_over_iterations.png",
                                                             self.title)
        if self.icl:
            files["icl_png"] = _plot_icl(self.icl, out / "icl.png", self.title)
        if self.tracked is not None:
            t = self.tracked
            files["tracked_heads_csv"] = write_csv(out / "tracked_heads.csv", HEADER,
                                                   [r.cells() for r in t.rows])
            files["tracked_icl_csv"] = write_csv(out / "tracked_icl.csv", ICL_HEADER,
                                                 [r.cells() for r in t.icl])
            files["tracked_loss_csv"] = write_csv(out / "tracked_loss.csv", LOSS_HEADER,
                                                  t.train_loss)
            if t.icl:
                files["heads_during_training_png"] = plot_during_training(
                    t, out / "heads_during_training.png", self.title)
        files["summary_md"] = _summary(self, out / "summary.md")
        return {k: str(v) for k, v in files.items()}

    @classmethod
    def load(cls, out_dir) -> HeadsResult:
        """The tables `save` wrote (numbers to 6 significant digits); the run's name and corpus
        are not in them and come back empty."""
        out = Path(out_dir)
        rows, icl = _read_tables(out / "heads.csv", out / "icl.csv")
        tracked = None
        if (out / "tracked_icl.csv").is_file():
            t_rows, t_icl = _read_tables(out / "tracked_heads.csv", out / "tracked_icl.csv")
            loss = [(int(r["iteration"]), float(r["train_loss"]))
                    for r in read_csv(out / "tracked_loss.csv")]
            tracked = cls("", "", t_rows, t_icl, "" if t_rows else "no heads tracked",
                          train_loss=loss)
        return cls("", "", rows, icl, "" if rows else "heads.csv holds no heads",
                   tracked=tracked)


def _read_tables(heads_csv: Path, icl_csv: Path) -> tuple[list[HeadRow], list[IclRow]]:
    rows = [HeadRow(r["checkpoint"], int(r["iteration"]), int(r["layer"]), int(r["head"]),
                    r["detector"], float(r["score"])) for r in read_csv(heads_csv)]
    icl = [IclRow(r["checkpoint"], int(r["iteration"]), int(r["seq_len"]),
                  int(r["n_sequences"]), float(r["first_half_loss"]),
                  float(r["second_half_loss"]), float(r["uniform_loss"]), r["data"],
                  float(r["early_loss"]), float(r["late_loss"]), float(r["icl_score"]))
           for r in read_csv(icl_csv)]
    return rows, icl


def compute(run, *, which: str = "all", data: str | None = None, windows: int = 16,
            n_sequences: int = 8, seed: int = 0, seq_len: int | None = None,
            batch_size: int = 64, device: str = "auto", tracked: bool = True) -> HeadsResult:
    """The head detectors (GPT), the induction losses and, with `data` (a corpus name or
    path), the ICL score on `windows` windows of its validation split, at each checkpoint of
    `run` (a run folder, which="all" or "final", or a checkpoint folder). With `tracked`, a
    run folder's RUN/heads.jsonl (track.heads_every) comes along as `result.tracked`."""
    if n_sequences < 1:
        raise LmscopeError(f"--n-sequences must be at least 1, got {n_sequences}")
    paths = select_checkpoints(run, which)
    first = load(paths[0], device=device)
    model, tokenizer = first.model, first.tokenizer
    exclude = () if tokenizer.unk_id is None else (tokenizer.unk_id,)
    with_heads = has_heads(model)
    if model.context_length < 4:
        raise LmscopeError(f"nothing to compute for {run}: its context of {model.context_length} "
                           "tokens is too short for repeated sequences or ICL windows (at least "
                           "4)")
    seq_len = check_seq_len(model, seq_len)  # a bad one is told before any work
    ids = repeated_random_tokens(model.config.vocab_size, seq_len, n_sequences, seed=seed,
                                 exclude=exclude)
    n_allowed = allowed_ids(model.config.vocab_size, exclude).numel()
    text = corpus_windows(first, data, windows=windows) if data is not None else None
    rows: list[HeadRow] = []
    icl: list[IclRow] = []
    for i, path in enumerate(_progress(paths, "heads")):
        ckpt = first if i == 0 else load(path, device=device)
        scores, losses = repeated_run(ckpt.model, ids, n_allowed=n_allowed, heads=with_heads,
                                      batch_size=batch_size)
        for d, values in (scores or {}).items():
            rows += [HeadRow(ckpt.name, ckpt.iteration, layer, head, d, float(values[layer, head]))
                     for layer in range(values.size(0)) for head in range(values.size(1))]
        early = late = math.nan
        if text is not None:
            early, late = icl_losses(ckpt.model, text.ids, text.target_mask(),
                                     batch_size=batch_size)
        icl.append(IclRow(ckpt.name, ckpt.iteration, seq_len, n_sequences, losses.first_half,
                          losses.second_half, losses.uniform,
                          text.corpus if text is not None else "", early, late, late - early))
    skipped = "" if with_heads else (
        f"Head detectors skipped: the model ({first.model_name}) has no attention heads "
        f"(no {pattern_name(0)}).")
    return HeadsResult(Path(run).name, first.trained_on, rows, icl, skipped,
                       tracked=load_tracked(run) if tracked and has_tracked(run) else None)


def has_tracked(run) -> bool:
    """Whether `run` is a run folder whose training tracked the heads (RUN/heads.jsonl)."""
    return RunDir(run).heads_file.is_file()


def load_tracked(run) -> HeadsResult:
    """What training tracked in RUN/heads.jsonl (track.heads_every, train/tracking.py) as a
    HeadsResult: a HeadRow per (iteration, layer, head, detector) and an IclRow per iteration,
    all with checkpoint "tracked" (the ICL score on the validation probe batch, NaN where a row
    holds null), and the training loss of RUN/metrics.jsonl as `train_loss`."""
    path = RunDir(run).heads_file
    if not path.is_file():
        raise LmscopeError(f"{run} has no heads.jsonl: train it with --set track.heads_every=N "
                           "to track the heads during training (or probe its checkpoints)")
    folder = RunDir(run)
    corpus = str(folder.config_dict().get("data", {}).get("corpus", "")) \
        if folder.config_file.is_file() else ""
    rows: list[HeadRow] = []
    icl: list[IclRow] = []
    for r in read_jsonl(path):
        it = int(r["iter"])
        for d in DETECTORS:
            rows += [HeadRow(TRACKED, it, layer, head, d, float(score))
                     for layer, heads in enumerate(r.get(d) or []) for head, score in
                     enumerate(heads)]
        icl.append(IclRow(TRACKED, it, int(r["seq_len"]), int(r["n_sequences"]),
                          _number(r["first_half_loss"]), _number(r["second_half_loss"]),
                          _number(r["uniform_loss"]), corpus, _number(r.get("early_loss")),
                          _number(r.get("late_loss")), _number(r.get("icl_score"))))
    loss = [(int(m["iter"]), float(m["loss"])) for m in folder.metrics().rows
            if m.get("kind") == "train" and m.get("loss") is not None]
    skipped = "" if rows or not icl else "Head detectors skipped: the model has no attention heads."
    return HeadsResult(Path(run).name, corpus, rows, icl, skipped, train_loss=loss)


def _number(value) -> float:
    return math.nan if value is None else float(value)


def heads_probe(run, out_dir, **kwargs) -> dict:
    """`compute(run, **kwargs)`, then `save` into out_dir; returns the files by kind."""
    return compute(run, **kwargs).save(out_dir)


# --- figures and summary -------------------------------------------------------------------

MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*")


def _plot_heads(rows: list[HeadRow], path: Path, title: str) -> Path:
    """A panel per detector, a line per head over iterations (colour: layer, marker: head)."""
    fig, axes = plots.grid(2, 2, title=f"Head scores over training: {title}", width=5.0,
                           height=3.2, sharey=True)
    heads = sorted({(r.layer, r.head) for r in rows})
    handles = {}
    for ax, d in zip([a for row in axes for a in row], DETECTORS, strict=True):
        for layer, head in heads:
            points = sorted((r.iteration, r.score) for r in rows
                            if r.detector == d and r.layer == layer and r.head == head)
            (line,) = ax.plot(*zip(*points, strict=True), color=f"C{layer % 10}",
                              marker=MARKERS[head % len(MARKERS)], markersize=4, alpha=0.8)
            handles.setdefault(f"L{layer} H{head}", line)
        plots.iteration_axis(ax, [r.iteration for r in rows])
        if d == "induction":  # after the axis: an axhline drawn before it widens the symlog x
            ax.axhline(ONSET, color="grey", linestyle=":", linewidth=1)
        ax.set_title(d.replace("_", "-"))
        ax.set_ylabel("score")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    plots.legend_below(fig, list(handles.values()), list(handles), ncol=min(len(handles), 8))
    return plots.save(fig, path)


def _plot_icl(icl: list[IclRow], path: Path, title: str) -> Path:
    with_icl = [r for r in icl if not math.isnan(r.icl_score)]
    fig, axes = plots.panels(2 if with_icl else 1, title=f"In-context learning: {title}",
                             width=5.2, height=3.4)
    iters = [r.iteration for r in icl]
    ax = axes[0]
    ax.plot(iters, [r.first_half_loss for r in icl], "o-", label="first half (no repeat yet)")
    ax.plot(iters, [r.second_half_loss for r in icl], "s-", label="second half (a repeat)")
    ax.plot(iters, [r.uniform_loss for r in icl], "k--", linewidth=1, label="uniform guess")
    ax.set_title("loss on repeated random tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.legend(fontsize=8)
    if with_icl:
        ax2 = axes[1]
        ax2.plot([r.iteration for r in with_icl], [r.icl_score for r in with_icl], "o-",
                 color="C3")
        ax2.set_title(f"ICL score on {with_icl[0].data} (late - early loss)")
        ax2.set_ylabel("nats (negative: uses context)")
    for a in axes:
        plots.iteration_axis(a, iters)
        a.grid(alpha=0.3)
    if with_icl:
        axes[1].axhline(0.0, color="grey", linewidth=1)
    return plots.save(fig, path)


def best_by_layer(rows: list[HeadRow], detector: str) -> dict[int, list[tuple[int, float]]]:
    """{layer: [(iteration, the layer's best head's score), ...]} of a detector, by iteration."""
    best: dict[tuple[int, int], float] = {}
    for r in rows:
        if r.detector == detector:
            key = (r.layer, r.iteration)
            best[key] = max(best.get(key, -math.inf), r.score)
    out: dict[int, list[tuple[int, float]]] = {}
    for (layer, it), score in sorted(best.items()):
        out.setdefault(layer, []).append((it, score))
    return out


def plot_during_training(tracked: HeadsResult, path: Path, title: str = "") -> Path:
    """The phase-change figure of a tracked run: the best induction score per layer, the ICL
    score, and the training and induction losses, against the iteration (a line at the onset)."""
    by_layer = best_by_layer(tracked.rows, "induction")
    n = 2 + bool(by_layer)
    fig, axes = plots.panels(n, title=f"Heads during training: {title or tracked.title}",
                             width=4.6, height=3.4)
    onset = tracked.induction_onset()
    iters = [r.iteration for r in tracked.icl]
    if by_layer:
        ax = axes[0]
        for layer, points in by_layer.items():
            ax.plot(*zip(*points, strict=True), "-", color=f"C{layer % 10}", marker=".",
                    markersize=3, label=f"layer {layer}")
        ax.axhline(ONSET, color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title("best induction score per layer")
        ax.set_ylabel("score")
        ax.legend(fontsize=8)
    ax = axes[n - 2]
    with_icl = [(r.iteration, r.icl_score) for r in tracked.icl if not math.isnan(r.icl_score)]
    if with_icl:
        ax.plot(*zip(*with_icl, strict=True), ".-", color="C3", markersize=3)
    ax.axhline(0.0, color="grey", linewidth=1)
    ax.set_title("ICL score (late - early loss)")
    ax.set_ylabel("nats (negative: uses context)")
    ax = axes[n - 1]
    if tracked.train_loss:
        ax.plot(*zip(*tracked.train_loss, strict=True), "-", color="0.6", linewidth=0.8,
                label="training loss")
    ax.plot(iters, [r.first_half_loss for r in tracked.icl], ".-", color="C0", markersize=3,
            label="random tokens, 1st half")
    ax.plot(iters, [r.second_half_loss for r in tracked.icl], ".-", color="C1", markersize=3,
            label="random tokens, repeated half")
    ax.set_title("losses")
    ax.set_ylabel("loss (nats/token)")
    ax.legend(fontsize=7)
    for a in axes:
        if onset is not None:
            a.axvline(onset, color="grey", linestyle="--", linewidth=1)
        a.set_xlabel("training iteration" + (f" (dashed: onset at {onset})"
                                             if onset is not None else ""))
        a.grid(alpha=0.3)
    return plots.save(fig, path)


def _tracked_summary(t: HeadsResult) -> str:
    """summary.md's section on what training tracked: the onset and a dozen rows."""
    text = ("## During training (RUN/heads.jsonl)\n\n"
            f"Tracked at {len(t.icl)} iterations on the same kind of repeated random sequences; "
            "the ICL score on the validation probe batch.")
    onset = t.induction_onset()
    if t.rows:
        text += (f" Induction onset (best induction head >= {ONSET}): "
                 f"{'never' if onset is None else f'iteration {onset}'}.")
    text += "\n\n"
    pick = sorted({round(i * (len(t.icl) - 1) / 11) for i in range(12)}) if t.icl else []
    best: dict[str, dict[int, float]] = {}  # the best head over all layers, by iteration
    for d in ("induction", "previous_token"):
        best[d] = {}
        for points in best_by_layer(t.rows, d).values():
            for it, score in points:
                best[d][it] = max(best[d].get(it, -math.inf), score)
    rows = []
    for i in pick:
        r = t.icl[i]
        rows.append([r.iteration, best["induction"].get(r.iteration, ""),
                     best["previous_token"].get(r.iteration, ""), r.first_half_loss,
                     r.second_half_loss, "" if math.isnan(r.icl_score) else r.icl_score])
    return text + markdown_table(["iteration", "best induction", "best previous token",
                                  "first half loss", "second half loss", "ICL score"], rows)


def _summary(result: HeadsResult, path: Path) -> Path:
    text = f"# Attention heads and in-context learning: {result.title}\n\n"
    if result.icl:
        r0 = result.icl[0]
        text += (f"Read on {r0.n_sequences} sequences of {r0.seq_len // 2} random tokens "
                 f"repeated once ({r0.seq_len} tokens); scores are mean attention mass on the "
                 "detector's key (analysis/heads.py defines them).\n\n")
    if result.heads_skipped:
        text += result.heads_skipped + "\n\n"
    elif result.rows:
        table = [[d, rank + 1, r.layer, r.head, r.score]
                 for d in DETECTORS for rank, r in enumerate(result.top_heads(d))]
        text += (f"## Top heads at the final checkpoint (iteration {result.final_iteration})\n\n"
                 + markdown_table(["detector", "rank", "layer", "head", "score"], table))
        onset = result.induction_onset()
        text += (f"\nInduction onset (the first iteration at which the best induction head "
                 f"scores at least {ONSET}): {'never' if onset is None else onset}.\n\n")
    if result.icl:
        text += "## Induction losses and ICL score\n\n" + markdown_table(
            ["iteration", "first half loss", "second half loss", "uniform", "ICL score"],
            [[r.iteration, r.first_half_loss, r.second_half_loss, r.uniform_loss,
              "" if math.isnan(r.icl_score) else r.icl_score] for r in result.icl])
        data = result.icl[0].data
        text += ("\nICL score: mean loss on the last tenth of each window minus that a tenth in, "
                 + (f"on {data} (negative: the model uses its context).\n" if data else
                    "not computed (no corpus given).\n"))
    if result.tracked is not None:
        text += "\n" + _tracked_summary(result.tracked)
    atomic_write_text(path, text)
    return path
