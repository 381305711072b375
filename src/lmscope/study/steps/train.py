"""train: one training run per corpus, or per variant and corpus, each seed apart (lmscope train).

A run that finished is skipped, one that was stopped is resumed, one stopped before it saved
anything starts again.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lmscope.errors import LmscopeError
from lmscope.render.tables import markdown_table
from lmscope.run.run_dir import RunDir
from lmscope.study.plan import RunSpec
from lmscope.study.registry import Part, Step, StepContext
from lmscope.train.trainer import train


def parts(ctx: StepContext) -> list[Part]:
    """A unit per run, needing nothing; with [study] processes_per_run = N, asking for N GPUs."""
    return [Part(spec.name, spec, gpus=ctx.study.processes_per_run) for spec in ctx.study.runs()]


def part(ctx: StepContext, spec: RunSpec) -> None:
    """One run of the study: `lmscope train` into its folder, resumed where it was stopped; with
    processes_per_run > 1, data-parallel through torchrun (on the unit's GPUs, or gloo on the
    CPU), as `torchrun --nproc_per_node N -m lmscope train` would."""
    folder = RunDir(ctx.run_dir(spec.name))
    resume = folder.resumable_state() is not None
    if folder.path.is_dir() and not resume:
        shutil.rmtree(folder.path)  # this study's own run, stopped before it saved anything
    config = ctx.study.run_config(spec)
    config.train.device = ctx.device if ctx.device != "auto" else config.train.device
    processes = ctx.study.processes_per_run
    ctx.log(f"  {spec.name}: {'resuming' if resume else 'training'} {folder.path}"
            + (f" in {processes} processes" if processes > 1 else ""))
    if processes > 1:
        _torchrun(config, folder.path, resume, processes, ctx.detail)
    else:
        train(config, folder.path, resume=resume, progress=False, log=ctx.detail)
    s = folder.summary()
    ctx.log(f"  {spec.name}: whole-split val loss {s.val_loss:.4f} after {s.iterations} "
            f"iterations, {s.elapsed_s:.0f} s")


def _torchrun(config, folder: Path, resume: bool, processes: int, log) -> None:
    """`lmscope train` of `config` in `processes` data-parallel processes (torchrun), its output
    into `log`; a failure is one line naming the run and the last line it printed."""
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "config.toml"
        config_file.write_text(config.to_toml(), encoding="utf-8")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={processes}", "-m", "lmscope", "train", "--config",
                   str(config_file), "--out", str(folder), *(["--resume"] if resume else [])]
        result = subprocess.run(command, capture_output=True, text=True)
    for line in (result.stdout + result.stderr).splitlines():
        log(line)
    if result.returncode != 0:
        last = [line for line in result.stderr.splitlines() if line.strip()][-1:] or ["no output"]
        raise LmscopeError(f"training {folder} in {processes} processes failed: {last[0]}")


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
    "and a sample at each: runs/<run>/", None, part=part, parts=parts, folder="runs", command="lmscope train",
    readme=readme)
