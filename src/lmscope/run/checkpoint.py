"""Checkpoints: a folder per checkpoint, self-describing, checked, loaded without unpickling.

    <checkpoint>/
        model.safetensors        the weights (safetensors: plain tensors, no code)
        meta.json                format version, model name and config, tokenizer, iteration,
                                 losses, and the sha256 of every other file of the folder;
                                 final/ and last/ add "val_evals": the trainer's whole-split
                                 EvalResults and the token files they read (lmscope.evaluate
                                 reads them back rather than evaluating those weights again)
        sample.txt               text the model wrote at this point (when sampling is on)
        train_state.safetensors  optimizer tensors and RNG states (only where training can resume)
        train_state.json         optimizer hyperparameters, data sampler state

A run folder keeps its checkpoints under `checkpoints/`: `iter_0000500/` at scheduled iterations,
`best/` (lowest validation loss), `final/`, and `last/` (the newest state, for resuming).
Every checkpoint folder is written whole under a temporary name and then renamed into place.

Integrity: meta.json records `"sha256": {file: digest}` for the other files and `"meta_sha256"`,
the digest of its own content (canonical JSON without that key). Loading checks the weights and
meta.json against them, resuming checks the training state, so a damaged or changed byte is a
one-line error naming the file rather than wrong numbers. Checkpoints written before these keys
existed load without the check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmscope.data.corpora import corpus_label
from lmscope.data.tokenizers import Tokenizer, tokenizer_from_dict
from lmscope.device import pick_device
from lmscope.errors import CheckpointError, LmscopeError
from lmscope.io import existing_dir, writing_dir
from lmscope.models import MODELS, build_model
from lmscope.models.quantize import for_sampling

FORMAT = "lmscope-checkpoint"
VERSION = 1
TRAIN_STATE_FILES = ("train_state.safetensors", "train_state.json")


@dataclass
class Checkpoint:
    """A loaded model with everything needed to use it: tokenizer, config, where it came from."""

    model: torch.nn.Module
    tokenizer: Tokenizer
    meta: dict
    path: Path
    model_name: str = "gpt"

    @property
    def iteration(self) -> int:
        return int(self.meta.get("iter", 0))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def trained_on(self) -> str:
        """The short name of the corpus the model was trained on (last, for fine-tuned ones)."""
        if isinstance(self.meta.get("corpus"), str):  # the registry name, or the file's stem
            return self.meta["corpus"]
        corpus = self.meta.get("run_config", {}).get("data", {}).get("corpus", "")
        return corpus_label(corpus) if corpus else ""

    def sampling_model(self, precision: str = "float32") -> torch.nn.Module:
        """The model for generation in `precision` (float32, bfloat16 or int8); converted once."""
        cache = self.__dict__.setdefault("_sampling_models", {})
        if precision not in cache:
            cache[precision] = for_sampling(self.model, precision)
        return cache[precision]


def _tied_names(model: torch.nn.Module) -> dict[str, str]:
    """Names in the state dict that are the very same tensor as an earlier name (tied weights)."""
    first: dict[int, str] = {}
    tied = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in first:
            tied[name] = first[id(t)]
        else:
            first[id(t)] = name
    return tied


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights to store: tied tensors once, contiguous, on the CPU."""
    tied = _tied_names(model)
    return {name: t.detach().to("cpu").contiguous()
            for name, t in model.state_dict().items() if name not in tied}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _meta_digest(meta: dict) -> str:
    """The sha256 of meta.json's content without its own digest, as canonical JSON."""
    content = {k: v for k, v in meta.items() if k != "meta_sha256"}
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_checkpoint(path: Path, model: torch.nn.Module, *, model_name: str, model_config,
                    tokenizer: Tokenizer, meta: dict, sample: str | None = None,
                    train_state: tuple[dict, dict] | None = None) -> None:
    """Write a checkpoint folder atomically (a temporary folder renamed into place)."""
    path = Path(path)
    with writing_dir(path, f"the checkpoint {path}") as tmp:
        save_file(_state_dict(model), tmp / "model.safetensors", metadata={"format": FORMAT})
        if sample is not None:
            (tmp / "sample.txt").write_text(sample, encoding="utf-8")
        if train_state is not None:
            tensors, info = train_state
            save_file(tensors, tmp / "train_state.safetensors")
            (tmp / "train_state.json").write_text(json.dumps(info, indent=1) + "\n",
                                                  encoding="utf-8")
        full_meta = {"format": FORMAT, "version": VERSION, "model": model_name,
                     "model_config": dataclasses.asdict(model_config),
                     "tokenizer": tokenizer.to_dict(), **meta,
                     "sha256": {f.name: file_sha256(f) for f in sorted(tmp.iterdir())}}
        full_meta["meta_sha256"] = _meta_digest(full_meta)
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, ensure_ascii=False) + "\n",
                                       encoding="utf-8")


