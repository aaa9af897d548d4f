"""relayctl's PostgreSQL reader (libpq through ctypes, each query's rows as one JSON document), against
the sandbox's throwaway PostgreSQL: values as the SQLite reader gives them, the query's order, repeated
column names, parameters, one snapshot, clear errors without secrets, and no heavy import."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from relayd.catalogue import migrate, queries
from relayd.catalogue.db import make_engine
from relayd.catalogue.queries.libpq import LibpqError, LibpqReader, find_libpq
from relayd.catalogue.queries.reader import EngineReader
from relayd.catalogue.store import FileSpec, RepoSpec, Store
from relayd.catalogue.store.records import utcnow
from relayd.catalogue.store.workers import WorkerBeat


@pytest.fixture
def reader(postgres_url: str) -> Iterator[LibpqReader]:
    opened = queries.open_reader(postgres_url)
    assert isinstance(opened, LibpqReader)
    yield opened
    opened.close()


def test_values_come_back_as_the_sqlite_reader_gives_them(reader: LibpqReader) -> None:
    (row,) = reader.rows(
        "SELECT 7 AS n, 10000000000000000000000::numeric AS big, 1.5::float AS f, true AS yes, "
        "NULL AS nothing, 'it''s' AS quoted, '{\"a\": {\"b\": [1, {\"c\": null}]}}'::json AS doc, "
        "'[\"x\", \"y\"]'::jsonb AS list, TIMESTAMPTZ '2026-12-06 01:02:03.5+00' AS moment, "
        "TIMESTAMP '2026-12-06 01:02:03' AS naive"
    )
    n, big, f, yes, nothing, quoted, doc, listed, moment, naive = row
    assert (n, big, f, yes, nothing, quoted) == (7, 10**22, 1.5, True, None, "it's")
    assert doc == {"a": {"b": [1, {"c": None}]}} and listed == ["x", "y"]
    assert queries.reader.as_utc(moment) == datetime(2026, 12, 6, 1, 2, 3, 500000, tzinfo=UTC)
    assert queries.reader.as_utc(naive) == datetime(2026, 12, 6, 1, 2, 3, tzinfo=UTC)


def test_rows_keep_the_query_order_and_repeated_column_names(reader: LibpqReader) -> None:
    rows = reader.rows("SELECT n AS id, n * 2 AS id FROM generate_series(1, 5000) AS n ORDER BY n DESC")
    assert rows[:2] == [(5000, 10000), (4999, 9998)] and rows[-1] == (1, 2) and len(rows) == 5000
    nested = reader.rows('SELECT 1 AS id, \'{"id": 2, "id": 3}\'::json AS doc, 4 AS id')
    assert nested == [(1, {"id": 3}, 4)]
    assert reader.rows("SELECT 1 AS one WHERE false") == []
    # a column named like the reader's own alias for the row is still a column
    assert reader.rows("SELECT 5 AS relayd_row, 6 AS t") == [(5, 6)]


def test_named_parameters_become_positional_and_casts_stay(reader: LibpqReader) -> None:
    now = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
    rows = reader.rows(
        "SELECT :text AS a, :text || '!' AS b, :flag::boolean AS c, :when::timestamptz AS d, "
        "CAST(:count AS integer) + 1 AS e, :missing::text AS f",
        {"text": "x'; DROP TABLE y; --", "flag": False, "when": now, "count": 41, "missing": None},
    )
    a, b, c, d, e, f = rows[0]
    assert (a, b, c, e, f) == ("x'; DROP TABLE y; --", "x'; DROP TABLE y; --!", False, 42, None)
    assert queries.reader.as_utc(d) == now


def test_consistent_reads_see_one_snapshot(reader: LibpqReader, postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as other:
        other.execute("CREATE TABLE counted (n integer)")
        other.execute("INSERT INTO counted VALUES (1)")
        with reader.consistent():
            assert reader.rows("SELECT count(*) FROM counted") == [(1,)]
            other.execute("INSERT INTO counted VALUES (2)")
            assert reader.rows("SELECT count(*) FROM counted") == [(1,)]
        assert reader.rows("SELECT count(*) FROM counted") == [(2,)]


def test_errors_are_clear_and_carry_no_password(reader: LibpqReader, postgres_url: str) -> None:
    with pytest.raises(LibpqError, match='column "nope" does not exist'):
        reader.rows("SELECT nope FROM generate_series(1, 2) AS n")
    assert reader.rows("SELECT 1 AS still_usable") == [(1,)]
    lib = find_libpq()
    assert lib is not None
    refused = postgres_url.replace("postgres@", "postgres:s3cr3t-pw@").rsplit(":", 1)[0] + ":1/nowhere"
    with pytest.raises(LibpqError) as failed:
        LibpqReader(refused, lib)
    message = str(failed.value)
    assert "cannot reach the catalogue" in message and "[catalogue] url" in message
    assert "s3cr3t-pw" not in message


def test_every_status_question_agrees_with_sqlalchemy(postgres_url: str) -> None:
    store = Store(postgres_url)
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    repo, _ = store.add_repo(RepoSpec(name="acme/big", every=3600, route=("local_copy",)))
    specs = [
        FileSpec(f"f{i:04d}.bin", 1000 + i, True, hashlib.sha256(f"content {i}".encode()).hexdigest())
        for i in range(300)
    ]
    store.record_snapshot(repo.id, "d" * 40, specs)
    for index in range(120):
        claimed = store.claim("local_copy", "w", lease=60)
        assert claimed is not None
        if index % 3:
            store.complete(claimed.id, "w", {"path": f"/dest/{index}"})
        else:
            store.defer(claimed.id, "w", state="waiting", error="try later", error_class="network", hint="")
    store.beat(WorkerBeat("w", "abroad", "here", 1, ("local_copy",), "t", utcnow()))
    store.publish("daemon", {"pid": 1, "version": "t", "state": "running"})
    store.close()
    fast = queries.open_reader(postgres_url)
    slow = EngineReader(make_engine(postgres_url, immediate=False))
    now = datetime.now(UTC) + timedelta(seconds=1)
    try:
        assert queries.summary(fast, now=now) == queries.summary(slow, now=now)
        assert queries.repo_detail(fast, "acme/big", now=now) == queries.repo_detail(
            slow, "acme/big", now=now
        )
        assert queries.whereis(fast, "acme/big") == queries.whereis(slow, "acme/big")
        assert queries.measured_rates(fast, ["local_copy"], now=now) == queries.measured_rates(
            slow, ["local_copy"], now=now
        )
        assert queries.bytes_avoided(fast) == queries.bytes_avoided(slow)
        assert queries.service_facts(fast) == queries.service_facts(slow)
        from relayd.catalogue.queries.workers import workers

        assert workers(fast, now) == workers(slow, now) != []
    finally:
        fast.close()
        slow.close()


def test_relayctl_status_on_postgresql_imports_neither_psycopg_nor_sqlalchemy(
    postgres_url: str, tmp_path: Path, make_config: Callable[..., Path]
) -> None:
    store = Store(postgres_url)
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    store.add_repo(RepoSpec(name="acme/shared", every=3600, route=("local_copy",)))
    store.close()
    config = make_config(tmp_path, catalogue={"url": postgres_url})
    code = (
        "import sys\n"
        "from relayd.cli import cli\n"
        f"cli.main({['-c', str(config), 'status', '--json']!r}, standalone_mode=False)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'psycopg', 'sqlalchemy', 'alembic'}),"
        " file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert [repo["name"] for repo in json.loads(done.stdout)["repos"]] == ["acme/shared"]
    assert done.stderr.strip() == "[]"
