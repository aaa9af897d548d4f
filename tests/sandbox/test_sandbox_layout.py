"""The sandbox stays out of the product and keeps one job per module: relayd imports it only in the demo,
only when the demo runs; no module of the sandbox grows past about 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import relayd
import relayd_sandbox

PRODUCT = Path(relayd.__file__).resolve().parent
SANDBOX = Path(relayd_sandbox.__file__).resolve().parent
MOST_LINES = 600


def sandbox_imports(tree: ast.Module) -> list[tuple[ast.stmt, bool]]:
    """Return each import of relayd_sandbox in *tree*, with whether it sits inside a function (or under
    ``if TYPE_CHECKING:``, which never runs)."""
    in_functions = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.FunctionDef | ast.AsyncFunctionDef)
        or (
            isinstance(block, ast.If)
            and isinstance(block.test, ast.Name)
            and block.test.id == "TYPE_CHECKING"
        )
        for node in ast.walk(block)
    }
    found: list[tuple[ast.stmt, bool]] = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        if any(name.split(".")[0] == "relayd_sandbox" for name in names):
            assert isinstance(node, ast.Import | ast.ImportFrom)
            found.append((node, id(node) in in_functions))
    return found


def test_relayd_imports_the_sandbox_only_inside_the_demos_functions() -> None:
    places = {
        (path.relative_to(PRODUCT).as_posix(), inside)
        for path in PRODUCT.rglob("*.py")
        for _node, inside in sandbox_imports(ast.parse(path.read_text(), str(path)))
    }
    # The demos, each imported only when `relayd demo` runs (demo_sites.py by demo.py, lazily).
    assert places == {("demo.py", True), ("demo_sites.py", True)}


def test_the_import_finder_sees_module_level_imports() -> None:
    code = (
        "import relayd_sandbox.hub\nfrom relayd_sandbox import route\ndef f():\n    import relayd_sandbox\n"
    )
    assert [inside for _node, inside in sandbox_imports(ast.parse(code))] == [False, False, True]


def test_no_sandbox_module_is_over_600_lines() -> None:
    sizes = {path.name: len(path.read_text().splitlines()) for path in SANDBOX.glob("*.py")}
    assert "hub.py" in sizes and "drive_store.py" in sizes
    assert {name: lines for name, lines in sizes.items() if lines > MOST_LINES} == {}
