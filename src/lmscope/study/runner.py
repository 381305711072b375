"""Running a study: its steps in the order of the registry, into one folder, restartable.

`run_study(FILE, DIR)` writes everything under DIR, a sub-folder per step (docs/studies.md lists
what each writes):

    DIR/study.json        the settings the study ran with (a restart must use the same)
    DIR/<step>/           each step's tables and figures (train: DIR/runs/<run>/)
    DIR/timings.json      seconds per step
    DIR/README.md         every step's tables in one page, with links to the figures
    DIR/report.html       the same and more in one self-contained web page (report/html.py)

A step (or part of one: a training run, a transfer pair) that finished leaves a `.done` file and
is skipped when the study runs again; a stopped training run is resumed. So a study can be
stopped at any moment (Ctrl-C) and restarted with the same command. While a process runs a study
it holds the folder's lock (run/lock.py): a second one gets an error naming it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_json, atomic_write_text
from lmscope.report.html import Section, write_page
from lmscope.run.lock import FolderLock, holds_files
from lmscope.study import steps as registered
from lmscope.study.plan import Study
from lmscope.study.registry import StepContext
from lmscope.study.schedule import check_jobs, connect
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
        self.timings: dict[str, float] = {}
        self.context = StepContext(study, self.out, device, log, jobs=jobs, executor=executor,
                                   address=address)

    def run(self) -> dict[str, float]:
        if self.out.exists() and not self.out.is_dir():
            raise LmscopeError(f"--out {self.out} is a file, not a folder")
        self._refuse_a_foreign_folder()  # before the lock: a folder that is not ours is not touched
        with FolderLock(self.out, "study folder", log=self.log):
            self._claim_folder()
            timings_file = self.out / "timings.json"
            if timings_file.is_file():
                self.timings = json.loads(timings_file.read_text(encoding="utf-8"))
            for step in registered.STEPS:
                if step.name not in self.study.steps:
                    continue
                folder = self.out / step.out
                if self.context.done(folder):
                    self.log(f"[{step.name}] already complete")
                    continue
                self.log(f"[{step.name}]")
                start = time.perf_counter()
                self.context.step = step
                step.run(self.context)
                self.timings[step.name] = round(self.timings.get(step.name, 0)
                                                + time.perf_counter() - start, 1)
                self.context.mark_done(folder)
                atomic_write_json(timings_file, self.timings)
            self._write_readme()
            write_report(self.out)
        return self.timings

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


def run_study(path: str | Path, out_dir: str | Path, *, quick: bool = False,
              seeds: list[int] | None = None, overrides: list[str] = (), device: str = "auto",
              log=print, jobs: int = 1, executor: str = "local",
              address: str | None = None) -> dict[str, float]:
    """Run (or continue) the study in `path`, writing into `out_dir`; returns seconds per step.
    `overrides` ("train.max_iters=100", ...) are merged over the file's tables (load_study).
    `jobs`: training runs (then transfer pairs) at once, each in its own process, or as tasks of
    a Ray cluster with executor "ray" at `address` (study/schedule.py)."""
    check_jobs(jobs)  # before the study file is read, and Ray's cluster reached
    connect(executor, address)
    study = load_study(path, quick=quick, seeds=seeds, overrides=overrides)
    return StudyRunner(study, out_dir, device=device, log=log, jobs=jobs, executor=executor,
                       address=address).run()
