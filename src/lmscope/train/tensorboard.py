"""TensorBoard logging (`--set log.tensorboard=true`): the rows of metrics.jsonl, attention.jsonl,
heads.jsonl and dynamics.jsonl, also as TensorBoard scalars in RUN/tensorboard/ (view with `tensorboard --logdir
runs/`).

The trainer hands every row it writes to a JSON-lines file to this logger too, so the two logs hold
the same numbers. Each row's "iter" is the step; the tags are

    train/<key>, eval/<key>, final/<key>    every number of a metrics.jsonl row of that kind:
                                            train/loss, train/lr, eval/val_loss,
                                            eval/val_loss:<corpus>, final/val_loss_full, ...
    attention/<metric>                      the model-wide attention metrics of attention.jsonl
    attention/<metric>/layer<i>             the same for layer i (the mean over its heads)

    heads/<loss>                            the induction losses and the ICL score of heads.jsonl:
                                            first_half_loss, second_half_loss, icl_score, ...
    heads/<detector>_max                    the best head's score (gpt), e.g. heads/induction_max
    heads/<detector>_max/layer<i>           the best head's score in layer i

    dynamics/<key>                          probe_loss and grad_norm of dynamics.jsonl
    dynamics/layer_grad_norm/<layer>        each layer's gradient norm (embed, 0, 1, ..., head)
    dynamics/<statistic>/<matrix>           weight_norm, spectral_norm, effective_rank and
                                            matrix_grad_norm of each weight matrix

with <metric> one of entropy_bits, entropy_norm, mean_distance, span90, head_diversity_js, and
<detector> one of previous_token, duplicate_token, induction, first_token.

Every session starts its event file with a restart marker at step 0 (SummaryWriter's
`purge_step`), so TensorBoard hides what earlier sessions wrote, and a resumed run writes its whole
history again from the JSON-lines files (which the trainer has already cut back to the resumed
iteration): points a killed session wrote after its last checkpoint disappear, and a session that
ran with TensorBoard off leaves no gap. TensorBoard's fast loader (tensorboard-data-server) ignores
the markers but drops a tag's points from the step where the tag is written again, which comes to
the same, except that a finished run resumed for more iterations keeps its old final/ point there.
"""

from __future__ import annotations

import math
from pathlib import Path

from lmscope.errors import ConfigError
from lmscope.io import read_jsonl
from lmscope.metrics.heads import DETECTORS
from lmscope.run.run_dir import RunDir

# the metrics of attention_summary() that become tags (and its span key, e.g. span90)
ATTENTION_METRICS = ("entropy_bits", "entropy_norm", "mean_distance", "head_diversity_js")


def check_installed() -> None:
    """Fail with the fix, before anything is written, when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"log.tensorboard=true needs the tensorboard package, which cannot be "
                          f"imported here ({reason}); install it with: "
                          'pip install "lmscope[tensorboard]" (or set log.tensorboard=false)'
                          ) from None


def metric_scalars(row: dict) -> dict[str, float]:
    """The tags and values of a metrics.jsonl row: every number but the iteration, under its kind."""
    return {f"{row['kind']}/{key}": value for key, value in row.items()
            if key not in ("kind", "iter") and _is_number(value)}


def attention_scalars(row: dict) -> dict[str, float]:
    """The tags and values of an attention.jsonl row: each metric over the model and per layer."""
    names = [*ATTENTION_METRICS, *(k for k in row if k.startswith("span"))]
    out = {}
    for name in names:
        if _is_number(row.get(name)):
            out[f"attention/{name}"] = row[name]
        for i, layer in enumerate(row.get("layers", [])):
            value = layer.get(name)
            if isinstance(value, list) and value:  # one value per head
                value = math.fsum(value) / len(value)
            if _is_number(value):
                out[f"attention/{name}/layer{i}"] = value
    return out


HEADS_LOSSES = ("first_half_loss", "second_half_loss", "early_loss", "late_loss", "icl_score")


def heads_scalars(row: dict) -> dict[str, float]:
    """The tags and values of a heads.jsonl row: the losses, and each detector's best head over
    the model and per layer."""
    out = {f"heads/{key}": row[key] for key in HEADS_LOSSES if _is_number(row.get(key))}
    for detector in DETECTORS:
        layers = row.get(detector)
        if not layers:
            continue
        best = [max(heads) for heads in layers]
        out[f"heads/{detector}_max"] = max(best)
        out.update({f"heads/{detector}_max/layer{i}": b for i, b in enumerate(best)})
    return out


DYNAMICS_PER_MATRIX = ("weight_norm", "spectral_norm", "effective_rank", "matrix_grad_norm")


def dynamics_scalars(row: dict) -> dict[str, float]:
    """The tags and values of a dynamics.jsonl row: the probe loss and gradient norm, each
    layer's gradient norm and each matrix's statistics."""
    out = {f"dynamics/{key}": row[key] for key in ("probe_loss", "grad_norm")
           if _is_number(row.get(key))}
    for key in ("layer_grad_norm", *DYNAMICS_PER_MATRIX):
        out.update({f"dynamics/{key}/{name}": value for name, value in row.get(key, {}).items()
                    if _is_number(value)})
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class TensorBoardLogger:
    """Writes metrics and attention rows as scalars to `run_dir/tensorboard/`."""

    def __init__(self, run_dir: Path, *, resume: bool = False):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = run_dir / "tensorboard"
        # A restart marker at step 0 in every session (TensorBoard's server also takes a run's
        # first marker for its start): earlier sessions' points are hidden and a resumed run
        # writes its whole history again from the JSON-lines files, so a session that ran with
        # TensorBoard off, or was killed after its last checkpoint, leaves neither a gap nor
        # stale points.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=0)
        if resume:
            run = RunDir(run_dir)
            for row in run.metrics().rows:
                self.metrics(row)
            for row in run.attention():
                self.attention(row)
            for row in read_jsonl(run.heads_file) if run.heads_file.is_file() else []:
                self.heads(row)
            for row in read_jsonl(run.dynamics_file) if run.dynamics_file.is_file() else []:
                self.dynamics(row)

    def metrics(self, row: dict) -> None:
        self._write(metric_scalars(row), row["iter"])

    def attention(self, row: dict) -> None:
        self._write(attention_scalars(row), row["iter"])

    def heads(self, row: dict) -> None:
        self._write(heads_scalars(row), row["iter"])

    def dynamics(self, row: dict) -> None:
        self._write(dynamics_scalars(row), row["iter"])

    def _write(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
