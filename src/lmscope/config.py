"""Run configuration: dataclasses, loaded from TOML presets and files, overridden with `--set key=value`.

A config file mirrors the dataclasses, one table per section:

    [model]            # model.name picks the architecture; the other keys are its config
    name = "gpt"
    n_layer = 4
    [data]
    corpus = "shakespeare"
    [train]
    max_iters = 2000

A [track] table sets what is measured during training besides the loss (attention metrics), a
[log] table where it is logged besides RUN/metrics.jsonl (TensorBoard).

Layers, later wins: defaults < preset < --config file < --data/--model flags < --set overrides.
Every key is checked against the dataclasses; an unknown key is an error that suggests the nearest
valid one, and every value is checked against its field's type.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lmscope.data import corpora
from lmscope.errors import ConfigError, LmscopeError
from lmscope.models import MODELS, model_config_class

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class DataConfig:
    # a registry name (`lmscope data list`) or a path to a text file/folder, or a mixture of them
    # with sampling weights, "tinystories:0.7+3seqs:0.3" (--data tinystories:0.7 --data 3seqs:0.3)
    corpus: str = "shakespeare"
    tokenizer: str = "char"  # char | byte | bpe
    bpe_vocab_size: int = 1024  # vocabulary size a BPE tokenizer is trained to
    vocab_from: list[str] = field(default_factory=list)  # more corpora whose characters join the char vocabulary
    val_fraction: float = 0.1  # tail fraction held out for validation (corpora without a fixed split)

    def validate(self) -> None:
        if self.tokenizer not in ("char", "byte", "bpe"):
            raise ConfigError(f"data.tokenizer must be char, byte or bpe, got {self.tokenizer!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.bpe_vocab_size < 257:
            raise ConfigError(f"data.bpe_vocab_size must be at least 257, got {self.bpe_vocab_size}")
        if not self.corpus:
            raise ConfigError("data.corpus is empty: give --data CORPUS")
        try:
            corpora.parse_mixture(self.corpus)
        except LmscopeError as e:
            raise ConfigError(str(e)) from None


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
    lr_decay_iters: int = 0  # cosine decay length; 0 means max_iters
    weight_decay: float = 0.1  # AdamW decay, applied to matrices only
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_interval: int = 250  # estimate train/val loss every this many iterations
    eval_iters: int = 200  # batches per estimate
    log_interval: int = 10  # write the training loss every this many iterations
    checkpoint_at: list[int] | None = None  # iterations that keep a checkpoint ([] for none);
    checkpoint_every: int = 0  # also keep one every this many iterations (0: off)
    # with neither set, checkpoints are kept at 100, 200, 500, 1000, 2000, 5000, ...
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
        if any(i < 0 for i in self.checkpoint_at or ()):
            raise ConfigError(f"train.checkpoint_at must list iterations >= 0, got {self.checkpoint_at}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"train.dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")

    def checkpoint_iters(self) -> list[int]:
        """The iterations that keep a checkpoint. With nothing configured: 100, 200, 500, 1000, 2000, ..."""
        iters = set(self.checkpoint_at or ())
        if self.checkpoint_every:
            iters.update(range(self.checkpoint_every, self.max_iters, self.checkpoint_every))
        if self.checkpoint_at is None and not self.checkpoint_every:
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

    def validate(self) -> None:
        if self.attention_every < 0:
            raise ConfigError(f"track.attention_every must not be negative, got "
                              f"{self.attention_every}")
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

    def to_dict(self) -> dict:
        model = {"name": self.model_name, **dataclasses.asdict(self.model)}
        model.pop("vocab_size", None)  # derived from the tokenizer, never configured
        return {"model": model, "data": dataclasses.asdict(self.data),
                "train": dataclasses.asdict(self.train), "track": dataclasses.asdict(self.track),
                "log": dataclasses.asdict(self.log)}

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())


# --- building configs from nested dicts ----------------------------------------------------------

SECTIONS = ("model", "data", "train", "track", "log")


def config_from_dict(raw: dict) -> RunConfig:
    """Build and validate a RunConfig from nested dicts (as read from TOML), checking every key and type."""
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"unknown config section {key!r}{_suggest(key, SECTIONS)}; "
                          f"sections are {', '.join(SECTIONS)}")
    for section in SECTIONS:
        if not isinstance(raw.get(section, {}), dict):
            raise ConfigError(f"config section [{section}] must be a table, "
                              f"got {raw[section]!r}")
    model_raw = dict(raw.get("model", {}))
    name = model_raw.pop("name", "gpt")
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(f"unknown model {name!r}{_suggest(str(name), MODELS)}; "
                          f"models are {', '.join(sorted(MODELS))}")
    config = RunConfig(
        model_name=name,
        model=_build(model_config_class(name), model_raw, "model"),
        data=_build(DataConfig, raw.get("data", {}), "data"),
        train=_build(TrainConfig, raw.get("train", {}), "train"),
        track=_build(TrackConfig, raw.get("track", {}), "track"),
        log=_build(LogConfig, raw.get("log", {}), "log"),
    )
    config.validate()
    return config


def _build(cls, values: dict, section: str):
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "vocab_size"}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown config key {section}.{key}"
                              f"{_suggest(key, fields, prefix=section + '.')}")
        kwargs[key] = coerce(value, typing.get_type_hints(cls)[key], f"{section}.{key}")
    return cls(**kwargs)


def coerce(value, hint, key: str):
    """Check `value` against the type hint of a config field; convert where it is unambiguous."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or value == "none":
            return None
        return coerce(value, options[0], key)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, list):
            value = [value]
        return [coerce(v, item, key) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None and math.isfinite(number):
            return number
    elif hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key} must be {_type_name(hint)}, got {value!r}")


def _type_name(hint) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, str(hint))


def _suggest(key: str, options, prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


# --- layers: presets, files, overrides -----------------------------------------------------------

def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("lmscope.presets").iterdir()
                  if p.name.endswith(".toml"))


def load_preset(name: str) -> dict:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}{_suggest(name, preset_names())}; "
                          f"presets are {', '.join(preset_names())}")
    return tomllib.loads(resources.files("lmscope.presets").joinpath(f"{name}.toml").read_text())


def load_toml(path: str | Path, what: str = "config file") -> dict:
    """Read a TOML file; a missing, unreadable or invalid one is a ConfigError naming `what`."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise ConfigError(f"{what} {path} is not a text file ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid TOML: {e}") from None


def merge(base: dict, update: dict) -> dict:
    """Merge nested dicts: values of `update` win, tables merge key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(item: str) -> dict:
    """'train.max_iters=300' -> {'train': {'max_iters': 300}}. Values are read as TOML literals,
    falling back to the plain string (so `data.corpus=math` needs no quotes)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set key must look like section.name (e.g. train.max_iters), got {key!r}"
                          f"{_suggest_full_key(key)}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return {parts[0]: {parts[1]: value}}


def _suggest_full_key(key: str) -> str:
    keys = [f"{s}.{f.name}" for s, cls in (("data", DataConfig), ("train", TrainConfig),
                                           ("track", TrackConfig), ("log", LogConfig))
            for f in dataclasses.fields(cls)]
    for name in MODELS:
        keys += [f"model.{f.name}" for f in dataclasses.fields(model_config_class(name))]
    return _suggest(key, keys)


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


def dumps_toml(d: dict) -> str:
    """Write a config dict (tables of scalars and lists) as TOML."""
    lines = []
    for section, table in d.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        # JSON string escapes are valid TOML basic-string escapes
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")
