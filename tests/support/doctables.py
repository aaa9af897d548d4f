"""The field tables of the documented JSON shapes (docs/*-json.md), and a check of real output against
them."""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

ROW = re.compile(r"^\| `([^`]+)` \| ([^|]+) \|")


def documented_tables(doc: Path, sections: Collection[str] | None = None) -> dict[str, dict[str, str]]:
    """Given a doc page and optionally the `## ` sections to read (default: every one), return section →
    field path → type from their tables. A section read with no rows maps to an empty table."""
    tables: dict[str, dict[str, str]] = {}
    section = ""
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            if sections is None or section in sections:
                tables[section] = {}
        match = ROW.match(line)
        if match and section in tables:
            tables[section][match.group(1)] = match.group(2).strip()
    return tables


def check_shape(
    value: Any, table: str, tables: dict[str, dict[str, str]], seen: set[tuple[str, str]]
) -> None:
    """Assert that *value* has exactly the fields documented in *table*, of the documented types; add every
    (table, field path) met to *seen*."""
    rows = tables[table]

    def json_type(item: Any) -> str:
        if item is None:
            return "null"
        if isinstance(item, bool):
            return "boolean"
        if isinstance(item, int):
            return "integer"
        if isinstance(item, float):
            return "number"
        if isinstance(item, str):
            return "string"
        return "array" if isinstance(item, list) else "object"

    def walk(item: Any, path: str) -> None:
        seen.add((table, path))
        allowed = [part.strip() for part in rows[path].split(" or ")] if path else ["object"]
        kind = json_type(item)
        named = [name for name in allowed if name in tables]
        if kind == "object" and named:
            check_shape(item, named[0], tables, seen)
            return
        free_form = "object (free-form)" in allowed
        ok = (
            kind in allowed or (kind == "integer" and "number" in allowed) or (kind == "object" and free_form)
        )
        assert ok, f"{table} {path}: {kind} is not {rows[path]}"
        if kind == "object" and not free_form:
            prefix = f"{path}." if path else ""
            expected = {
                p[len(prefix) :] for p in rows if p.startswith(prefix) and "." not in p[len(prefix) :]
            }
            expected = {p for p in expected if not p.endswith("[]")}
            assert set(item) == expected, f"{table} {path or '(top)'}: {sorted(item)} != {sorted(expected)}"
            for key, child in item.items():
                walk(child, f"{prefix}{key}")
        elif kind == "array":
            for element in item:
                walk(element, f"{path}[]")

    walk(value, "")
