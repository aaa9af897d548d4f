"""`relayctl doctor`'s daemon rows come from each daemon's own heartbeat, on SQLite and on PostgreSQL: ok
while one runs, a warning for each dead one (not for one a restart replaced on its site and host), and
one for each route hop no running daemon serves, in status's words."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from relayd.catalogue.queries import open_reader, repo_targets
from relayd.catalogue.queries.workers import Unserved
from relayd.catalogue.schema import Worker
from relayd.catalogue.store import FileSpec, RepoSpec, Store, WorkerBeat, utcnow
from relayd.cli.doctor import Row
from relayd.cli.doctor_daemons import daemon_rows, routed_hops
from relayd.health import OK, WARN

ROUTE = ("download", "pan_upload", "vm_pull", "lfs_push")


@pytest.fixture
def store(either_store: Store) -> Store:
    return either_store


def beat(
    store: Store, worker_id: str, site: str, host: str, hops: tuple[str, ...], *, silent: float = 0
) -> None:
    store.beat(WorkerBeat(worker_id, site, host, 4321, hops, "9.9", utcnow()))
    if silent:
        with store._write() as session:
            session.execute(
                update(Worker)
                .where(Worker.id == worker_id)
                .values(last_seen=utcnow() - timedelta(seconds=silent))
            )


def rows_of(url: str) -> dict[str, Row]:
    reader = open_reader(url)
    try:
        rows = daemon_rows(reader, datetime.now(UTC), routed_hops(repo_targets(reader)))
    finally:
        reader.close()
    assert len({row.name for row in rows}) == len(rows), rows
    assert {row.group for row in rows} == {"daemon"}
    return {row.name: row for row in rows}


def test_dead_daemons_and_unserved_hops_are_warned_about(store: Store, either_catalogue: str) -> None:
    repo, _ = store.add_repo(RepoSpec(name="acme/model", every=3600, route=ROUTE))
    store.add_repo(RepoSpec(name="acme/paused", every=3600, route=("local_copy",)))
    store.set_paused("acme/paused", True)
    store.record_snapshot(repo.id, "c" * 40, [FileSpec("a.bin", 10, True, hashlib.sha256(b"a").hexdigest())])
    beat(store, "abroad-now", "abroad", "abroad-1", ("download", "pan_upload"))
    beat(store, "abroad-killed", "abroad", "abroad-1", ("download", "pan_upload"), silent=120)  # restarted
    beat(store, "abroad-gone", "abroad", "abroad-2", ("download", "pan_upload"), silent=120)
    assert store.claim("download", "abroad-gone", lease=600) is not None
    beat(store, "vm-gone", "vm", "vm-host", ("vm_pull", "lfs_push"), silent=90)

    rows = rows_of(either_catalogue)
    assert set(rows) == {
        "daemon",
        "daemon abroad on abroad-2",
        "daemon vm on vm-host",
        "daemon for vm_pull",
        "daemon for lfs_push",
    }
    assert rows["daemon"].status == OK
    assert rows["daemon"].detail == "1 running (abroad on abroad-1), 0 transfer(s) leased"
    gone = rows["daemon abroad on abroad-2"]
    assert gone.status == WARN
    assert gone.detail.startswith("abroad on abroad-2 is dead (pid 4321, relayd 9.9): last heartbeat 2m")
    assert gone.detail.endswith(
        "; the 1 transfer(s) it held go to a daemon serving their hop after daemon.lease"
    )
    assert gone.hint == (
        "start relayd again on abroad-2 (site abroad); its log says why it stopped (`journalctl -u relayd`)"
    )
    assert "held" not in rows["daemon vm on vm-host"].detail
    unserved = rows["daemon for vm_pull"]
    assert unserved.status == WARN and unserved.detail == "no daemon serves vm_pull"
    assert unserved.hint == 'start one with daemon.hops = ["vm_pull"] (docs/sites.md)'
    assert f"{unserved.detail}: {unserved.hint}" == Unserved("vm_pull").hint  # status's words

    # The vm site's daemon comes back: nothing is unserved, and its dead predecessor is a restart.
    beat(store, "vm-now", "vm", "vm-host", ("vm_pull", "lfs_push"))
    rows = rows_of(either_catalogue)
    assert set(rows) == {"daemon", "daemon abroad on abroad-2"}
    assert rows["daemon"].detail == ("2 running (abroad on abroad-1, vm on vm-host), 0 transfer(s) leased")


def test_with_no_daemon_running_the_row_says_what_status_says(store: Store, either_catalogue: str) -> None:
    store.add_repo(RepoSpec(name="acme/model", every=3600, route=ROUTE))
    rows = rows_of(either_catalogue)
    assert list(rows) == ["daemon"]
    assert rows["daemon"].status == WARN
    assert rows["daemon"].detail == "no relayd has published a heartbeat on this catalogue"
    assert rows["daemon"].hint.startswith("start it")
    # Every daemon dead: one row each, and no hop called unserved (the daemon row says none runs).
    beat(store, "vm-gone", "vm", "vm-host", ("vm_pull", "lfs_push"), silent=90)
    rows = rows_of(either_catalogue)
    assert set(rows) == {"daemon", "daemon vm on vm-host"}
    assert rows["daemon"].status == WARN
