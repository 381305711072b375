"""train: one training run per corpus, or per variant and corpus, each seed apart (lmscope train).

A run that finished is skipped, one that was stopped is resumed, one stopped before it saved
anything starts again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lmscope.render.tables import markdown_table
from lmscope.run.run_dir import RunDir
from lmscope.study.registry import Step, StepContext
from lmscope.study.schedule import Unit
from lmscope.train.trainer import train


def run(ctx: StepContext) -> None:
    """Every run not yet trained, up to `ctx.jobs` at once, each in its own process when more
    than one (study/schedule.py); a run's `.done` is written as soon as it finished."""
    units = []
    for spec in ctx.study.runs():
        folder = RunDir(ctx.run_dir(spec.name))
        if ctx.done(folder.path):
            ctx.log(f"  {spec.name}: trained ({folder.path})")
            continue
        resume = folder.resumable_state() is not None
        if folder.path.is_dir() and not resume:
            shutil.rmtree(folder.path)  # this study's own run, stopped before it saved anything
        config = ctx.study.run_config(spec)
        config.train.device = ctx.device if ctx.device != "auto" else config.train.device
        units.append(Unit(spec.name, train_run, (config, str(folder.path), resume)))

    def started(unit: Unit, gpus) -> None:
        resume, folder = unit.args[2], unit.args[1]
        on = f" on GPU {','.join(gpus)}" if gpus else ""
        ctx.log(f"  {unit.name}: {'resuming' if resume else 'training'} {folder}{on}")

    def finished(unit: Unit) -> None:
        s = RunDir(unit.args[1]).summary()
        ctx.log(f"  {unit.name}: whole-split val loss {s.val_loss:.4f} after {s.iterations} "
                f"iterations, {s.elapsed_s:.0f} s")
        ctx.mark_done(Path(unit.args[1]))

    ctx.run_units(units, on_start=started, on_done=finished)


def train_run(config, folder: str, resume: bool) -> None:
    """One run of the study: `lmscope train` into its folder (a unit's work, in any process)."""
    train(config, folder, resume=resume, progress=False, log=lambda *a: None)


def readme(ctx: StepContext) -> str:
    runs = []
    for spec in ctx.study.runs():
        s = RunDir(ctx.run_dir(spec.name)).summary()
        if s is not None:
            runs.append([spec.name, s.model, s.iterations, s.params, s.val_loss,
                         s.val_bits_per_char, round(s.elapsed_s)])
    if not runs:
        return ""
    return ("\n## Training\n\nWhole-split validation loss of each final model (nats and bits per "
            "character); samples at every checkpoint in `runs/<corpus>/samples.md`.\n\n" +
            markdown_table(["run", "model", "iterations", "parameters", "val loss", "bits/char",
                            "seconds"], runs))


STEP = Step(
    "train", "one model per corpus (or per variant), checkpoints at 0, 100, 200, 500, 1000, ... "
    "and a sample at each: runs/<run>/", run, folder="runs", command="lmscope train",
    readme=readme)
