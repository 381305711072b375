"""A layer rule that `lint-imports` does not see: lmscope imports its own modules at the top."""

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


def test_no_module_imports_lmscope_inside_a_function():
    """Imports inside functions hide the layers from a reader; lmscope has no reason for any
    (`import lmscope.cli` runs the package face, which imports torch anyway)."""
    assert in_function_imports() == {}
