"""What a study step is: the one declaration each step makes, and what it is given when it runs.

A step is declared once, as a `Step` in its own module under study/steps/, and registered by
adding that module's STEP to `STEPS` in study/steps/__init__.py. From the declaration come:

    the study file        its name in `steps = [...]`, its [<name>] settings table (checked
                          against `settings`), whether it needs prompts or one model per corpus
    the run               `run(ctx)`, in the order of STEPS, skipped once its folder has .done
    the study README.md   `readme(ctx)`: its section of DIR/README.md
    the report            `report_title`, `report_view` and the figures it replaces
                          (`report_hide`): its section of DIR/report.html
    the documentation     `summary`: `lmscope study --help` and docs/studies.md
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmscope.data.corpora import folder_name
from lmscope.io import atomic_write_json
from lmscope.study.plan import Study
from lmscope.study.schedule import run_units


@dataclass
class StepContext:
    """What a running step is given: the study, its folder, the device and a logger."""

    study: Study
    out: Path  # the study folder
    device: str = "auto"
    log: Callable[[str], None] = print
    step: Step | None = None  # the step being run
    jobs: int = 1  # units of work a step may run at once (lmscope study --jobs)
    executor: str = "local"  # where they run: "local" processes, or "ray" (study/schedule.py)
    address: str | None = None  # the Ray cluster's address (None: a local instance)

    def run_units(self, units, **kw):
        """`schedule.run_units` with this study's --jobs, --executor and --address."""
        return run_units(units, jobs=self.jobs, executor=self.executor, address=self.address,
                         **kw)

    @property
    def settings(self) -> Any:
        """The running step's settings: its [<name>] table of the study file, else defaults."""
        if self.step.name in self.study.settings:
            return self.study.settings[self.step.name]
        return self.step.settings()

    def run_dir(self, name: str) -> Path:
        """The folder of the run named `name` (a RunSpec's name)."""
        return self.out / "runs" / name

    def corpus_dir(self, corpus: str) -> Path:
        """The run of `corpus` in a study with one run per corpus (named by `folder_name`)."""
        return self.run_dir(folder_name(corpus))

    @staticmethod
    def done(folder: Path) -> bool:
        """Whether `folder` (a step's, a run's, a transfer pair's) was finished."""
        return (folder / ".done").is_file()

    @staticmethod
    def mark_done(folder: Path) -> None:
        atomic_write_json(folder / ".done", {"finished": time.strftime("%Y-%m-%d %H:%M:%S")})


@dataclass(frozen=True)
class Step:
    """One step of a study (see the module docstring)."""

    name: str  # in the study file's steps = [...], and its folder DIR/<name>/ (see `folder`)
    summary: str  # what it does and what it writes, in one line
    run: Callable[[StepContext], None]
    settings: type | None = None  # the dataclass of its [<name>] table (None: no table)
    result: type | None = None  # the typed result (lmscope.analysis) it saves
    per_corpus: bool = False  # compares one model per corpus: not with seeds or [[variant]]
    needs_prompts: bool = False  # needs [study] prompts = "FILE.toml"
    compares_runs: bool = False  # compares the study's runs with each other: needs two or more
    folder: str = ""  # its folder in the study folder, when it is not `name`
    command: str = ""  # the lmscope command that does the same for one model
    readme: Callable[[StepContext], str] | None = None  # its section of README.md ("": none)
    report_title: str = ""  # its section of report.html ("": none)
    report_view: Callable[[Path], str] | None = None  # HTML from its results, atop the section
    report_skip: tuple[str, ...] = field(default=())  # Markdown files the view already shows
    # figures not shown in report.html (patterns of their paths in the step's folder, such as
    # "matrix.png"): those its view replaces, or too many; they stay in the folder
    report_hide: tuple[str, ...] = field(default=())

    @property
    def out(self) -> str:
        return self.folder or self.name


def markdown_body(markdown_file: Path) -> str:
    """A Markdown file without its first heading, its sub-headings one level down."""
    lines = markdown_file.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join("#" + line if line.startswith("## ") else line for line in lines).strip() + "\n"


def readme_section(ctx: StepContext, title: str, markdown: str, figures=()) -> str:
    """A README.md section: `title`, the body of `markdown` and the `figures` that exist (both
    relative to the study folder); "" when `markdown` was not written."""
    if not (ctx.out / markdown).is_file():
        return ""
    return (f"\n## {title}\n\n{markdown_body(ctx.out / markdown)}" +
            "".join(f"\n![{f}]({f})\n" for f in figures if (ctx.out / f).is_file()))
