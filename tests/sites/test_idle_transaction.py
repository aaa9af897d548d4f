"""docs/sites.md's advice for a link that stalls inside a transaction, run on the throwaway PostgreSQL:
the row the stalled daemon locked stays locked (no other daemon can take the transfer) until the server
drops the session, which ``idle_in_transaction_session_timeout`` makes it do within seconds."""

from __future__ import annotations

import hashlib
import time

import psycopg
import pytest

from relayd.catalogue import migrate
from relayd.catalogue.store import FileSpec, RepoSpec, Store
from relayd_sandbox.postgres import ThrowawayPostgres
from relayd_sandbox.tcprelay import CuttableRelay

TIMEOUT_S = 2


def test_a_row_locked_by_a_stalled_daemon_is_freed_by_the_idle_transaction_timeout(
    postgres_server: ThrowawayPostgres, postgres_url: str
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    with postgres_server.admin() as admin:
        admin.execute(f"ALTER DATABASE {database} SET idle_in_transaction_session_timeout = '{TIMEOUT_S}s'")
    store = Store(postgres_url)
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    repo, _ = store.add_repo(RepoSpec(name="acme/stall", every=3600, route=("local_copy",)))
    store.record_snapshot(repo.id, "e" * 40, [FileSpec("f.bin", 10, True, hashlib.sha256(b"f").hexdigest())])
    relay = CuttableRelay(postgres_server.host, postgres_server.port).start()
    stalled = psycopg.connect(
        host="127.0.0.1", port=relay.port, user="postgres", dbname=database, connect_timeout=5
    )
    try:
        # The stalled daemon is inside a transaction holding the transfer's row when its link stalls.
        stalled.execute("SELECT id FROM transfers FOR UPDATE")
        relay.stall()
        assert store.claim("local_copy", "near", lease=60) is None, "the locked row is skipped"
        started = time.monotonic()
        claimed = None
        while claimed is None and time.monotonic() - started < TIMEOUT_S + 10:
            time.sleep(0.2)
            claimed = store.claim("local_copy", "near", lease=60)
        assert claimed is not None, "the server never dropped the stalled session"
        assert time.monotonic() - started < TIMEOUT_S + 5
        relay.heal()
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            stalled.execute("SELECT 1")  # the stalled daemon finds its session gone, its lock with it
    finally:
        stalled.close()
        relay.cut()
        store.close()
