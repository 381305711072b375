"""RunDir: the one reader of a run folder. Everything that reads a run asks it.

    RUN/config.toml       the full resolved config               RunDir.config()
    RUN/tokenizer.json    the tokenizer (also in every checkpoint)
    RUN/metrics.jsonl     one JSON object per line               RunDir.metrics() -> Metrics
    RUN/attention.jsonl   attention tracked during training      RunDir.attention()
    RUN/samples.md        the sample written at each checkpoint  RunDir.samples()
    RUN/summary.json      final figures, when the run ended      RunDir.summary() -> RunSummary
    RUN/loss.png          the curves
    RUN/checkpoints/      iter_NNNNNNN/, best/, final/, last/    RunDir.checkpoints(), ...

The rows of metrics.jsonl (written by train/trainer.py):

    {"kind": "train", "iter", "loss", "lr", "tokens_per_s", "elapsed_s"[, "skipped_steps"]}
    {"kind": "eval", "iter", "train_loss", "val_loss", "lr", "elapsed_s"[, "val_loss:<corpus>"...]
                     [, "epoch"]}
    {"kind": "final", "iter", "val_loss_full", "val_bits_per_char_full"[, ...], "elapsed_s"}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from lmscope.config import RunConfig, config_from_dict
from lmscope.io import atomic_write_json, existing_dir, read_jsonl
from lmscope.run.checkpoint import list_checkpoints, resolve_checkpoint
from lmscope.run.lock import FolderLock, holds_files, is_lock_file
from lmscope.settings import load_toml


@dataclass(frozen=True)
class Evaluation:
    """One `"kind": "eval"` row of metrics.jsonl: the loss estimates at an iteration."""

    iter: int
    train_loss: float
    val_loss: float
    row: dict = field(compare=False, repr=False)  # the row as written (val_loss:<corpus>, ...)

    def val_loss_of(self, corpus: str) -> float:
        """The validation loss estimated on another corpus (train.eval_corpora, or a part of a
        mixture); NaN where this evaluation has none."""
        return self.row.get(f"val_loss:{corpus}", math.nan)


@dataclass(frozen=True)
class Metrics:
    """The rows of metrics.jsonl, oldest first, with typed views of them."""

    rows: list[dict]

    @property
    def evaluations(self) -> list[Evaluation]:
        """Every evaluation with a validation loss, oldest first."""
        return [Evaluation(r["iter"], r["train_loss"], r["val_loss"], r) for r in self.rows
                if r.get("kind") == "eval" and isinstance(r.get("val_loss"), (int, float))]

    @property
    def train_losses(self) -> list[tuple[int, float]]:
        """(iteration, loss) of every logged training step with a loss (skipped steps have
        none)."""
        return [(r["iter"], r["loss"]) for r in self.rows
                if r.get("kind") == "train" and isinstance(r.get("loss"), (int, float))]


@dataclass
class TrainResult:
    """What `lmscope.train` returns: how far the run got and what it reached."""

    run_dir: Path
    iterations: int
    best_val_loss: float  # lowest estimated validation loss seen at an evaluation
    val_loss: float  # whole-split validation loss of the final model (nats per token)
    val_bits_per_char: float
    elapsed_s: float
    tokens_per_s: float


@dataclass
class RunSummary(TrainResult):
    """summary.json: the TrainResult of a finished run and what else it reports."""

    val_loss_is: str = "whole split"  # or "estimate" (train.final_eval=false)
    params: int = 0
    corpus: str = ""
    model: str = ""
    processes: int = 1
    attention_tracking_s: float | None = None
    dynamics_tracking_s: float | None = None
    skipped_steps: int = 0
    # "corpus/split" -> the fraction of its characters outside the vocabulary (trained on as
    # <unk>; left out of other corpora's losses); empty when every character is in it
    oov_rate: dict = field(default_factory=dict)
    # seconds of this session in each phase of the run: start (folder, tokenizer, token files,
    # model), steps, evaluate (the estimates), tracking, checkpoints, samples, final_eval (the
    # whole-split loss), plot, and total (the whole train() call, from its start to this file)
    phase_seconds: dict = field(default_factory=dict)

    def save(self, path: Path) -> None:
        atomic_write_json(path, {f.name: str(v) if isinstance(v, Path) else v
                                 for f in fields(self) for v in [getattr(self, f.name)]})

    @classmethod
    def load(cls, path: Path) -> RunSummary:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        names = {f.name for f in fields(cls)}
        return cls(**{k: Path(v) if k == "run_dir" else v for k, v in d.items() if k in names})


class RunDir:
    """A run folder (see the module docstring). Reading never writes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # --- files ----------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / "config.toml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def attention_file(self) -> Path:
        return self.path / "attention.jsonl"

    @property
    def heads_file(self) -> Path:
        return self.path / "heads.jsonl"

    @property
    def dynamics_file(self) -> Path:
        return self.path / "dynamics.jsonl"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def samples_file(self) -> Path:
        return self.path / "samples.md"

    @property
    def attention_maps_dir(self) -> Path:
        """Raw attention maps kept during training (track.save_maps=true)."""
        return self.path / "attention"

    @property
    def loss_plot(self) -> Path:
        return self.path / "loss.png"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    # --- what it holds --------------------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether training has written this folder (it has metrics.jsonl)."""
        return self.metrics_file.is_file()

    def is_finished(self) -> bool:
        return self.summary_file.is_file()

    def holds_files(self) -> bool:
        """Whether the folder holds anything but the lock file a writer (perhaps a killed one)
        left."""
        return holds_files(self.path)

    def start_files(self) -> list[Path]:
        """What a run writes before it saves its first state to resume from."""
        return [self.config_file, self.tokenizer_file, self.metrics_file, self.attention_file,
                self.heads_file, self.dynamics_file, self.attention_maps_dir, self.path / "tensorboard",
                self.checkpoints_dir]

    def holds_only_a_start(self) -> bool:
        """Whether the folder holds nothing but what a run writes before its first saved state
        (a start that was killed): no progress to resume, and no file of anyone else."""
        if not self.path.is_dir() or self.resumable_state() is not None:
            return False
        names = {p.name for p in self.start_files()}
        return all(p.name in names or is_lock_file(p) or
                   (p.name.startswith(".") and ".tmp" in p.name)  # a write cut short
                   for p in self.path.iterdir())

    @property
    def resumes_file(self) -> Path:
        return self.path / "resumes.jsonl"

    def resumes(self) -> list[dict]:
        """One row per resume, oldest first: {"iter", "time", "lmscope", "changed": {"train.lr":
        [old, new], ...}}; [] for a run never resumed."""
        return read_jsonl(self.resumes_file) if self.resumes_file.is_file() else []

    def started_config_dict(self) -> dict:
        """config.toml as nested dicts: the config the run started with, never rewritten (a
        missing or invalid file is one error)."""
        return load_toml(self.config_file)

    def config_dict(self) -> dict:
        """The config in effect now: config.toml with the changes of every resume applied."""
        raw = self.started_config_dict()
        for row in self.resumes():
            for key, (_, new) in row.get("changed", {}).items():
                section, name = key.split(".", 1)
                if new is None:  # a value TOML cannot hold: the field's default (None)
                    raw.setdefault(section, {}).pop(name, None)
                else:
                    raw.setdefault(section, {})[name] = new
        return raw

    def config(self) -> RunConfig:
        """The config in effect now (config_dict)."""
        return config_from_dict(self.config_dict())

    def metrics(self) -> Metrics:
        """metrics.jsonl; a line torn by a crash is skipped, a missing file gives no rows."""
        return Metrics(read_jsonl(self.metrics_file) if self.metrics_file.is_file() else [])

    def attention(self) -> list[dict]:
        """The rows of attention.jsonl (attention tracked during training; see
        metrics/attention.py for the keys); [] when the run tracked none."""
        return read_jsonl(self.attention_file) if self.attention_file.is_file() else []

    def summary(self) -> RunSummary | None:
        """summary.json, or None while the run has not finished."""
        return RunSummary.load(self.summary_file) if self.is_finished() else None

    def checkpoints(self) -> list[Path]:
        """Every checkpoint folder, oldest iteration first (iter_*, then best, final, last)."""
        return list_checkpoints(self.path)

    def final_checkpoint(self) -> Path:
        """checkpoints/final, else the latest checkpoint."""
        return resolve_checkpoint(self.path)

    def resumable_state(self) -> Path | None:
        """checkpoints/last when it holds a training state to resume from, else None."""
        last = existing_dir(self.checkpoints_dir / "last")
        return last if last is not None and (last / "train_state.json").is_file() else None

    def samples(self) -> dict[str, str]:
        """The sample written at each scheduled checkpoint and at final: {checkpoint: text}."""
        out = {}
        for ckpt in self.checkpoints():
            if ckpt.name.startswith(("iter_", "final")) and (ckpt / "sample.txt").is_file():
                out[ckpt.name] = (ckpt / "sample.txt").read_text(encoding="utf-8",
                                                                 errors="replace")
        return out

    def lock(self, log=print) -> FolderLock:
        """The lock a process holds while it writes this folder (run/lock.py)."""
        return FolderLock(self.path, "run folder", log=log)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl, oldest first; a line torn by a crash is skipped (a
    folder without one: FileNotFoundError, as before RunDir existed)."""
    return read_jsonl(RunDir(run_dir).metrics_file)

