"""Each module of relayd and of the sandbox does one job: none is over LIMIT lines unless its docstring
says why (issue 14), in words this test can find: "over 600 lines because …"."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 600
#: A module's docstring that keeps it over the limit says so, with its reason.
REASON = re.compile(rf"\bover {LIMIT} lines (because|since|:)", re.IGNORECASE)
#: Modules being split now (issue 14, item 6), each on its own branch; an entry goes with its split.
SPLITTING = frozenset(
    {
        "relayd/drive/aligo_backend.py",
    }
)


def modules() -> list[Path]:
    """Return every Python module of relayd/ and sandbox/ (not virtual environments or builds)."""
    found = [*ROOT.joinpath("relayd").rglob("*.py"), *ROOT.joinpath("sandbox").rglob("*.py")]
    return sorted(p for p in found if not {".venv", "build", "site-packages"} & set(p.parts))


def line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_the_modules_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in modules()}
    assert {"relayd/engine.py", "relayd/vm/agent/core.py", "sandbox/relayd_sandbox/hub.py"} <= names


def test_no_module_is_over_the_limit_without_a_reason() -> None:
    over = {}
    for path in modules():
        relative = path.relative_to(ROOT).as_posix()
        lines = line_count(path)
        if lines <= LIMIT or relative in SPLITTING:
            continue
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if not REASON.search(docstring):
            over[relative] = lines
    assert not over, (
        f"modules over {LIMIT} lines {over}: split each by responsibility, or say at the top of its "
        f'docstring why it is one module ("over {LIMIT} lines because …")'
    )


def test_every_module_being_split_is_still_over_the_limit() -> None:
    # Once a split lands, its entry goes, so that nothing can grow back in its place unseen.
    done = {name for name in SPLITTING if not (ROOT / name).is_file() or line_count(ROOT / name) <= LIMIT}
    assert done == set()


def test_a_stated_reason_is_recognised() -> None:
    assert REASON.search("The schema.\n\nOver 600 lines because the tables refer to each other.")
    assert not REASON.search("A module of 900 lines.")
