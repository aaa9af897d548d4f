"""The catalogue's schema under Alembic: one head, models equal to migrations, new catalogues at head,
older ones refused with the command that fixes them, and upgrades that back SQLite up first."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from relayd.catalogue import migrate
from relayd.catalogue.db import make_engine
from relayd.catalogue.schema import Base
from relayd.errors import SchemaMismatch


def test_there_is_exactly_one_head() -> None:
    heads = ScriptDirectory.from_config(migrate.alembic_config()).get_heads()
    assert len(heads) == 1


def test_models_match_the_migrations(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with engine.connect() as connection:
        from alembic import command

        command.upgrade(migrate.alembic_config(connection), "head")
        connection.commit()
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_a_new_catalogue_is_created_at_head_with_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate.ensure_schema(engine, auto_upgrade=False)
    assert migrate.current_revision(engine) == migrate.head_revision()
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def _make_old_catalogue(path: Path) -> None:
    """A catalogue created by an earlier relayd: the first migration only, or an unknown older stamp."""
    engine = make_engine(f"sqlite:///{path}")
    script = ScriptDirectory.from_config(migrate.alembic_config())
    revisions = [rev.revision for rev in script.walk_revisions()]
    with engine.connect() as connection:
        from alembic import command

        command.upgrade(migrate.alembic_config(connection), revisions[-1])
        connection.commit()
    engine.dispose()


def test_an_older_catalogue_is_refused_with_the_command_to_run(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    _make_old_catalogue(path)
    engine = make_engine(f"sqlite:///{path}")
    with pytest.raises(SchemaMismatch) as caught:
        migrate.ensure_schema(engine, auto_upgrade=False, config_path=Path("/etc/relayd/relayd.toml"))
    assert "relayctl -c /etc/relayd/relayd.toml db upgrade" in str(caught.value)


def test_tables_without_a_version_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    sqlite3.connect(path).execute("CREATE TABLE strangers (id INTEGER)").connection.commit()
    with pytest.raises(SchemaMismatch, match="no relayd schema version"):
        migrate.ensure_schema(make_engine(f"sqlite:///{path}"), auto_upgrade=False)


def test_upgrade_backs_up_the_sqlite_file_first(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    engine = make_engine(f"sqlite:///{path}")
    script = ScriptDirectory.from_config(migrate.alembic_config())
    first = [rev.revision for rev in script.walk_revisions()][-1]
    with engine.connect() as connection:
        from alembic import command

        command.upgrade(migrate.alembic_config(connection), first)
        connection.commit()
        connection.execute(
            text(
                "INSERT INTO repos (name, repo_type, revision, include, exclude, every, route, destinations,"
                " options, paused, poll_state, created_at, updated_at) VALUES ('a/b', 'model', 'main', '[]',"
                " '[]', 60, '[\"local_copy\"]', '{}', '{}', 0, 'new', '2026-01-01', '2026-01-01')"
            )
        )
        connection.commit()
    backup = migrate.upgrade(engine)
    assert backup is not None and backup.exists()
    assert backup.name.startswith("c.db.backup-")
    assert sqlite3.connect(backup).execute("SELECT name FROM repos").fetchall() == [("a/b",)]
    assert migrate.current_revision(engine) == migrate.head_revision()
    migrate.ensure_schema(engine, auto_upgrade=False)  # at head now: accepted


def test_auto_upgrade_upgrades_instead_of_refusing(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    engine = make_engine(f"sqlite:///{path}")
    script = ScriptDirectory.from_config(migrate.alembic_config())
    revisions = [rev.revision for rev in script.walk_revisions()]
    assert len(revisions) >= 2, "upgrading needs at least two migrations"
    with engine.connect() as connection:
        from alembic import command

        command.upgrade(migrate.alembic_config(connection), revisions[-1])
        connection.commit()
    migrate.ensure_schema(engine, auto_upgrade=True)
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_processes_creating_a_new_catalogue_at_once_all_see_a_complete_schema(tmp_path: Path) -> None:
    import subprocess
    import sys

    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'c{round_}.db'}"
        code = (
            "from relayd.catalogue.db import make_engine; from relayd.catalogue import migrate; "
            f"migrate.ensure_schema(make_engine({url!r}), auto_upgrade=False)"
        )
        processes = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE) for _ in range(3)]
        for process in processes:
            _, err = process.communicate(timeout=60)
            assert process.returncode == 0, err.decode()
