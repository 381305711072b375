"""The step registry: every step declared once, and a new step is one module plus one line."""

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmscope.cli import cli
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.render.tables import markdown_table
from lmscope.run.run_dir import RunDir
from lmscope.study import steps as registered
from lmscope.study.registry import Step, StepContext, readme_section
from lmscope.study.runner import run_study
from lmscope.study.spec import load_study
from tests.conftest import MATH_TEXT, TINY_SETTINGS, TINY_TEXT

DOC = Path(__file__).resolve().parents[2] / "docs" / "studies.md"


# --- a new step, as a contributor would write it in study/steps/final_losses.py ---------------

@dataclass
class FinalLossesSettings:
    digits: int = 3


def _run_final_losses(ctx: StepContext) -> None:
    rows = []
    for spec in ctx.study.runs():
        summary = RunDir(ctx.run_dir(spec.name)).summary()
        rows.append([spec.name, round(summary.val_loss, ctx.settings.digits)])
    atomic_write_text(ctx.out / "final_losses" / "losses.md",
                      "# Final losses\n\n" + markdown_table(["run", "val loss"], rows))


FINAL_LOSSES = Step(
    "final_losses", "each run's whole-split validation loss: final_losses/losses.md",
    _run_final_losses, settings=FinalLossesSettings,
    readme=lambda ctx: readme_section(ctx, "Final losses", "final_losses/losses.md"),
    report_title="Final losses")


@pytest.fixture
def with_final_losses(monkeypatch):
    """The one registration: the step added to STEPS in study/steps/__init__.py."""
    monkeypatch.setattr(registered, "STEPS", (*registered.STEPS, FINAL_LOSSES))


def _study(tmp_path, extra="", name="study.toml"):
    (tmp_path / "play.txt").write_text(TINY_TEXT, encoding="utf-8")
    (tmp_path / "sums.txt").write_text(MATH_TEXT, encoding="utf-8")
    settings = {}
    for item in TINY_SETTINGS:
        key, value = item.split("=")
        section, field = key.split(".")
        settings.setdefault(section, []).append(
            f"{field} = {'[' + value + ']' if field == 'checkpoint_at' else repr(value) if value == 'cpu' else value}")
    tables = "".join(f"[{section}]\n" + "\n".join(lines) + "\n" for section, lines in
                     settings.items())
    study = tmp_path / name
    study.write_text(f'[study]\ncorpora = ["{tmp_path / "play.txt"}", "{tmp_path / "sums.txt"}"]\n'
                     f'steps = ["train", "final_losses"]\n{tables}{extra}', encoding="utf-8")
    return study


def test_a_new_step_is_one_module_and_one_registration(tmp_path, with_final_losses):
    study = _study(tmp_path, "[final_losses]\ndigits = 2\n")
    assert load_study(study).settings["final_losses"] == FinalLossesSettings(digits=2)
    with pytest.raises(LmscopeError, match="did you mean final_losses.digits"):
        load_study(_study(tmp_path, "[final_losses]\ndigit = 2\n", "bad.toml"))  # checked
    out = tmp_path / "out"
    timings = run_study(study, out, device="cpu", log=lambda m: None)
    assert set(timings) == {"train", "final_losses"}
    table = (out / "final_losses" / "losses.md").read_text()
    assert "| play |" in table and "| sums |" in table
    assert "## Final losses" in (out / "README.md").read_text()  # its README section
    assert "<h2>Final losses</h2>" in (out / "report.html").read_text()  # its report section
    help_text = CliRunner().invoke(cli, ["study", "--help"]).output  # and the help
    assert "final_losses" in help_text and "each run's whole-split validation loss" in help_text


def test_every_step_declares_what_the_study_needs():
    names = [step.name for step in registered.STEPS]
    assert len(set(names)) == len(names)
    assert set(registered.DEFAULT_STEPS) | set(registered.VARIANT_STEPS) <= set(names)
    assert names.index("seeds") > names.index("generation")  # seeds reads generation's results
    for step in registered.STEPS:
        assert step.summary and (step.run or step.part)  # something to do
        assert step.parts is None or step.part is not None  # its parts are done by `part`
        assert all(names.index(r) < names.index(step.name) for r in step.reads)  # runs before
        if step.settings is not None:
            assert dataclasses.is_dataclass(step.settings)
            step.settings()  # every setting has a default


def _reference() -> str:
    """docs/studies.md: every step, from the registry."""
    rows = []
    for step in registered.STEPS:
        keys = ", ".join(f"`{f.name}`" for f in dataclasses.fields(step.settings)) \
            if step.settings else ""
        rows.append([f"`{step.name}`", f"`{step.command}`" if step.command else "",
                     step.summary.replace("<", "&lt;"), f"[{step.name}] {keys}" if keys else "",
                     f"`{step.result.__module__}.{step.result.__name__}`" if step.result else "",
                     "domain" if step.per_corpus else "any"])
    return ("# Study steps\n\nEvery step a study file can list in `steps = [...]`, in the order a "
            "study runs them, written from the step registry (`src/lmscope/study/steps/`); "
            "`lmscope study --help` lists the same. Regenerate this page with "
            "`LMSCOPE_WRITE_DOCS=1 pytest tests/study/test_registry.py`. Steps marked *domain* "
            "compare one model per corpus and are not for studies with `[[variant]]` tables or "
            "seeds. Default steps: " + ", ".join(registered.DEFAULT_STEPS) + " (with "
            "`[[variant]]` tables: " + ", ".join(registered.VARIANT_STEPS) + ").\n\n" +
            markdown_table(["step", "the command it runs", "what it writes", "its table",
                            "its result", "studies"], rows) +
            "\nTo add a step, see [adding a probe](adding-a-probe.md).\n")


def test_the_step_reference_is_up_to_date():
    if os.environ.get("LMSCOPE_WRITE_DOCS"):
        DOC.write_text(_reference(), encoding="utf-8")
    assert DOC.read_text(encoding="utf-8") == _reference(), \
        "docs/studies.md is out of date: LMSCOPE_WRITE_DOCS=1 pytest tests/study/test_registry.py"
