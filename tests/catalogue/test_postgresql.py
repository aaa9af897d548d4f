"""Several relayd workers sharing one PostgreSQL catalogue (a throwaway server the tests start): the schema
and migrations, claims that never hand one transfer to two workers, leases that come back, and two
real daemons splitting one repo's work."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from relayd.catalogue import migrate
from relayd.catalogue.schema import DONE, Base, Transfer
from relayd.catalogue.store import FileSpec, RepoSpec, Store


def test_migrations_build_the_same_schema_as_the_models_on_postgresql(postgres_url: str) -> None:
    store = Store(postgres_url)
    try:
        with store.engine.connect() as connection:
            command.upgrade(migrate.alembic_config(connection), "head")
            connection.commit()
        with store.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        migrate.ensure_schema(store.engine, auto_upgrade=False)
    finally:
        store.close()


def seed(store: Store, files: int) -> None:
    repo, _ = store.add_repo(RepoSpec(name="acme/shared", every=3600, route=("local_copy",)))
    specs = [
        FileSpec(f"f{i}.bin", 10, True, hashlib.sha256(f"content {i}".encode()).hexdigest())
        for i in range(files)
    ]
    store.record_snapshot(repo.id, "c" * 40, specs)


def test_concurrent_workers_never_claim_the_same_transfer(postgres_url: str) -> None:
    setup = Store(postgres_url)
    migrate.ensure_schema(setup.engine, auto_upgrade=False)
    seed(setup, 60)
    claimed: dict[str, list[int]] = {}
    lock = threading.Lock()

    def worker(owner: str) -> None:
        store = Store(postgres_url)
        mine: list[int] = []
        try:
            while (transfer := store.claim("local_copy", owner, lease=60)) is not None:
                mine.append(transfer.id)
        finally:
            store.close()
        with lock:
            claimed[owner] = mine

    threads = [threading.Thread(target=worker, args=(f"worker-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every = [transfer_id for ids in claimed.values() for transfer_id in ids]
    assert len(every) == 60
    assert len(set(every)) == 60, "a transfer was claimed twice"
    assert sum(1 for ids in claimed.values() if ids) >= 2, "the work was shared"
    setup.close()


def test_an_expired_lease_on_postgresql_comes_back(postgres_url: str) -> None:
    store = Store(postgres_url)
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    seed(store, 1)
    first = store.claim("local_copy", "crashed", lease=0.5)
    assert first is not None
    assert store.claim("local_copy", "other", lease=60) is None
    time.sleep(0.7)
    again = store.claim("local_copy", "other", lease=60)
    assert again is not None and again.id == first.id and again.attempts == 2
    store.close()


def test_two_daemons_share_one_postgresql_catalogue(postgres_url: str, tmp_path: Path) -> None:
    source = tmp_path / "source" / "acme" / "shared"
    source.mkdir(parents=True)
    for i in range(12):
        (source / f"f{i:02d}.bin").write_bytes(os.urandom(1_000_000))
    processes = []
    for n in range(2):
        config = tmp_path / f"relayd{n}.toml"
        config.write_text(
            f"""[daemon]
