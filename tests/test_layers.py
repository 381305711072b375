"""The layer rules that `lint-imports` does not see: where lmscope may import itself lazily."""

import ast
from pathlib import Path

import lmscope

ROOT = Path(lmscope.__file__).parent


def in_function_imports() -> dict[str, list[str]]:
    """module path -> the lmscope modules it imports inside a function."""
    found: dict[str, list[str]] = {}
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
                        found.setdefault(str(path.relative_to(ROOT)), []).append(name)
    return found


def test_only_the_command_line_imports_lmscope_inside_functions():
    """cli.py imports each command's modules when the command runs, so `lmscope --help` does not
    wait for torch (benchmarks/cli_startup.py); everywhere else imports sit at the top."""
    found = in_function_imports()
    assert set(found) == {"cli.py"}, found
