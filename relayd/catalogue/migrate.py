"""Create, check and upgrade the catalogue's schema with Alembic, from a checkout or an installed wheel.

A new catalogue is created at head and stamped; an older one is refused with the exact command to run,
unless the config allows automatic upgrade; ``upgrade`` backs a SQLite file up before touching it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from relayd.catalogue.db import sqlite_path
from relayd.catalogue.revisions import migrations_dir
from relayd.catalogue.schema import Base
from relayd.errors import CatalogueError, SchemaMismatch

log = logging.getLogger(__name__)

# Any constant works: it names the lock that serialises schema changes on a shared PostgreSQL catalogue.
_PG_SCHEMA_LOCK = 0x72656C6179  # "relay"


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    """Return an Alembic config built in code (an installed relayd has no alembic.ini)."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise CatalogueError(f"the migrations have {len(heads)} heads; expected one")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    """Return the catalogue's Alembic revision, or None when it has none."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _is_empty(engine: Engine) -> bool:
    return not inspect(engine).get_table_names()


def _lock_schema(connection: Connection) -> None:
    """On PostgreSQL, hold a transaction-scoped advisory lock so that relayd processes starting together
    change the schema one after another (SQLite serialises the transactions by itself)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_SCHEMA_LOCK})


@contextmanager
def _migration_connection(engine: Engine) -> Iterator[Connection]:
    """Yield a connection for migrations; SQLite's foreign keys are off while batch mode rebuilds tables."""
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        if isinstance(raw, sqlite3.Connection):
            raw.execute("PRAGMA foreign_keys = OFF")
        try:
            yield connection
        finally:
            if isinstance(raw, sqlite3.Connection):
                raw.execute("PRAGMA foreign_keys = ON")


def create_fresh(engine: Engine) -> None:
    """Create every table of an empty catalogue and stamp it at head, in one transaction: a daemon and
    relayctl starting together never see tables without a version (and both may try; the second finds
    the tables there and only re-stamps)."""
    with _migration_connection(engine) as connection, connection.begin():
        _lock_schema(connection)
        Base.metadata.create_all(connection)
        command.stamp(alembic_config(connection), "head")
    log.info("created a new catalogue at schema %s", head_revision())


def ensure_schema(engine: Engine, *, auto_upgrade: bool, config_path: Path | None = None) -> None:
    """Make sure the catalogue is at head: create a new one, upgrade if allowed, else refuse.

    Raise SchemaMismatch naming the command that fixes it.
    """
    if _is_empty(engine):
        create_fresh(engine)
        return
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if auto_upgrade and current is not None:
        upgrade(engine)
        return
    where = f" -c {config_path}" if config_path else ""
    if current is None:
        raise SchemaMismatch(
            f"the catalogue has tables but no relayd schema version; is the URL right? "
            f"(expected schema {head}; if this is a relayd catalogue, run `relayctl{where} db upgrade`)"
        )
    raise SchemaMismatch(
        f"the catalogue's schema is {current}, this relayd needs {head}: "
        f"run `relayctl{where} db upgrade` (it backs up a SQLite catalogue first), "
        "or set catalogue.auto_upgrade = true"
    )


def backup_sqlite(engine: Engine) -> Path | None:
    """Copy a SQLite catalogue to ``<file>.backup-<UTC time>`` with SQLite's online backup; return it."""
    path = sqlite_path(str(engine.url))
    if path is None or not path.exists():
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.backup-{stamp}")
    source = sqlite3.connect(path)
    try:
        destination = sqlite3.connect(target)
        try:
            source.backup(destination)
        finally:
            destination.close()
    finally:
        source.close()
    log.info("backed up the catalogue to %s", target)
    return target


def upgrade(engine: Engine, *, revision: str = "head", backup: bool = True) -> Path | None:
    """Upgrade the catalogue to *revision*, backing a SQLite file up first; return the backup path."""
    if _is_empty(engine):
        create_fresh(engine)
        return None
    backup_path = backup_sqlite(engine) if backup else None
    with _migration_connection(engine) as connection:
        _lock_schema(connection)
        command.upgrade(alembic_config(connection), revision)
        connection.commit()
    log.info("upgraded the catalogue to %s", current_revision(engine))
    return backup_path