state_dir = "{tmp_path / f"state{n}"}"
idle_wait = "0.1s"
poll_jitter = "0s"
[catalogue]
url = "{postgres_url}"
[staging]
dir = "{tmp_path / f"staging{n}"}"
min_free = "0"
[local_copy]
source = "{tmp_path / "source"}"
dest = "{tmp_path / "dest"}"
piece_size = "64 KiB"
max_rate = "2 MB"
"""
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "relayd", "run", "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=(tmp_path / f"daemon{n}.log").open("wb"),
            )
        )
    store = Store(postgres_url)
    try:
        deadline = time.monotonic() + 60
        logs = [tmp_path / f"daemon{n}.log" for n in range(2)]
        while time.monotonic() < deadline and not all(" serving " in log.read_text() for log in logs):
            time.sleep(0.2)  # both daemons up (and the schema created) before there is work to share
        store.add_repo(RepoSpec(name="acme/shared", every=3600, route=("local_copy",)))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with store.read() as session:
                transfers = list(session.scalars(select(Transfer)))
            if len(transfers) == 12 and all(t.state == DONE for t in transfers):
                break
            time.sleep(0.3)
        else:
            logs = "\n".join((tmp_path / f"daemon{n}.log").read_text()[-2000:] for n in range(2))
            raise AssertionError(f"the two daemons did not finish\n{logs}")
        for i in range(12):
            name = f"f{i:02d}.bin"
            assert (tmp_path / "dest" / "acme/shared" / name).read_bytes() == (source / name).read_bytes()
        logs = [(tmp_path / f"daemon{n}.log").read_text() for n in range(2)]
        assert all("done (local_copy)" in log for log in logs), "both daemons took a share of the work"
        assert "already running" not in "".join(logs)
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)
        store.close()


def test_status_reads_postgresql_through_libpq_alone_and_agrees_with_sqlalchemy(postgres_url: str) -> None:
    """relayctl's reader for PostgreSQL skips SQLAlchemy and psycopg (their imports alone cost status's
    budget) and answers every status question as the SQLAlchemy reader does."""
    from datetime import UTC, datetime

    from relayd.catalogue import queries
    from relayd.catalogue.db import make_engine
    from relayd.catalogue.queries.libpq import LibpqReader
    from relayd.catalogue.queries.reader import EngineReader

    store = Store(postgres_url)
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    seed(store, 5)
    claimed = store.claim("local_copy", "w", lease=60)
    assert claimed is not None
    store.defer(claimed.id, "w", state="blocked", error="100% refused", error_class="auth", hint="fix it")
    store.publish("daemon", {"pid": 1, "version": "t", "state": "running"})
    store.close()
    fast = queries.open_reader(postgres_url)
    assert isinstance(fast, LibpqReader)
    slow = EngineReader(make_engine(postgres_url, immediate=False))
    now = datetime.now(UTC)
    try:
        assert fast.has_table("transfers") and not fast.has_table("nothing_here")
        assert queries.summary(fast, now=now) == queries.summary(slow, now=now)
        assert queries.repo_detail(fast, "acme/shared", now=now) == queries.repo_detail(
            slow, "acme/shared", now=now
        )
        assert queries.schema_revision(fast) == queries.schema_revision(slow) is not None
        (blocked,) = queries.summary(fast, now=now).blocked
        assert blocked.error == "100% refused"
    finally:
        fast.close()
        slow.close()


def test_daemons_starting_together_on_a_new_catalogue_create_it_once(
    postgres_url: str, tmp_path: Path
) -> None:
    """Two sites' daemons (and relayctl) may all start at once on a new PostgreSQL catalogue: the schema
    is made once, under an advisory lock, and every process comes up without an error."""
    go = tmp_path / "go"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from relayd.catalogue import migrate\n"
        "from relayd.catalogue.db import make_engine\n"
        "engine = make_engine(sys.argv[1])\n"
        "engine.connect().close()\n"
        "Path(sys.argv[3]).touch()\n"
        "while not Path(sys.argv[2]).exists():\n"
        "    time.sleep(0.005)\n"
        "migrate.ensure_schema(engine, auto_upgrade=False)\n"
        "print(migrate.current_revision(engine))\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, postgres_url, str(go), str(tmp_path / f"ready-{n}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # all at once: every process has imported and connected
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, [err for _, err in outputs]
    assert {out.strip() for out, _ in outputs} == {migrate.head_revision()}
    store = Store(postgres_url)
    try:
        with store.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
            versions = connection.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        assert versions == [(migrate.head_revision(),)]
    finally:
        store.close()


def _socket_options(fd: int) -> tuple[int, int, int]:
    """Return SO_KEEPALIVE, TCP_KEEPIDLE and TCP_USER_TIMEOUT of the socket *fd* (not closed here)."""
    import socket

    probe = socket.socket(fileno=os.dup(fd))
    try:
        return (
            probe.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        )
    finally:
        probe.close()


def test_catalogue_connections_find_a_silent_link_dead_within_a_minute(postgres_url: str) -> None:
    """The daemon's connections and relayctl's keep TCP keepalives at 30 s and a 60 s timeout on
    unacknowledged data (a link across a border may drop packets without a word); the URL may say more."""
    import ctypes

    from relayd.catalogue import queries
    from relayd.catalogue.queries.libpq import LibpqReader

    for url, idle in ((postgres_url, 30), (f"{postgres_url}?keepalives_idle=45", 45)):
        store = Store(url)
        try:
            with store.engine.connect() as connection:
                raw = connection.connection.driver_connection
                assert _socket_options(raw.pgconn.socket) == (1, idle, 60000)
        finally:
            store.close()
        reader = queries.open_reader(url)
        assert isinstance(reader, LibpqReader)
        try:
            reader._lib.PQsocket.argtypes, reader._lib.PQsocket.restype = [ctypes.c_void_p], ctypes.c_int
            assert _socket_options(reader._lib.PQsocket(reader._connection)) == (1, idle, 60000)
        finally:
            reader.close()
