"""The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the
Tuned Lens"): the logit lens with a learned affine translator at each lens point.

The logit lens reads an intermediate activation h_l with the model's own read-out (`unembed`).
Early layers' activations are not in the basis the read-out expects, so the logit lens is
biased there (it often reads the input token back). The tuned lens learns, for every point l but
the last, a translator T_l(h) = h + A_l h + b_l, with A_l and b_l initialised to zero (so an
untrained tuned lens is exactly the logit lens), trained with the model frozen to minimise

    KL(p || unembed(T_l(h_l)))    summed over points, averaged over positions,

where p is the model's own output distribution: the translators learn to predict what the model
will say, not the data. The last point is the output itself and has no translator.

Training (`train(checkpoint, corpus)`) reads windows of the corpus's train split; the divergence
before (the logit lens) and after (the tuned lens) is measured on windows of its validation split
and kept with the translators. Belrose et al. train with SGD (Nesterov) for 250 steps of 2^18
tokens; these models are small, and Adam for a few hundred steps of a few thousand tokens brings
the held-out KL down the same way (tests/analysis/test_tuned_lens.py checks it falls at every
point). The translators are written beside the checkpoint's weights:

    <checkpoint>/tuned_lens.safetensors   A_l and b_l of every point ("<label>.weight", ".bias")
    <checkpoint>/tuned_lens.json          corpus, steps, learning rate, the sha256 of the
                                          checkpoint's model.safetensors (a lens for other weights
                                          is refused), and the held-out KL per point, before/after
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lmscope.api import run_with_cache
from lmscope.errors import LmscopeError
from lmscope.evaluate import corpus_windows
from lmscope.io import atomic_write, atomic_write_json
from lmscope.run.checkpoint import as_checkpoint, file_sha256, select_checkpoints

WEIGHTS = "tuned_lens.safetensors"
RECORD = "tuned_lens.json"


class Translators(nn.Module):
    """One affine map per lens point but the last, h -> h + A h + b, starting at the identity."""

    def __init__(self, labels: list[str], width: int):
        super().__init__()
        self.labels = list(labels)
        self.maps = nn.ModuleList(nn.Linear(width, width) for _ in labels)
        for m in self.maps:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, index: int, h: torch.Tensor) -> torch.Tensor:
        """The translated activation of point `index` (the last point is returned as it is)."""
        if index >= len(self.maps):
            return h
        return h + self.maps[index](h)


@dataclass
class TunedLensRecord:
    """What tuned_lens.json says of a tuned lens."""

    corpus: str
    steps: int
    lr: float
    batch_size: int
    model_sha256: str
    points: list[str]
    kl_before_bits: list[float]  # held-out KL(output || logit lens) per point
    kl_after_bits: list[float]  # held-out KL(output || tuned lens) per point


def _width(model) -> int:
    """The width of the activations at the lens points (the read-out's input)."""
    return model.head.in_features


def _point_divergences(model, translators, ids, mask, names) -> torch.Tensor:
    """(points,) mean KL(output || lens) in nats over the masked positions of `ids`."""
    logits, cache = run_with_cache(model, ids, names, batch_size=len(ids))
    final = logits[:, :-1].float().log_softmax(-1)
    out = []
    for i, name in enumerate(names):
        h = cache[name][:, :-1]
        logq = model.unembed(translators(i, h)).float().log_softmax(-1)
        kl = (final.exp() * (final - logq)).sum(-1)
        out.append(kl[mask].mean())
    return torch.stack(out)


def train(checkpoint, corpus: str, *, steps: int = 300, batch_size: int = 8, lr: float = 1e-3,
          windows: int = 512, val_windows: int = 16, seed: int = 0,
          device: str = "auto") -> tuple[Translators, TunedLensRecord]:
    """Train the translators of one checkpoint (a loaded one or a path) on `corpus`; the model
    is frozen and left as it was."""
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise LmscopeError(f"the tuned lens needs steps >= 1, batch size >= 1 and a positive "
                           f"learning rate, got {steps}, {batch_size}, {lr}")
    ckpt = as_checkpoint(checkpoint, device=device)
    model = ckpt.model
    if not hasattr(model, "lens_points"):
        raise LmscopeError(f"{type(model).__name__} models have no lens points")
    points = model.lens_points()
    names = [name for _, name in points]
    device_ = next(model.parameters()).device
    data = corpus_windows(ckpt, corpus, "train", windows=windows)
    held_out = corpus_windows(ckpt, corpus, "val", windows=val_windows)
    translators = Translators([label for label, _ in points[:-1]], _width(model)).to(device_)
    was_training = model.training
    model.eval()
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            before = _point_divergences(model, translators, held_out.ids.to(device_),
                                        held_out.target_mask().to(device_), names)
        optimizer = torch.optim.Adam(translators.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            rows = torch.randint(len(data.ids), (batch_size,), generator=generator)
            ids, mask = data.ids[rows].to(device_), data.target_mask()[rows].to(device_)
            with torch.no_grad():
                logits, cache = run_with_cache(model, ids, names, batch_size=batch_size)
            final = logits[:, :-1].float().log_softmax(-1)
            loss = 0.0
            for i, name in enumerate(names[:-1]):
                logq = model.unembed(translators(i, cache[name][:, :-1])).float().log_softmax(-1)
                loss = loss + (final.exp() * (final - logq)).sum(-1)[mask].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            after = _point_divergences(model, translators, held_out.ids.to(device_),
                                       held_out.target_mask().to(device_), names)
    finally:
        for p, flag in zip(model.parameters(), frozen, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    bits = 1 / math.log(2)
    record = TunedLensRecord(data.corpus, steps, lr, batch_size,
                             file_sha256(ckpt.path / "model.safetensors"),
                             [label for label, _ in points],
                             [float(v) * bits for v in before], [float(v) * bits for v in after])
    return translators.cpu(), record


def save(path, translators: Translators, record: TunedLensRecord) -> None:
    """Write the translators and their record into the checkpoint folder `path`."""
    path = Path(path)
    tensors = {f"{label}.{kind}": getattr(m, kind).detach().cpu().contiguous()
               for label, m in zip(translators.labels, translators.maps, strict=True)
               for kind in ("weight", "bias")}
    atomic_write(path / WEIGHTS, lambda tmp: save_file(tensors, tmp))
    atomic_write_json(path / RECORD, asdict(record))


def read_record(path) -> TunedLensRecord | None:
    """The record of the tuned lens beside a checkpoint folder, or None when it has none."""
    file = Path(path) / RECORD
    if not file.exists():
        return None
    try:
        return TunedLensRecord(**json.loads(file.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as e:
        raise LmscopeError(f"{file} is not a tuned lens record ({e}); delete it and "
                           "tuned_lens.safetensors, then train the lens again") from None


def load(checkpoint) -> tuple[Translators, TunedLensRecord]:
    """The tuned lens beside a loaded checkpoint; an error when it has none or it was trained for
    other weights."""
    ckpt = as_checkpoint(checkpoint)
    record = read_record(ckpt.path)
    if record is None or not (ckpt.path / WEIGHTS).exists():
        raise LmscopeError(f"checkpoint {ckpt.path} has no tuned lens; train one with "
                           "`lmscope lens train RUN --data CORPUS`")
    if record.model_sha256 != file_sha256(ckpt.path / "model.safetensors"):
        raise LmscopeError(f"the tuned lens beside {ckpt.path} was trained for other weights; "
                           "train it again with `lmscope lens train RUN --data CORPUS --force`")
    points = [label for label, _ in ckpt.model.lens_points()]
    translators = Translators(points[:-1], _width(ckpt.model))
    try:
        tensors = load_file(ckpt.path / WEIGHTS)
        translators.load_state_dict({f"maps.{i}.{kind}": tensors[f"{label}.{kind}"]
                                     for i, label in enumerate(translators.labels)
                                     for kind in ("weight", "bias")})
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        raise LmscopeError(f"cannot read the tuned lens beside {ckpt.path} ({e}); train it "
                           "again with `lmscope lens train RUN --data CORPUS --force`") from None
    return translators.to(next(ckpt.model.parameters()).device), record


def train_run(run, corpus: str, *, which: str = "all", force: bool = False, log=print,
              **settings) -> list[TunedLensRecord]:
    """Train and save a tuned lens beside each checkpoint of `run` (`which`: "all" or "final");
    a checkpoint that has one keeps it unless `force`. `settings` go to `train`."""
    records = []
    for path in select_checkpoints(run, which):
        record = read_record(path)
        if record is not None and not force:
            log(f"{path.name}: kept the tuned lens trained on {record.corpus} "
                "(--force trains it again)")
        else:
            translators, record = train(path, corpus, **settings)
            save(path, translators, record)
            pairs = ", ".join(f"{p} {b:.2f}→{a:.2f}" for p, b, a in
                              zip(record.points[:-1], record.kl_before_bits,
                                  record.kl_after_bits, strict=False))
            log(f"{path.name}: held-out KL to the output in bits, logit → tuned lens: {pairs}")
        records.append(record)
    return records
