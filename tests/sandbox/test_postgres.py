"""The throwaway PostgreSQL server the catalogue's tests and the two-site demo start for themselves."""

from __future__ import annotations

import os

import psycopg
import pytest
from sqlalchemy import create_engine, text

from relayd_sandbox.postgres import ThrowawayPostgres


def test_a_database_of_its_own_is_reachable_through_its_url(postgres_server: ThrowawayPostgres) -> None:
    url = postgres_server.create_database("relayd_sandbox_probe")
    try:
        engine = create_engine(url)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT current_database()")).scalar() == "relayd_sandbox_probe"
            listen = connection.execute(text("SHOW listen_addresses")).scalar()
        engine.dispose()
        assert listen == "127.0.0.1"
    finally:
        postgres_server.drop_database("relayd_sandbox_probe")
    with postgres_server.admin() as admin:
        names = [row[0] for row in admin.execute("SELECT datname FROM pg_database")]
    assert "relayd_sandbox_probe" not in names


def test_stop_ends_the_server_and_removes_its_directory() -> None:
    server = ThrowawayPostgres().start()
    pid, workdir, port = server.pid, server.workdir, server.port
    assert pid is not None and workdir.is_dir()
    server.stop()
    assert not workdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=2)


def test_database_names_are_checked() -> None:
    server = ThrowawayPostgres()
    try:
        with pytest.raises(ValueError, match="letters, digits"):
            server.create_database('x"; DROP DATABASE postgres; --')
    finally:
        server.stop()
