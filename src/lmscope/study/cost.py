"""What a study will cost before it runs: `lmscope study FILE --plan`.

The plan is the study's graph of units (study/runner.py), each with an estimate of its seconds,
and the wall time at the chosen --jobs:

    calibration   for each distinct model size of the study, a few training steps (forward,
                  backward, AdamW) and evaluation batches of random tokens, on this machine, at
                  the threads each unit will get (`threads_per_unit`): seconds per step, per
                  evaluation batch
    a training    max_iters steps, (max_iters / eval_interval + 1) estimates of eval_iters
                  batches on two splits, a run's fixed cost (`START_S`) and, for a unit that
                  starts a process (each with GPUs; the first of each of the N workers
                  without), that process's start (measured once)
    a transfer    for each starting checkpoint, iters steps and (iters / eval_every + 1)
    pair          estimates of eval_iters batches on the target and the source
    other units   not estimated (probes read checkpoints in ways each probe decides); the plan
                  says how many there are, and the total is for training and transfer alone
    the total     a simulation of the scheduler: units start in the study's order as soon as
                  what they need is done and one of the N places is free

Estimates are from a short measurement, not a promise: the study's README records them beside
the actual seconds (`benchmarks/study_throughput.py` measures both).
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from lmscope.config import RunConfig
from lmscope.device import pick_device
from lmscope.models import build_model
from lmscope.study.schedule import Unit
from lmscope.train.optimizers import make_optimizer

# a run's fixed cost beside its steps (tokenizer, token files, the whole-split evaluation,
# checkpoints with samples): 2.4 s a run in the quick architecture study on 2 cores
# (benchmarks/study_throughput.py: 175.7 s of training units against 156.3 s of loops, 8 runs)
START_S = 2.5
VOCAB = {"char": 128, "byte": 256}  # the calibration's vocabulary (bpe: its bpe_vocab_size)


@dataclass(frozen=True)
class StepSeconds:
    """One model size on this machine: seconds per training step and per evaluation batch."""

    train: float
    evaluate: float


def calibrate(config: RunConfig, device: str = "cpu", steps: int = 4) -> StepSeconds:
    """Time `steps` training steps (the run's optimizer) and evaluation batches of the run's
    model and batch (random tokens, after one step of warm-up) at this process's threads."""
    torch.manual_seed(0)
    model_config = config.model
    vocab = VOCAB.get(config.data.tokenizer, config.data.bpe_vocab_size)
    model = build_model(config.model_name, _with_vocab(model_config, vocab)).to(device)
    tc = config.train
    x = torch.randint(vocab, (tc.batch_size, model_config.block_size), device=device)
    optimizer = make_optimizer(model, tc)  # the run's own (Muon's steps cost more)

    def train_step():
        for _ in range(tc.grad_accum):
            logits = model(x)
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def evaluate():
        with torch.no_grad():
            model(x)

    return StepSeconds(_seconds(train_step, steps, device), _seconds(evaluate, steps, device))


def _with_vocab(model_config, vocab: int):
    return dataclasses.replace(model_config, vocab_size=vocab)


def _seconds(work, repeats: int, device: str) -> float:
    work()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        work()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def process_start_seconds() -> float:
    """The start of a unit's own process, measured: a new Python importing lmscope and torch."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import lmscope.study.runner"], check=True,
                   capture_output=True)
    return time.perf_counter() - start


def training_seconds(config: RunConfig, s: StepSeconds, start: float = 0.0) -> float:
    """A training unit: its steps, its estimates, a run's fixed cost and `start` (a process)."""
    tc = config.train
    estimates = tc.max_iters // tc.eval_interval + 1
    return start + START_S + tc.max_iters * s.train + estimates * tc.eval_iters * 2 * s.evaluate


def transfer_seconds(starts: int, iters: int, eval_every: int, eval_iters: int,
                     s: StepSeconds, start: float = 0.0) -> float:
    """A transfer pair: a fine-tuning from each of its `starts` checkpoints."""
    estimates = iters // eval_every + 1
    return start + START_S + starts * (iters * s.train + estimates * eval_iters * 2 * s.evaluate)


def wall_seconds(units: list[Unit], seconds: dict[str, float], jobs: int) -> float:
    """The scheduler simulated: in the units' order, each starts once its needs are done and
    fewer than `jobs` units run; inline units take no place. Unknown seconds count as 0."""
    done_at: dict[str, float] = {}
    running: list[float] = []  # end times of the units holding a place
    now = 0.0
    pending = list(units)
    while pending:
        started = True
        while started:  # start all that may start now (a unit of 0 s lets others start)
            started = False
            running = [t for t in running if t > now]
            for u in list(pending):
                if any(done_at.get(n, math.inf) > now for n in u.needs):
                    continue
                if not u.inline and len(running) >= jobs:
                    continue
                pending.remove(u)
                done_at[u.name] = end = now + seconds.get(u.name, 0.0)
                if not u.inline:
                    running.append(end)
                started = True
        later = [t for t in [*running, *done_at.values()] if t > now]
        if pending and not later:
            raise ValueError(f"units whose needs never finish: {[u.name for u in pending]}")
        now = min(later, default=now)
    return max(done_at.values(), default=0.0)


@dataclass
class Plan:
    """The units of a study with their estimated seconds (None: not estimated)."""

    units: list[Unit]
    seconds: dict[str, float | None]
    jobs: int
    calibrations: dict[str, StepSeconds]  # model size -> its measurement
    process_start: float = 0.0  # seconds to start a unit's process (0: units run in this one)

    @property
    def wall(self) -> float:
        known = {name: s for name, s in self.seconds.items() if s is not None}
        return wall_seconds(self.units, known, self.jobs)

    def table(self) -> str:
        """The plan as text: one line per unit, then the totals."""
        lines = [f"{'unit':<36} {'needs':<28} estimate"]
        for u in self.units:
            s = self.seconds.get(u.name)
            needs = ", ".join(u.needs) if len(u.needs) <= 2 else f"{len(u.needs)} units before"
            lines.append(f"{u.name:<36} {needs:<28} "
                         + ("-" if s is None else f"{s:,.0f} s"))
        unknown = sum(1 for u in self.units if not u.inline and self.seconds.get(u.name) is None)
        known = sum(s for s in self.seconds.values() if s is not None)
        lines.append("")
        for size, c in self.calibrations.items():
            lines.append(f"measured here: {size}: {c.train * 1000:,.1f} ms a training step, "
                         f"{c.evaluate * 1000:,.1f} ms an evaluation batch")
        if self.process_start:
            lines.append(f"measured here: {self.process_start:.1f} s to start a unit's process")
        lines.append(f"training and transfer: {known:,.0f} s of work; about {self.wall:,.0f} s "
                     f"at --jobs {self.jobs}" + (f"; {unknown} probe units not estimated"
                                                 if unknown else ""))
        return "\n".join(lines)


def size_of(config: RunConfig) -> str:
    """A model size's name: architecture, layers x width, context, batch (and optimizer other
    than AdamW)."""
    m, tc = config.model, config.train
    layers = getattr(m, "n_layer", 1)
    width = getattr(m, "n_embd", getattr(m, "n_hidden", 0))
    return (f"{config.model_name} {layers}x{width}, context {m.block_size}, batch "
            f"{tc.batch_size * tc.grad_accum}" + (f", {tc.optimizer}" if tc.optimizer != "adamw"
                                                  else ""))


def device_of(config: RunConfig, device: str) -> str:
    """Where the study's runs of `config` train (--device, else the run's train.device)."""
    return str(pick_device(config.train.device if device == "auto" else device))
