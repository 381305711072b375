"""The probes that look inside a model (docs/inside.md), run as a user runs them: each command
as a subprocess on a copy of the tiny run, then a bad input of each."""

import shutil

import pytest

from tests.conftest import png
from tests.test_cli import assert_clean_error, lmscope


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
    """A copy of the tiny run: `lens train` writes beside its checkpoints."""
    return shutil.copytree(tiny_run, tmp_path_factory.mktemp("inside") / "run")


@pytest.mark.slow
def test_every_inside_command_as_a_user_runs_it(run, tiny_corpus, tmp_path):
    r = lmscope("probe", "lens", run, "--data", tiny_corpus, "--windows", 4, "--out",
                tmp_path / "lens")
    assert r.returncode == 0, r.stderr
    assert "# Logit lens" in r.stdout and "| tiny | 1.mlp | 124 |" in r.stdout
    assert png(tmp_path / "lens" / "formation.png") and png(tmp_path / "lens" / "grid_1.png")

    r = lmscope("lens", "train", run, "--data", tiny_corpus, "--steps", 5)
    assert r.returncode == 0, r.stderr
    assert [line.split(":")[0] for line in r.stdout.splitlines()] == [
        "iter_0000010", "iter_0000020", "final"]
    r = lmscope("probe", "lens", run, "--data", tiny_corpus, "--lens", "tuned", "--windows", 4,
                "--out", tmp_path / "tuned")
    assert r.returncode == 0, r.stderr
    assert "# Tuned lens" in r.stdout and "Note: tuned lens: translators trained on tiny" in r.stdout

    r = lmscope("probe", "heads", run, "--data", tiny_corpus, "--out", tmp_path / "heads")
    assert r.returncode == 0, r.stderr
    assert "induction" in r.stdout and "ICL score" in r.stdout
    assert png(tmp_path / "heads" / "heads_induction.png")

    r = lmscope("probe", "ablate", run, "--data", tiny_corpus, "--method", "zero", "--out",
                tmp_path / "ablate")
    assert r.returncode == 0, r.stderr
    assert "## Clean loss" in r.stdout and "| tiny | L0 mlp |" in r.stdout
    assert png(tmp_path / "ablate" / "heads.png")

    r = lmscope("probe", "patch", run, "--clean", "First", "--corrupt", "Furst", "--target", " ",
                "--foil", "C", "--out", tmp_path / "patch")
    assert r.returncode == 0, r.stderr
    assert "logit(target) - logit(foil)" in r.stdout and "resid_pre" in r.stdout
    assert png(tmp_path / "patch" / "patching_resid.png")


@pytest.mark.parametrize("args,fragments", [
    (("probe", "ablate", "{run}", "--data", "{corpus}", "--component", "L2H0"),
     ("no component 'L2H0'",)),
    (("probe", "heads", "{run}", "--seq-len", "64"), ("longer than the model's context",)),
    (("probe", "lens", "{run}", "--data", "{corpus}", "--prompts", "{corpus}"),
     ("one of the two",)),
    (("probe", "patch", "{run}", "--clean", "First", "--corrupt", "Fir", "--target", " "),
     ("same number of tokens",)),
])
def test_bad_input_to_the_inside_commands(run, tiny_corpus, tmp_path, args, fragments):
    args = [a.replace("{run}", str(run)).replace("{corpus}", str(tiny_corpus)) for a in args]
    r = lmscope(*args, "--out", tmp_path / "out")
    assert_clean_error(r, *fragments)
    assert not (tmp_path / "out").exists()
