"""The tests' own layout: helpers live in the one package tests.support and are imported as such, never
through edits of sys.path (pytest imports the test files in importlib mode, pyproject.toml)."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SUPPORT = TESTS / "support"
# An edit of the module search path: sys.path changed in place or rebound, or a site directory added.
PATH_EDIT = re.compile(
    r"sys\.path\s*(\.\s*(insert|append|extend|remove|pop|clear)\s*\(|\[[^\]]*\]\s*=|\+=|=[^=])"
    r"|site\.addsitedir\s*\("
)


def python_files() -> list[Path]:
    return sorted(TESTS.rglob("*.py"))


def test_no_test_file_edits_sys_path() -> None:
    edits = [
        f"{path.relative_to(TESTS)}:{number}: {line.strip()}"
        for path in python_files()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PATH_EDIT.search(line)
    ]
    assert edits == []


def test_the_pattern_finds_every_kind_of_edit() -> None:
    # Spelt SYS and SITE here, so that this file holds no edit itself.
    edits = [
        "SYS.path.insert(0, str(here))",
        "SYS.path.append('x')",
        "SYS.path.extend(more)",
        "SYS.path[:0] = [here]",
        "SYS.path += [here]",
        "SYS.path = [here, *SYS.path]",
        "SITE.addsitedir(here)",
    ]
    assert all(PATH_EDIT.search(line.replace("SYS", "sys").replace("SITE", "site")) for line in edits)
    assert not PATH_EDIT.search("if SYS.path == before:".replace("SYS", "sys"))


def test_helpers_live_in_tests_support_and_are_imported_from_there() -> None:
    outside = [
        path.relative_to(TESTS).as_posix()
        for path in python_files()
        if SUPPORT not in path.parents
        and not path.name.startswith("test_")
        and path.name not in ("conftest.py", "__init__.py")
    ]
    assert outside == []
    helpers = sorted(path.stem for path in SUPPORT.glob("*.py") if path.name != "__init__.py")
    assert "drivebox" in helpers
    bare = re.compile(rf"^\s*(from|import)\s+({'|'.join(helpers)}|conftest|test_\w+)\b", re.M)
    by_bare_name = [
        path.relative_to(TESTS).as_posix() for path in python_files() if bare.search(path.read_text())
    ]
    assert by_bare_name == []
