"""How the read-only queries reach the catalogue: a ``Reader``, and the values it hands back.

``relayctl status`` must answer in a fraction of a second, and on a small machine importing SQLAlchemy
alone takes most of that budget. So the queries are plain, portable SQL (named ``:params``, standard
GROUP BY, no dialect functions) run through a ``Reader``: the standard library's sqlite3 for a SQLite
catalogue (``SqliteReader``), libpq itself for PostgreSQL (``libpq.LibpqReader``), SQLAlchemy's
``text()`` for any other URL (``EngineReader``). This module
opens the right one, converts what comes back (SQLite hands back text for datetimes and JSON, other
databases objects), builds IN lists, and reads the schema's revision.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

BUSY_TIMEOUT_S = 30.0


class Reader(Protocol):
    """Runs SELECTs and returns their rows as tuples; inside ``consistent()`` they all see one snapshot."""

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]: ...

    def consistent(self) -> AbstractContextManager[None]: ...

    def has_table(self, name: str) -> bool: ...

    def close(self) -> None: ...


class SqliteReader:
    """A Reader over a SQLite file through the standard library (no SQLAlchemy import)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # isolation_level=None: we say when a transaction begins. Under WAL a reader never waits for the
        # daemon's writes, nor they for it.
        self._connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self._connection.execute(sql, dict(params or {})).fetchall()

    @contextmanager
    def consistent(self) -> Iterator[None]:
        """Run the reads inside one read transaction, so a summary's numbers agree with each other."""
        self._connection.execute("BEGIN")
        try:
            yield
        finally:
            self._connection.execute("COMMIT")

    def has_table(self, name: str) -> bool:
        found = self.rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name", {"name": name})
        return bool(found)

    def close(self) -> None:
        self._connection.close()


class EngineReader:
    """A Reader over any SQLAlchemy engine (PostgreSQL, or SQLite when a test wants this path)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._connection: Connection | None = None

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        from sqlalchemy import text

        if self._connection is not None:
            return [tuple(row) for row in self._connection.execute(text(sql), dict(params or {}))]
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql), dict(params or {}))]

    @contextmanager
    def consistent(self) -> Iterator[None]:
        """Run the reads on one connection in one repeatable-read transaction (one snapshot)."""
        options: dict[str, Any] = {}
        if self.engine.dialect.name != "sqlite":
            options["isolation_level"] = "REPEATABLE READ"
        with self.engine.connect().execution_options(**options) as connection, connection.begin():
            self._connection = connection
            try:
                yield
            finally:
                self._connection = None

    def has_table(self, name: str) -> bool:
        from sqlalchemy import inspect

        return inspect(self.engine).has_table(name)

    def close(self) -> None:
        self.engine.dispose()


_POSTGRES_URL = re.compile(r"^postgres(?:ql)?\+psycopg://")
_SQLITE_URL = re.compile(r"sqlite(?:\+pysqlite)?:///(?P<path>[^?%\n]+)")


def sqlite_file(url: str) -> Path | None:
    """Return the file of a plain SQLite URL (``sqlite:///rel`` or ``sqlite:////abs``), else None.

    URLs with query options or escapes return None, so they go through SQLAlchemy, which reads them fully.
    """
    match = _SQLITE_URL.fullmatch(url)
    if match is None or match.group("path") == ":memory:":
        return None
    return Path(match.group("path"))


def open_reader(url: str) -> Reader:
    """Return a Reader for the catalogue at *url*: sqlite3 for a plain SQLite file, libpq for
    PostgreSQL through psycopg, else SQLAlchemy."""
    path = sqlite_file(url)
    if path is not None:
        return SqliteReader(path)
    if _POSTGRES_URL.match(url):
        from relayd.catalogue.queries.libpq import LibpqError, LibpqReader, find_libpq

        lib = find_libpq()
        if lib is None:
            raise LibpqError(
                "cannot load libpq to read the catalogue: reinstall relayd (it needs psycopg[binary]) "
                "or install the system's libpq (apt install libpq5)"
            )
        return LibpqReader(url, lib)
    from relayd.catalogue.db import make_engine

    return EngineReader(make_engine(url, immediate=False))


# -- value conversion (SQLite hands back text for datetimes and JSON, other databases objects) ---------


def as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def from_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def in_list(prefix: str, values: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """Return ``:p0, :p1, …`` and their values, for an IN list (empty lists never reach SQL)."""
    names = {f"{prefix}{i}": value for i, value in enumerate(values)}
    return ", ".join(f":{name}" for name in names), names


def schema_revision(reader: Reader) -> str | None:
    """Return the catalogue's Alembic revision, or None when it has none (a new or foreign database)."""
    if not reader.has_table("alembic_version"):
        return None
    rows = reader.rows("SELECT version_num FROM alembic_version")
    return str(rows[0][0]) if len(rows) == 1 else None


def schema_at_head(reader: Reader) -> bool:
    """Return whether the catalogue is at the migrations' head, told without importing Alembic
    (False when unsure: then Alembic decides)."""
    from relayd.catalogue.revisions import fast_head_revision

    head = fast_head_revision()
    return head is not None and schema_revision(reader) == head
