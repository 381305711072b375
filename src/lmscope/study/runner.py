"""Running a study: its units of work as a graph, into one folder, restartable.

`run_study(FILE, DIR)` writes everything under DIR, a sub-folder per step (docs/studies.md lists
what each writes):

    DIR/study.json        the settings the study ran with (a restart must use the same)
    DIR/<step>/           each step's tables and figures (train: DIR/runs/<run>/)
    DIR/timings.json      seconds per step (the sum of its units' seconds)
    DIR/logs/<unit>.log   the log of each unit run in a process of its own (--jobs N, Ray)
    DIR/README.md         every step's tables in one page, with links to the figures
    DIR/report.html       the same and more in one self-contained web page (report/html.py)

The units (`StudyRunner.units`): each step's parts (study/registry.py: a probe of one run, a
training run, a transfer pair), each needing what it reads (its run's training, a pair's source
model), then the step's own unit (tables and figures across its parts), which needs its parts and
the training and the steps whose results it reads (`Step.reads`). One at a time (--jobs 1) they
run in the order of the registry, as a fixed sequence would; with --jobs N a probe of one model
starts as soon as that model is trained, beside the others' training (study/schedule.py).

A unit that finished leaves a `.done` file (DIR/<step>/<part>/, DIR/<step>/) and is skipped when
the study runs again; a stopped training run is resumed. So a study can be stopped at any moment
(Ctrl-C, or a kill of the whole process group) and restarted with the same command: only the
units not done run again. While a process runs a study
it holds the folder's lock (run/lock.py): a second one gets an error naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_json, atomic_write_text
from lmscope.report.html import Section, write_page
from lmscope.run.lock import FolderLock, holds_files
from lmscope.study import cost
from lmscope.study import steps as registered
from lmscope.study.cost import Plan
from lmscope.study.plan import Study
from lmscope.study.registry import Part, StepContext, step_of, unit_name
from lmscope.study.schedule import (
    Unit,
    check_jobs,
    connect,
    resolve_jobs,
    run_units,
    threads_per_unit,
    visible_gpus,
)
from lmscope.study.spec import load_study


def report_sections() -> list[Section]:
    """The report's sections of a study folder, one per step that has one, in step order."""
    return [Section(step.report_title, step.out, step.report_view, step.report_skip,
                    step.report_hide)
            for step in registered.STEPS if step.report_title]


def write_report(folder: str | Path) -> Path:
    """DIR/report.html for a run folder or a study folder (with its steps' sections): the
    report of `lmscope report DIR` and of every study's end."""
    return write_page(folder, report_sections())


