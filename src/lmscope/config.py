"""Run configuration: dataclasses, loaded from TOML presets and files, overridden with `--set key=value`.

A config file mirrors the dataclasses, one table per section:

    [model]            # model.name picks the architecture; the other keys are its config
    name = "gpt"
    n_layer = 4
    [data]
    corpus = "shakespeare"
    [train]
    max_iters = 2000

A [track] table sets what is measured during training besides the loss (attention metrics, head
detectors), a [log] table where it is logged besides RUN/metrics.jsonl (TensorBoard).

Layers, later wins: defaults < preset < --config file < --data/--model flags < --set overrides.
Every key is checked against the dataclasses; an unknown key is an error that suggests the nearest
valid one, and every value is checked against its field's type.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lmscope.data.corpora import Mixture, absolute_if_path
from lmscope.device import pick_device
from lmscope.errors import ConfigError, LmscopeError
from lmscope.models import MODELS, model_config_class
from lmscope.settings import build, dumps_toml, load_toml, loads_toml, merge, suggest
from lmscope.settings import parse_override as parse_setting


@dataclass
class DataConfig:
    # a registry name (`lmscope data list`) or a path to a text file/folder, or a mixture of them
    # with sampling weights, "tinystories:0.7+3seqs:0.3" (--data tinystories:0.7 --data 3seqs:0.3)
    corpus: str = "shakespeare"
    tokenizer: str = "char"  # char | byte | bpe
    bpe_vocab_size: int = 1024  # vocabulary size a BPE tokenizer is trained to
    vocab_from: list[str] = field(default_factory=list)  # more corpora whose characters join the char vocabulary
    val_fraction: float = 0.1  # tail fraction held out for validation (corpora without a fixed split)
    # the largest fraction of a training corpus's characters that may fall outside the vocabulary
    # (a fine-tuning with train.init_from, whose tokenizer is the checkpoint's); above it the run
    # stops before it starts. Those characters are trained on as <unk> and never sampled.
    max_oov_rate: float = 0.05

    def validate(self) -> None:
        if self.tokenizer not in ("char", "byte", "bpe"):
            raise ConfigError(f"data.tokenizer must be char, byte or bpe, got {self.tokenizer!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be between 0 and 1, got {self.val_fraction}")
        if not 0.0 <= self.max_oov_rate <= 1.0:
            raise ConfigError(f"data.max_oov_rate must be between 0 and 1, got {self.max_oov_rate}")
        if self.bpe_vocab_size < 257:
            raise ConfigError(f"data.bpe_vocab_size must be at least 257, got {self.bpe_vocab_size}")
        if not self.corpus:
            raise ConfigError("data.corpus is empty: give --data CORPUS")
        try:
            self.mixture  # noqa: B018 (parsed here, once: an invalid spec is an error now)
        except LmscopeError as e:
            raise ConfigError(str(e)) from None

    @functools.cached_property
    def mixture(self) -> Mixture:
        """`corpus` parsed, once: its parts and their weights."""
        return Mixture.parse(self.corpus)


@dataclass
class TrainConfig:
    max_iters: int = 5000
    epochs: int = 0  # > 0: train in epochs instead (max_iters = epochs x steps per epoch)
    max_steps_per_epoch: int = 0  # cap on the steps of an epoch (0: one pass over the train split)
    batch_size: int = 64  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # learning rate at the end of the cosine decay
    warmup_iters: int = 100  # linear warm-up from 0 to lr
    lr_decay_iters: int = 0  # the decay ends here (then min_lr); 0 means max_iters
    # cosine: warm-up, then cosine decay to min_lr; wsd: warm-up, stable at lr, then a linear
    # decay to min_lr over the last decay_frac of the iterations (the speedrun's trapezoid)
    schedule: str = "cosine"
    decay_frac: float = 0.4  # wsd: the share of the iterations (to lr_decay_iters) that decay
    weight_decay: float = 0.1  # AdamW decay, applied to matrices only
    # adamw, or muon: Muon on a GPT's block matrices (at muon_lr, following the schedule's
    # shape), AdamW on the rest (train/optimizers.py)
    optimizer: str = "adamw"
    muon_lr: float = 0.02
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_interval: int = 250  # estimate train/val loss every this many iterations
    eval_iters: int = 200  # batches per estimate
    log_interval: int = 10  # write the training loss every this many iterations
    checkpoint_at: list[int] | None = None  # iterations that keep a checkpoint ([] for none);
    checkpoint_every: int = 0  # also keep one every this many iterations (0: off)
    # with neither set, checkpoints are kept at 100, 200, 500, 1000, 2000, 5000, ...
    # "log": Pythia's schedule, iterations 0, 1, 2, 4, ..., up to checkpoint_log_until, then every
    # checkpoint_every (0: every 1000), besides checkpoint_at; "auto": as the line above says
    checkpoint_schedule: str = "auto"
    checkpoint_log_until: int = 512  # the last power of two the "log" schedule keeps is <= this
    sample_prompt: str = "\n"  # prompt of the sample written at each checkpoint
    sample_tokens: int = 200  # its length in tokens (0: no samples)
    final_eval: bool = True  # whole-split validation loss at the end (else the last estimate)
    skip_nonfinite: bool = False  # skip (and count) steps with a non-finite loss or gradient
    # instead of stopping the run there
    init_from: str = ""  # a checkpoint (or run folder) to fine-tune; its model and tokenizer are used
    eval_corpora: list[str] = field(default_factory=list)  # more corpora whose val loss is estimated
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bfloat16 autocast on CUDA where supported, else float32) | float32 | bfloat16
    compile: bool = False  # torch.compile the model

    def validate(self) -> None:
        positive = ("max_iters", "batch_size", "grad_accum", "eval_interval", "eval_iters",
                    "log_interval")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "warmup_iters", "lr_decay_iters",
                     "checkpoint_every", "sample_tokens", "epochs", "max_steps_per_epoch"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must not be negative, got {getattr(self, name)}")
        if self.lr == 0:
            raise ConfigError("train.lr must be positive")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.min_lr > self.lr:
            raise ConfigError(f"train.min_lr ({self.min_lr}) must not exceed train.lr ({self.lr})")
        if self.optimizer not in ("adamw", "muon"):
            raise ConfigError(f"train.optimizer must be adamw or muon, got {self.optimizer!r}")
        if not self.muon_lr > 0:
            raise ConfigError(f"train.muon_lr must be positive, got {self.muon_lr}")
        if self.schedule not in ("cosine", "wsd"):
            raise ConfigError(f"train.schedule must be cosine or wsd, got {self.schedule!r}")
        if not 0.0 < self.decay_frac <= 1.0:
            raise ConfigError(f"train.decay_frac must be in (0, 1] (the share of the iterations "
                              f"that decay), got {self.decay_frac}")
        if self.checkpoint_schedule not in ("auto", "log"):
            raise ConfigError(f"train.checkpoint_schedule must be auto or log, got "
                              f"{self.checkpoint_schedule!r}")
        if self.checkpoint_log_until < 0:
            raise ConfigError(f"train.checkpoint_log_until must not be negative, got "
                              f"{self.checkpoint_log_until}")
        if any(i < 0 for i in self.checkpoint_at or ()):
            raise ConfigError(f"train.checkpoint_at must list iterations >= 0, got {self.checkpoint_at}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"train.dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")

    def checkpoint_iters(self) -> list[int]:
        """The iterations that keep a checkpoint (the final one is kept besides). With nothing
        configured: 100, 200, 500, 1000, 2000, ... With checkpoint_schedule "log" (Pythia's,
        Biderman et al. 2023): 0, 1, 2, 4, ..., 2^k <= checkpoint_log_until, then every
        checkpoint_every (1000 when 0) after it."""
        iters = set(self.checkpoint_at or ())
        if self.checkpoint_schedule == "log":
            iters.add(0)
            power, last = 1, 0
            while power <= self.checkpoint_log_until:
                iters.add(power)
                power, last = power * 2, power
            every = self.checkpoint_every or 1000
            first = (last // every + 1) * every  # the first multiple after the last power
            iters.update(range(first, self.max_iters, every))
        elif self.checkpoint_every:
            iters.update(range(self.checkpoint_every, self.max_iters, self.checkpoint_every))
        if (self.checkpoint_at is None and not self.checkpoint_every
                and self.checkpoint_schedule == "auto"):
            scale = 100
            while scale < self.max_iters:
                iters.update(m * scale for m in (1, 2, 5) if m * scale < self.max_iters)
                scale *= 10
        return sorted(i for i in iters if i < self.max_iters)


@dataclass
class TrackConfig:
    """What is measured during training besides the loss (see train/tracking.py)."""

    attention_every: int = 100  # attention metrics on a fixed probe batch every N iterations (0: off)
    attention_batch: int = 4  # sequences in the probe batch (windows of the validation split)
    save_maps: bool = False  # also keep the raw attention maps (large) under RUN/attention/
    # head detectors (gpt), induction losses and the ICL score every N iterations, in
    # RUN/heads.jsonl (0: off; none: with the attention metrics, every attention_every;
    # metrics/heads.py defines them, train/tracking.py says on what)
    heads_every: int | None = None
    # weight and probe-gradient norms and effective ranks every N iterations, in RUN/dynamics.jsonl
    # (0: off; none: every attention_every; metrics/dynamics.py defines them), any architecture
    dynamics_every: int | None = None

    def heads_interval(self) -> int:
        """How often the heads are tracked: heads_every, or attention_every when it is unset."""
        return self.attention_every if self.heads_every is None else self.heads_every

    def dynamics_interval(self) -> int:
        """How often the learning dynamics are tracked: dynamics_every, or attention_every."""
        return self.attention_every if self.dynamics_every is None else self.dynamics_every

    def validate(self) -> None:
        for name in ("attention_every", "heads_every", "dynamics_every"):
            if (getattr(self, name) or 0) < 0:
                raise ConfigError(f"track.{name} must not be negative, got "
                                  f"{getattr(self, name)}")
        if self.attention_batch < 1:
            raise ConfigError(f"track.attention_batch must be at least 1, got "
                              f"{self.attention_batch}")


@dataclass
class LogConfig:
    """Where training is logged besides RUN/metrics.jsonl and RUN/attention.jsonl. May change on
    resume."""

    # also write the same scalars as TensorBoard event files in RUN/tensorboard/ (needs the
    # tensorboard package: pip install "lmscope[tensorboard]"; see train/tensorboard.py)
    tensorboard: bool = False


@dataclass
class RunConfig:
    model_name: str = "gpt"
    model: Any = None  # the architecture's own config dataclass, e.g. GPTConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self):
        if self.model is None:
            self.model = model_config_class(self.model_name)()

    def validate(self) -> None:
        self.model.validate()
        self.data.validate()
        self.train.validate()
        self.track.validate()
        if self.train.optimizer == "muon" and self.model_name != "gpt":
            raise ConfigError(f"train.optimizer=muon trains a GPT's block matrices; this is a "
                              f"{self.model_name!r} model (use train.optimizer=adamw)")

    def to_dict(self) -> dict:
        model = {"name": self.model_name, **dataclasses.asdict(self.model)}
        model.pop("vocab_size", None)  # derived from the tokenizer, never configured
        return {"model": model, "data": dataclasses.asdict(self.data),
                "train": dataclasses.asdict(self.train), "track": dataclasses.asdict(self.track),
                "log": dataclasses.asdict(self.log)}

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    def with_absolute_paths(self) -> RunConfig:
        """A copy in which every corpus given as a path (data.corpus, data.vocab_from,
        train.eval_corpora) is absolute, so the run resumes from any working folder."""
        out = copy.deepcopy(self)
        out.data = dataclasses.replace(  # a new DataConfig: its spec is parsed anew
            self.data, corpus=str(self.data.mixture.absolute()),
            vocab_from=[absolute_if_path(c) for c in self.data.vocab_from])
        out.train.eval_corpora = [absolute_if_path(c) for c in out.train.eval_corpora]
        return out


RESUMABLE = ("train", "track", "log")  # the sections a resumed run may change


def check_resume(saved: RunConfig, config: RunConfig) -> None:
    """Refuse to resume a run saved with `saved` under a `config` whose model or data differ.

    Paths are compared made absolute. With train.init_from the model is the checkpoint's, not
    the config's, so only the data is compared."""
    config, saved = config.with_absolute_paths(), saved.with_absolute_paths()
    changed = []
    if not config.train.init_from and (config.model_name, config.model.__class__,
                                       config.to_dict()["model"]) != (
            saved.model_name, saved.model.__class__, saved.to_dict()["model"]):
        changed.append("model")
    if config.data != saved.data:
        changed.append("data")
    if changed:
        raise LmscopeError(f"cannot change the [{changed[0]}] config of a run when resuming; "
                           f"only {', '.join(f'[{s}]' for s in RESUMABLE[:-1])} and "
                           f"[{RESUMABLE[-1]}] values may change")
    if config.train.optimizer != saved.train.optimizer:  # its saved state is another's
        raise LmscopeError(f"cannot change train.optimizer ({saved.train.optimizer} -> "
                           f"{config.train.optimizer}) when resuming: the run's optimizer state "
                           "is its own; start a new run")


