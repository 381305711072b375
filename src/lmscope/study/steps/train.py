"""train: one training run per corpus, or per variant and corpus, each seed apart (lmscope train).

A run that finished is skipped, one that was stopped is resumed, one stopped before it saved
anything starts again.
"""

from __future__ import annotations

import shutil

from lmscope.render.tables import markdown_table
from lmscope.run.run_dir import RunDir
from lmscope.study.registry import Step, StepContext
from lmscope.train.trainer import train


def run(ctx: StepContext) -> None:
    for spec in ctx.study.runs():
        folder = RunDir(ctx.run_dir(spec.name))
        name = spec.name
        if ctx.done(folder.path):
            ctx.log(f"  {name}: trained ({folder.path})")
            continue
        resume = folder.resumable_state() is not None
        if folder.path.is_dir() and not resume:
            shutil.rmtree(folder.path)  # this study's own run, stopped before it saved anything
        ctx.log(f"  {name}: {'resuming' if resume else 'training'} {folder.path}")
        config = ctx.study.run_config(spec)
        config.train.device = ctx.device if ctx.device != "auto" else config.train.device
        result = train(config, folder.path, resume=resume, progress=False, log=lambda *a: None)
        ctx.log(f"  {name}: whole-split val loss {result.val_loss:.4f} after "
                f"{result.iterations} iterations, {result.elapsed_s:.0f} s")
        ctx.mark_done(folder.path)


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