class StudyRunner:
    def __init__(self, study: Study, out_dir: str | Path, *, device: str = "auto", log=print,
                 jobs: int = 1, executor: str = "local", address: str | None = None):
        check_jobs(jobs)
        self.study = study
        self.out = Path(out_dir)
        self.device = device
        self.log = log
        self.jobs, self.executor, self.address = jobs, executor, address
        self.timings: dict[str, float] = {}
        self.context = StepContext(study, self.out, device, log)

    def run(self) -> dict[str, float]:
        if self.out.exists() and not self.out.is_dir():
            raise LmscopeError(f"--out {self.out} is a file, not a folder")
        self._refuse_a_foreign_folder()  # before the lock: a folder that is not ours is not touched
        with FolderLock(self.out, "study folder", log=self.log):
            self._claim_folder()
            timings_file = self.out / "timings.json"
            if timings_file.is_file():
                self.timings = json.loads(timings_file.read_text(encoding="utf-8"))
            self._run_units(timings_file)
            self._write_readme()
            write_report(self.out)
        return self.timings

    @property
    def in_process(self) -> bool:
        """Whether units run one at a time in this process (--jobs 1 on this machine)."""
        return self.jobs == 1 and self.executor == "local"

    def units(self) -> list[Unit]:
        """The study's units of work not yet done, in the order one at a time runs them (module
        docstring): each step's parts, then the step's own unit (its `run`, in this process),
        which needs its parts, the training and the steps it `reads`."""
        in_process = self.in_process
        units: list[Unit] = []
        self._folders: dict[str, Path] = {}  # unit name -> the folder its .done goes into
        self._finished: dict[str, list[Path]] = {}  # step -> its parts done before
        for step in registered.STEPS:
            folder = self.out / step.out
            if step.name not in self.study.steps or self.context.done(folder):
                continue
            ctx = dataclasses.replace(self.context, step=step)
            for part in self._parts(ctx):
                if ctx.done(folder / part.name):
                    self._finished.setdefault(step.name, []).append(folder / part.name)
                    continue
                name = unit_name(step.name, part.name)
                log = self.log if in_process else str(self.log_file(name))
                units.append(Unit(name, run_part, (step.name, part.item, self.study,
                                                   str(self.out), self.device, log), part.needs,
                                  gpus=part.gpus))
                self._folders[name] = folder / part.name
            units.append(Unit(step.name, self._run_step, (ctx,), tuple(
                u.name for u in units if step_of(u.name) in (step.name, "train", *step.reads)),
                inline=True))
            self._folders[step.name] = folder
        names = {u.name for u in units}  # a need already done is met: it is not a unit
        return [dataclasses.replace(u, needs=tuple(n for n in u.needs if n in names))
                for u in units]

    def plan(self) -> Plan:
        """The units not yet done with their estimated seconds (study/cost.py): the model sizes
        of the training and transfer units measured here, at the threads each unit will get."""
        units = self.units()
        by_name = {u.name: u for u in units}
        calibrations: dict[str, cost.StepSeconds] = {}
        process = 0.0 if self.in_process or self.executor != "local" \
            else cost.process_start_seconds()
        # with GPUs each unit starts a process; without, each of the --jobs workers starts once
        # (study/schedule.py), before the first units it takes: the first trainings
        starts = [process] * (len(units) if visible_gpus() else self.jobs)

        def start() -> float:
            return starts.pop() if starts else 0.0
        before = torch.get_num_threads()
        torch.set_num_threads(threads_per_unit(self.jobs) if self.executor == "local" else before)
        try:
            def measured(config) -> cost.StepSeconds:
                size = cost.size_of(config)
                if size not in calibrations:
                    calibrations[size] = cost.calibrate(config, cost.device_of(config, self.device))
                return calibrations[size]

            seconds: dict[str, float | None] = {}
            for spec in self.study.runs():
                name = unit_name("train", spec.name)
                if name in by_name:
                    config = self.study.run_config(spec)
                    seconds[name] = cost.training_seconds(config, measured(config), start())
            transfer = registered.by_name()["transfer"]
            if "transfer" in by_name:
                ts = dataclasses.replace(self.context, step=transfer).settings
                for part in transfer.parts(dataclasses.replace(self.context, step=transfer)):
                    name = unit_name("transfer", part.name)
                    if name in by_name:
                        source = next(r for r in self.study.runs() if r.corpus == part.item[0])
                        seconds[name] = cost.transfer_seconds(
                            len(ts.checkpoints.split(",")), ts.iters, ts.eval_every,
                            ts.eval_iters, measured(self.study.run_config(source)), start())
        finally:
            torch.set_num_threads(before)
        return cost.Plan(units, seconds, self.jobs, calibrations, process)

    def _parts(self, ctx: StepContext) -> list[Part]:
        """A step's parts: its own (`parts`), or one per run needing that run's training."""
        if ctx.step.parts is not None:
            return ctx.step.parts(ctx)
        if ctx.step.part is None:
            return []
        return [Part(spec.name, spec, (unit_name("train", spec.name),))
                for spec in self.study.runs()]

    @staticmethod
    def _run_step(ctx: StepContext) -> None:
        if ctx.step.run is not None:
            ctx.step.run(ctx)

    def log_file(self, unit: str) -> Path:
        """Where a unit run in another process writes its log: DIR/logs/<unit>.log."""
        return self.out / "logs" / (unit.replace(" ", "-") + ".log")

    def _run_units(self, timings_file: Path) -> None:
        """Every unit not yet done, up to --jobs at once (study/schedule.py). Each leaves its
        .done as it finishes; a step's seconds (the sum of its units') go to timings.json."""
        for step in registered.STEPS:
            if step.name in self.study.steps and self.context.done(self.out / step.out):
                self.log(f"[{step.name}] already complete")
        units = self.units()
        in_process = self.in_process
        started: dict[str, float] = {}
        seconds: dict[str, float] = {}

        live = _LiveLines() if not in_process and sys.stderr.isatty() else None
        log = self.log if live is None else live.write

        def on_start(unit: Unit, gpus) -> None:
            step = step_of(unit.name)
            if step not in seconds:
                seconds[step] = 0.0
                log(f"[{step}]")
                for folder in self._finished.get(step, []):
                    log(f"  {folder.name}: done before ({folder})")
            if not unit.inline and not in_process:
                on = f" on GPU {','.join(gpus)}" if gpus else ""
                log(f"  {unit.name}: started{on} (its log: {self.log_file(unit.name)})")
            started[unit.name] = time.perf_counter()
            if live is not None and not unit.inline:
                live.start(unit.name, self.log_file(unit.name))

        def on_done(unit: Unit) -> None:
            step = step_of(unit.name)
            seconds[step] += time.perf_counter() - started[unit.name]
            self.context.mark_done(self._folders[unit.name])
            if unit.inline:  # the step's own unit, its last
                self.timings[step] = round(self.timings.get(step, 0) + seconds[step], 1)
                atomic_write_json(timings_file, self.timings)
            elif not in_process:
                if live is not None:
                    live.end(unit.name)
                last = _last_line(self.log_file(unit.name))
                log(f"  {unit.name}: done" + (f": {last}" if last else ""))

        try:
            run_units(units, jobs=self.jobs, executor=self.executor, address=self.address,
                      on_start=on_start, on_done=on_done,
                      on_wait=None if live is None else live.refresh)
        finally:
            if live is not None:
                live.close()

    def _write_readme(self) -> None:
        """DIR/README.md: the study's tables in one page, with links to its figures."""
        study = self.study
        names = [self.corpus_dir(c).name for c in study.corpora]
        parts = [f"# Study: {study.name}\n\nCorpora: {', '.join(names)}; preset "
                 f"{study.preset or '(defaults)'}; steps: {', '.join(study.steps)}.\n"
                 f"Seconds per step: {json.dumps(self.timings)}.\n"]
        parts += [step.readme(self.context) for step in registered.STEPS
                  if step.readme is not None]
        text, readme = "".join(parts), self.out / "README.md"
        if not readme.is_file() or readme.read_text(encoding="utf-8") != text:
            atomic_write_text(readme, text)

    def _refuse_a_foreign_folder(self) -> None:
        if not (self.out / "study.json").is_file() and holds_files(self.out):
            raise LmscopeError(f"{self.out} already holds files that are not a study; "
                               "choose another --out")

    def _claim_folder(self) -> None:
        """A new folder, or one holding this very study (to continue it); never someone else's."""
        settings = self.out / "study.json"
        if settings.is_file():
            if json.loads(settings.read_text(encoding="utf-8")) != self.study.to_dict():
                raise LmscopeError(f"{self.out} holds a study with other settings "
                                   f"({settings}); choose another --out")
        else:
            self._refuse_a_foreign_folder()  # another process may have written meanwhile
            atomic_write_json(settings, self.study.to_dict())

    def run_dir(self, name: str) -> Path:
        """The folder of the run named `name` (a RunSpec's name)."""
        return self.context.run_dir(name)

    def corpus_dir(self, corpus: str) -> Path:
        """The run of `corpus` in a study with one run per corpus (named by `folder_name`)."""
        return self.context.corpus_dir(corpus)