# --- building configs from nested dicts ----------------------------------------------------------

SECTIONS = ("model", "data", "train", "track", "log")


def config_from_dict(raw: dict) -> RunConfig:
    """Build and validate a RunConfig from nested dicts (as read from TOML), checking every key and type."""
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"unknown config section {key!r}{suggest(key, SECTIONS)}; "
                          f"sections are {', '.join(SECTIONS)}")
    for section in SECTIONS:
        if not isinstance(raw.get(section, {}), dict):
            raise ConfigError(f"config section [{section}] must be a table, "
                              f"got {raw[section]!r}")
    model_raw = dict(raw.get("model", {}))
    name = model_raw.pop("name", "gpt")
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(f"unknown model {name!r}{suggest(str(name), MODELS)}; "
                          f"models are {', '.join(sorted(MODELS))}")
    config = RunConfig(
        model_name=name,
        model=build(model_config_class(name), model_raw, "model", skip=("vocab_size",)),
        data=build(DataConfig, raw.get("data", {}), "data"),
        train=build(TrainConfig, raw.get("train", {}), "train"),
        track=build(TrackConfig, raw.get("track", {}), "track"),
        log=build(LogConfig, raw.get("log", {}), "log"),
    )
    config.validate()
    return config


# --- layers: presets, files, overrides -----------------------------------------------------------

