"""The package face (`import lmscope`) is lazy but gives users the same names as before."""

import subprocess
import sys

import lmscope

NAMES = ["Checkpoint", "EvalResult", "LmscopeError", "RunConfig", "TrainResult", "evaluate",
         "export_hf", "generate", "load", "logits", "read_metrics", "resolve_config",
         "run_with_cache", "run_with_hooks", "train"]


def test_the_face_has_its_names_and_dir_lists_them():
    assert sorted(lmscope.__all__) == NAMES
    assert set(NAMES) <= set(dir(lmscope))
    from lmscope.api import generate, load
    from lmscope.train.trainer import train

    assert (lmscope.train, lmscope.load, lmscope.generate) == (train, load, generate)
    namespace: dict = {}
    exec("from lmscope import *", namespace)
    assert set(NAMES) <= set(namespace)


def test_a_missing_name_is_an_attribute_error():
    try:
        lmscope.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("lmscope.no_such_name did not raise")


def test_importing_the_face_imports_no_torch_and_submodules_do_not_hide_functions():
    """`lmscope.train`, `.evaluate` and `.generate` are also submodule names; whichever is
    imported first, the face's names stay the functions (as with the eager face)."""
    code = """
import sys
import lmscope
assert "torch" not in sys.modules, "import lmscope imported torch"
import lmscope.train.trainer, lmscope.evaluate, lmscope.generate  # the submodules first
assert callable(lmscope.train) and lmscope.train.__module__ == "lmscope.train.trainer"
assert lmscope.evaluate.__module__ == "lmscope.evaluate" and callable(lmscope.evaluate)
assert lmscope.generate.__module__ == "lmscope.api" and callable(lmscope.generate)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
