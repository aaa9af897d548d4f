"""Engines for the catalogue: SQLite with WAL, a busy timeout and foreign keys, or any SQLAlchemy URL.

SQLite writers start their transactions with ``BEGIN IMMEDIATE`` so that two writers never deadlock on
a lock upgrade; readers use plain deferred transactions and, under WAL, never wait for writers.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

BUSY_TIMEOUT_MS = 30_000


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """Return the file behind a SQLite URL, or None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def make_engine(url: str, *, immediate: bool = True, pool: bool = True) -> Engine:
    """Return an engine for *url*. For SQLite, *immediate* makes every transaction take the write lock
    at BEGIN (use it for writers); the directory of the file is created if missing."""
    kwargs: dict[str, Any] = {}
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        if not pool:
            kwargs["poolclass"] = NullPool
    else:
        kwargs["pool_pre_ping"] = True
        if make_url(url).get_backend_name() == "postgresql":
            from relayd.catalogue.queries.libpq import LINK_OPTIONS

            given = make_url(url).query
            kwargs["connect_args"] = {key: value for key, value in LINK_OPTIONS.items() if key not in given}
    engine = create_engine(url, **kwargs)
    if is_sqlite(url):
        _configure_sqlite(engine, immediate=immediate)
    return engine


def _configure_sqlite(engine: Engine, *, immediate: bool) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy, not pysqlite, decide when a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def unreachable(exc: BaseException) -> str | None:
    """Return the database's own first line when *exc* says the catalogue did not answer (the link or
    the server is down, or SQLite stayed locked), else None: such a failure is retried, and its
    traceback would say nothing more each time."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if not isinstance(exc, DBAPIError):
        return None
    if not (isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated):
        return None
    lines = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
