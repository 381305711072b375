"""A layer rule that `lint-imports` does not see: lmscope imports its own modules at the top."""

import ast
from pathlib import Path

import lmscope

ROOT = Path(lmscope.__file__).parent

# The only imports of lmscope inside a function, each with its reason. The command line imports
# what a command runs in the command's body: these modules import torch (seconds), and parsing,
# --help, usage errors and `data list` must not (issue 15; tests/test_cli.py checks it).
ALLOWED = {
    "cli.py": {
        "lmscope.analysis": "probes and analyses of the commands that run them (torch)",
        "lmscope.analysis.transfer": "`transfer` (torch)",
        "lmscope.api": "`sample` and `eval` load checkpoints (torch)",
        "lmscope.config": "`train`: configs import the models registry (torch)",
        "lmscope.evaluate": "`eval` (torch)",
        "lmscope.export": "`export` (torch)",
        "lmscope.generate": "`sample` (torch)",
        "lmscope.run.run_dir": "`train --resume`: run folders import checkpoints (torch)",
        "lmscope.study": "`study --help` lists the registered steps, which import the probes",
        "lmscope.study.runner": "`study` and `report` (torch)",
        "lmscope.train.trainer": "`train` (torch)",
    },
}


def in_function_imports() -> dict[str, set[str]]:
    """module path -> the lmscope modules it imports inside a function."""
    found: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                names = []
                if isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                for name in names:
                    if name == "lmscope" or name.startswith("lmscope."):
                        found.setdefault(str(path.relative_to(ROOT)), set()).add(name)
    return found


def test_no_module_imports_lmscope_inside_a_function_but_the_listed_ones():
    """Imports inside functions hide the layers from a reader; only the command line's deferred
    imports (listed above, with their reasons) are allowed, and every listed one is used."""
    assert in_function_imports() == {path: set(mods) for path, mods in ALLOWED.items()}