def run_part(step: str, item, study: Study, out: str, device: str, log) -> None:
    """One part of a step (a unit's work, in any process): `Step.part(ctx, item)`, logging to
    `log`, or, when the unit runs in a process of its own, to the file `log` names, which also
    takes what it prints (so nothing of it is drawn over the study's live lines)."""
    if callable(log):
        _part(step, item, study, out, device, log)
        return
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as file, contextlib.redirect_stdout(file), \
            contextlib.redirect_stderr(file):  # its warnings too; progress bars stay silent
        def write(message: str) -> None:
            file.write(message + "\n")
            file.flush()
        _part(step, item, study, out, device, write, detail=write)


def _part(step: str, item, study: Study, out: str, device: str, log, detail=None) -> None:
    the_step = registered.by_name()[step]
    ctx = StepContext(study, Path(out), device, log, step=the_step)
    the_step.part(ctx if detail is None else dataclasses.replace(ctx, detail=detail), item)


class _LiveLines:
    """On a terminal, one live line per unit running in a process of its own: its name, its
    seconds so far and the last line of its log (a training's last evaluation), redrawn about
    once a second; the study's own messages are written above them."""

    def __init__(self):
        self.lines: dict[str, tuple] = {}  # unit -> (tqdm line, its log file, start time)

    def start(self, unit: str, log_file: Path) -> None:
        line = tqdm(total=0, bar_format="{desc}", leave=False, dynamic_ncols=True)
        self.lines[unit] = (line, log_file, time.monotonic())
        self.refresh()

    def refresh(self) -> None:
        width = shutil.get_terminal_size().columns - 1
        for unit, (line, log_file, start) in self.lines.items():
            text = f"  {unit} ({time.monotonic() - start:.0f} s) {_last_line(log_file)}"
            line.set_description_str(text[:width])

    def end(self, unit: str) -> None:
        self.lines.pop(unit)[0].close()

    @staticmethod
    def write(message: str) -> None:
        tqdm.write(message)

    def close(self) -> None:
        for unit in list(self.lines):
            self.end(unit)


