"""What a study step is: the one declaration each step makes, and what it is given when it runs.

A step is declared once, as a `Step` in its own module under study/steps/, and registered by
adding that module's STEP to `STEPS` in study/steps/__init__.py. From the declaration come:

    the study file        its name in `steps = [...]`, its [<name>] settings table (checked
                          against `settings`), whether it needs prompts or one model per corpus
    the run               its units of work (study/runner.py): `part(ctx, run)` for each of
                          the study's runs, each its own unit, started as soon as that run is
                          trained (side by side with --jobs N), or `part(ctx, item)` for each
                          of the `parts(ctx)` it declares (transfer's pairs); then `run(ctx)`,
                          what reads them all (tables and figures across models). A part that
                          finished leaves DIR/<folder>/<part>/.done, the step DIR/<folder>/.done,
                          and both are skipped when the study runs again
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


@dataclass
class StepContext:
    """What a running step (or one unit of it) is given: the study, its folder, the device and
    a logger."""

    study: Study
    out: Path  # the study folder
    device: str = "auto"
    log: Callable[[str], None] = print
    step: Step | None = None  # the step being run
    # a part's detail (a training's evaluations): its unit's log file when it runs in a process
    # of its own, nothing when parts run one at a time and the study's log shows each part
    detail: Callable[[str], None] = lambda message: None

    @property
    def skip_figures(self) -> tuple[str, ...]:
        """The running step's figures not to draw (patterns, plots.drawn): those report.html
        does not show (`Step.report_hide`: its views draw them from the tables, or other
        figures sum them up) when the study draws only what the report shows (`[study]
        figures = "report"`), else none."""
        return self.step.report_hide if self.study.figures == "report" else ()

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
class Part:
    """One unit of a step's work: its name (also its folder in the step's folder), what
    `Step.part` is given, the units it needs (by `unit_name`) and the GPUs it asks for."""

    name: str
    item: Any
    needs: tuple[str, ...] = ()
    gpus: int = 1  # GPUs it asks for where there are GPUs


@dataclass(frozen=True)
class Step:
    """One step of a study (see the module docstring)."""

    name: str  # in the study file's steps = [...], and its folder DIR/<name>/ (see `folder`)
    summary: str  # what it does and what it writes, in one line
    run: Callable[[StepContext], None] | None  # the whole step, or what follows its units
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
    # "matrix.png"): those its view replaces, or too many; they stay in the folder, and are not
    # drawn at all in a study with [study] figures = "report"
    report_hide: tuple[str, ...] = field(default=())
    # one unit's work: for each of the study's runs (a RunSpec), or for each of `parts(ctx)`
    part: Callable[[StepContext, Any], None] | None = None
    parts: Callable[[StepContext], list[Part]] | None = None  # other parts than one per run
    reads: tuple[str, ...] = ()  # earlier steps whose results its `run` reads (it waits for them)

    @property
    def out(self) -> str:
        return self.folder or self.name


def unit_name(step: str, run: str = "") -> str:
    """The name of a study's unit: "train play" (a step's part for one run), "matrix" (a step's
    own unit); what other units list as their needs."""
    return f"{step} {run}" if run else step


def step_of(unit: str) -> str:
    """The step a unit belongs to (the first word of its `unit_name`)."""
    return unit.split(" ", 1)[0]


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