def read_meta(path: Path) -> dict:
    """Read and check a checkpoint's meta.json."""
    meta_file = Path(path) / "meta.json"
    if not meta_file.is_file():
        raise CheckpointError(f"{path} is not a checkpoint: it has no meta.json")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint file {meta_file} is corrupt: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint file {meta_file} is not an lmscope checkpoint "
                              f"(no \"format\": \"{FORMAT}\")")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint file {meta_file} has format version "
                              f"{meta.get('version')!r}; this lmscope reads version {VERSION}")
    for key, kind in (("model", str), ("model_config", dict), ("tokenizer", dict)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"checkpoint file {meta_file} is corrupt: {key!r} is missing "
                                  f"or not a {kind.__name__}")
    if not isinstance(meta.get("iter", 0), int):
        raise CheckpointError(f"checkpoint file {meta_file} is corrupt: 'iter' is not an integer")
    return meta


def verify_files(path: Path, meta: dict, names) -> None:
    """Check files of the checkpoint folder `path` against the sha256 its meta.json recorded
    (checkpoints without a record are not checked); a mismatch is a one-line error."""
    recorded = meta.get("sha256")
    if not isinstance(recorded, dict):
        return
    for name in names:
        if name in recorded and file_sha256(path / name) != recorded[name]:
            raise CheckpointError(
                f"checkpoint file {path / name} is corrupt: its sha256 differs from the one "
                f"{path / 'meta.json'} recorded when it was written (a damaged or changed file); "
                "restore it from a copy, or use another checkpoint")


def _verify_meta(path: Path, meta: dict) -> None:
    if "meta_sha256" in meta and _meta_digest(meta) != meta["meta_sha256"]:
        raise CheckpointError(
            f"checkpoint file {path / 'meta.json'} is corrupt: its content differs from the "
            "sha256 recorded in it when it was written (a damaged or changed file); restore it "
            "from a copy, or use another checkpoint")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load one checkpoint folder into a model in eval mode on `device`."""
    path = Path(path)
    meta = read_meta(path)
    name = meta["model"]
    if name not in MODELS:
        raise CheckpointError(f"checkpoint {path} uses model {name!r}, which this lmscope "
                              f"does not know (models: {', '.join(sorted(MODELS))})")
    config_cls = MODELS[name][0]
    try:
        config = config_cls(**meta["model_config"])
        tokenizer = tokenizer_from_dict(meta["tokenizer"])
        model = build_model(name, config)
    except (TypeError, ValueError, LmscopeError) as e:
        raise CheckpointError(f"checkpoint file {path / 'meta.json'} has an invalid config: {e}") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"checkpoint file {path / 'meta.json'} is inconsistent: its tokenizer "
                              f"has {tokenizer.vocab_size} tokens, the model {config.vocab_size}")
    weights_file = path / "model.safetensors"
    try:
        weights = load_file(weights_file)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no model.safetensors") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint file {weights_file} is corrupt or truncated: {e}") from None
    expected = model.state_dict()
    for key, t in weights.items():
        if key not in expected:
            raise CheckpointError(f"checkpoint file {weights_file} has an unexpected tensor {key!r}")
        if t.shape != expected[key].shape:
            raise CheckpointError(f"checkpoint file {weights_file}: tensor {key!r} has shape "
                                  f"{tuple(t.shape)}, the config says {tuple(expected[key].shape)}")
    missing = set(model.load_state_dict(weights, strict=False).missing_keys)
    missing -= set(_tied_names(model))  # tied weights are stored once
    if missing:
        raise CheckpointError(f"checkpoint file {weights_file} lacks tensors {sorted(missing)[:3]}")
    _verify_meta(path, meta)
    verify_files(path, meta, ["model.safetensors"])
    model.to(device).eval()
    return Checkpoint(model=model, tokenizer=tokenizer, meta=meta, path=path, model_name=name)


def read_train_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The training state a checkpoint folder keeps for resuming: (tensors, info), checked
    against its meta.json. Raises OSError, ValueError or SafetensorError where a file is
    missing or unreadable, CheckpointError where one was changed."""
    tensors = load_file(path / "train_state.safetensors")
    info = json.loads((path / "train_state.json").read_text(encoding="utf-8"))
    verify_files(path, read_meta(path), TRAIN_STATE_FILES)
    return tensors, info


# --- finding checkpoints -------------------------------------------------------------------------