def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("lmscope.presets").iterdir()
                  if p.name.endswith(".toml"))


def load_preset(name: str) -> dict:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}{suggest(name, preset_names())}; "
                          f"presets are {', '.join(preset_names())}")
    return loads_toml(resources.files("lmscope.presets").joinpath(f"{name}.toml").read_text())


def parse_override(item: str) -> dict:
    """'train.max_iters=300' -> {'train': {'max_iters': 300}} (settings.parse_override), with the
    nearest config key suggested for a key that is not section.name."""
    return parse_setting(item, known_keys())


def known_keys() -> list[str]:
    """Every section.key of every config section and model."""
    keys = [f"{s}.{f.name}" for s, cls in (("data", DataConfig), ("train", TrainConfig),
                                           ("track", TrackConfig), ("log", LogConfig))
            for f in dataclasses.fields(cls)]
    for name in MODELS:
        keys += [f"model.{f.name}" for f in dataclasses.fields(model_config_class(name))]
    return keys


# The preset a command-line run given no --preset or --config starts from on a CPU: there the
# dataclasses' defaults (nanoGPT's 10.6M baby GPT, 5,000 iterations, 200-batch estimates) take
# hours, this one minutes (README: "under 2 minutes on 2 quiet CPU cores").
CPU_PRESET = "shakespeare-char-cpu"


def cpu_default_preset(config: RunConfig) -> str | None:
    """CPU_PRESET when a run configured without a preset (`config`) is a GPT that would train on
    the CPU, else None (a GPU, or another architecture, keeps the defaults)."""
    if config.model_name == "gpt" and pick_device(config.train.device).type == "cpu":
        return CPU_PRESET
    return None


def resolve_config(*, preset: str | None = None, config_file: str | Path | None = None,
                   base: dict | None = None, data: str | None = None, model: str | None = None,
                   overrides: list[str] = ()) -> RunConfig:
    """Stack the layers (later wins) and build a validated RunConfig."""
    raw: dict = {}
    if preset:
        raw = merge(raw, load_preset(preset))
    if base:
        raw = merge(raw, base)
    if config_file:
        raw = merge(raw, load_toml(config_file))
    if data:
        raw = merge(raw, {"data": {"corpus": data}})
    if model:
        raw = merge(raw, {"model": {"name": model}})
    for item in overrides:
        raw = merge(raw, parse_override(item))
    return config_from_dict(raw)
