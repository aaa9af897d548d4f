"""Migration 0003 (failure streaks): a catalogue of 0002 with repos and transfers upgrades with every
repo and transfer outside a streak, and downgrades again keeping its rows."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import inspect, text

from relayd.catalogue import migrate
from relayd.catalogue.db import make_engine

ROWS = (
    "INSERT INTO repos (id, name, repo_type, revision, include, exclude, every, route, destinations, options,"
    " paused, poll_state, poll_error, created_at, updated_at) VALUES (1, 'a/b', 'model', 'main', '[]', '[]',"
    " 60, '[\"local_copy\"]', '{}', '{}', 0, 'waiting', 'reset', '2026-01-01', '2026-01-01')",
    "INSERT INTO transfers (id, repo_id, hop, step, state, bytes_done, bytes_total, bytes_moved, attempts,"
    " last_error, handles, created_at, updated_at) VALUES (1, 1, 'local_copy', 0, 'waiting', 0, 10, 0, 3,"
    " 'reset', '{}', '2026-01-01', '2026-01-01')",
)


def test_0003_upgrades_an_0002_catalogue_and_downgrades_again(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with engine.connect() as connection:
        command.upgrade(migrate.alembic_config(connection), "0002")
        for row in ROWS:
            connection.execute(text(row))
        connection.commit()

    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    with engine.connect() as connection:
        repo = connection.execute(
            text("SELECT poll_attempts, poll_failing_since, poll_surfaced_at, poll_error_class FROM repos")
        ).one()
        transfer = connection.execute(
            text("SELECT attempts, failing_since, surfaced_at FROM transfers")
        ).one()
    assert tuple(repo) == (0, None, None, None)
    assert tuple(transfer) == (3, None, None)
    assert "ix_transfers_failing" in {index["name"] for index in inspect(engine).get_indexes("transfers")}

    # Batch mode rebuilds the tables: with foreign keys on, dropping repos would cascade to transfers.
    with migrate._migration_connection(engine) as connection:
        command.downgrade(migrate.alembic_config(connection), "0002")
        connection.commit()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT name, poll_error FROM repos")).one() == ("a/b", "reset")
        assert connection.execute(text("SELECT attempts FROM transfers")).scalar() == 3
    assert "failing_since" not in {column["name"] for column in inspect(engine).get_columns("transfers")}