def list_checkpoints(run_dir: Path) -> list[Path]:
    """Every checkpoint folder of a run, oldest iteration first (iter_* then best/last/final)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = {}
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        name = p.name[:-4] if p.name.endswith(".old") else p.name
        real = existing_dir(root / name)
        if real is not None and (real / "meta.json").is_file():
            found[name] = real

    def order(item):
        name, p = item
        return (not name.startswith("iter_"), checkpoint_iteration(p), name)

    return [p for _, p in sorted(found.items(), key=order)]


def checkpoint_iteration(checkpoint: Path) -> int:
    """A checkpoint's iteration, read from its meta.json, or -1 where it cannot say."""
    try:
        it = json.loads((checkpoint / "meta.json").read_text(encoding="utf-8")).get("iter", 0)
        return it if isinstance(it, int) else -1
    except (OSError, ValueError, AttributeError):
        return -1


def _run_if_checkpoints(path: Path) -> Path:
    """A run's checkpoints/ folder stands for the run (`sample runs/X/checkpoints`)."""
    if path.name == "checkpoints" and path.is_dir() and not (path / "meta.json").is_file():
        return path.parent
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint path or a run folder (its final, else its latest);
    a run's checkpoints/ folder stands for the run."""
    path = _run_if_checkpoints(Path(path))
    if not path.exists():
        raise LmscopeError(f"{path} does not exist: give a run folder or a checkpoint folder")
    if (path / "meta.json").is_file():
        return path
    if path.is_file():
        raise CheckpointError(f"{path} is a file; give a run folder or a checkpoint folder "
                              "(one that holds meta.json and model.safetensors)")
    final = existing_dir(path / "checkpoints" / "final")
    if final is not None and (final / "meta.json").is_file():
        return final
    ckpts = list_checkpoints(path)
    if not ckpts:
        raise CheckpointError(f"{path} holds no checkpoints: it is neither a run folder with "
                              "checkpoints/ nor a checkpoint folder with meta.json")
    return max(ckpts, key=checkpoint_iteration)


def select_checkpoints(run: str | Path, which: str = "all") -> list[Path]:
    """The checkpoints a probe walks through, oldest first.

    A checkpoint folder gives itself. A run folder gives its scheduled `iter_*` checkpoints and
    `final` (which="all"), only `final` (which="final"), or those a comma-separated list of
    iterations and names picks (which="0,100,final"); `best` and `last` are copies of states
    already in that list and are left out.
    """
    path = _run_if_checkpoints(Path(run))
    if (path / "meta.json").is_file():
        return [path]
    if which == "final":
        return [resolve_checkpoint(path)]
    found = [p for p in list_checkpoints(path) if p.name.startswith("iter_") or p.name == "final"]
    if not found:
        if not path.exists():
            raise LmscopeError(f"{path} does not exist: give a run folder or a checkpoint folder")
        raise LmscopeError(f"{path} holds no checkpoints (no checkpoints/iter_* or final): "
                           "train it first, or give a checkpoint folder")
    if which == "all":
        return found
    return _pick(path, found, which)


def _pick(run: Path, found: list[Path], which: str) -> list[Path]:
    """The checkpoints a comma-separated list names ("0,100,final"), oldest first; a name or
    iteration the run did not keep is an error listing what it kept."""
    wanted = [w.strip() for w in which.split(",") if w.strip()]
    by_name = {p.name: p for p in found}
    by_iter = {}
    for p in found:  # an iteration kept twice (iter_N and final): the scheduled one
        by_iter.setdefault(checkpoint_iteration(p), p)
    picked = []
    for w in wanted:
        p = by_name.get(w) or (by_iter.get(int(w)) if w.isdigit() else None)
        if p is None:
            kept = ", ".join(str(checkpoint_iteration(q)) for q in found if q.name != "final")
            raise LmscopeError(
                f"{run} has no checkpoint {w!r}: it keeps iterations {kept or 'none'} and final; "
                "give some of them (--checkpoints 0,100,final), all or final")
        if p not in picked:
            picked.append(p)
    if not picked:
        raise LmscopeError(f"--checkpoints {which!r} names no checkpoint: give all, final or "
                           "iterations such as 0,100,final")
    return [p for p in found if p in picked]


def load(path: str | Path, device: str = "auto") -> Checkpoint:
    """Load a run folder (its final checkpoint, else its latest) or one checkpoint folder.

    Returns a `Checkpoint`: `.model` (in eval mode on `device`), `.tokenizer`, `.meta`, `.path`.
    """
    return load_checkpoint(resolve_checkpoint(path), device=pick_device(device))


def as_checkpoint(model_or_path, device: str = "auto") -> Checkpoint:
    """A loaded Checkpoint as it is, or the one `load` finds at a path."""
    return model_or_path if isinstance(model_or_path, Checkpoint) else load(model_or_path, device)
