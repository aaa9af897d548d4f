"""Only the store package (relayd/catalogue/store/) writes the catalogue; migrate.py, which creates and
upgrades its schema, is the one other module that may change it. Read by parsing relayd's source."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import relayd

ROOT = Path(relayd.__file__).parent
WRITER = ROOT / "catalogue" / "store"
SCHEMA_CHANGES = ROOT / "catalogue" / "migrate.py"
WRITE_CONSTRUCTS = {"insert", "update", "delete"}
SESSION_WRITES = {"add", "add_all", "merge", "delete", "_write"}
WRITE_SQL = re.compile(r"\b(INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b", re.IGNORECASE)


def writes(path: Path) -> list[str]:
    """Return each way *path* writes the catalogue: SQLAlchemy's write constructs, a session's writes
    (or the store's writing session), or SQL text that changes rows."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            found += [f"imports {a.name}" for a in node.names if a.name in WRITE_CONSTRUCTS]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
            named = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
            if node.func.attr in SESSION_WRITES and ("session" in named or node.func.attr == "_write"):
                found.append(f"calls {named}.{node.func.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and WRITE_SQL.search(node.value):
            found.append(f"SQL {node.value[:40]!r}")
    return found


def test_only_the_store_package_writes_the_catalogue() -> None:
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in ROOT.rglob("*.py")
        if WRITER not in path.parents and path != SCHEMA_CHANGES
        for found in [writes(path)]
        if found
    }
    assert offenders == {}


def test_the_check_sees_the_store_s_writes() -> None:
    """The scan above would pass on any tree if it saw no write at all; it sees the store's."""
    found = [item for path in WRITER.glob("*.py") for item in writes(path)]
    assert "imports update" in found
    assert "calls session.add" in found
    assert "calls self._write" in found