def _last_line(path: Path) -> str:
    """The last line of a unit's log ("" when it wrote none)."""
    if not path.is_file():
        return ""
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    return lines[-1].strip() if lines else ""


def run_study(path: str | Path, out_dir: str | Path, *, quick: bool = False,
              seeds: list[int] | None = None, overrides: list[str] = (), device: str = "auto",
              log=print, jobs: int | str = 1, executor: str = "local",
              address: str | None = None) -> dict[str, float]:
    """Run (or continue) the study in `path`, writing into `out_dir`; returns seconds per step.
    `overrides` ("train.max_iters=100", ...) are merged over the file's tables (load_study).
    `jobs`: units of work at once, each in a process of its own, or as tasks of a Ray cluster
    with executor "ray" at `address` (study/schedule.py); "auto": one per GPU, else one per core
    up to 4 (`auto_jobs`); 1 (the default here): one after another in this process."""
    jobs = resolve_jobs(jobs)  # before the study file is read, and Ray's cluster reached
    connect(executor, address)
    study = load_study(path, quick=quick, seeds=seeds, overrides=overrides)
    return StudyRunner(study, out_dir, device=device, log=log, jobs=jobs, executor=executor,
                       address=address).run()


def plan_study(path: str | Path, out_dir: str | Path, *, quick: bool = False,
               seeds: list[int] | None = None, overrides: list[str] = (), device: str = "auto",
               jobs: int | str = 1, executor: str = "local") -> Plan:
    """The plan of `run_study` with the same arguments (study/cost.py): the units not yet done
    in `out_dir` with their estimated seconds; nothing is written."""
    jobs = resolve_jobs(jobs)
    study = load_study(path, quick=quick, seeds=seeds, overrides=overrides)
    return StudyRunner(study, out_dir, device=device, jobs=jobs, executor=executor).plan()
