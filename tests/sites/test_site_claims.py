"""Sites in the catalogue: a staged copy is read only where it was staged, each daemon publishes its own
heartbeat, `relayctl workers` lists them (dead ones dead), and status names a hop no daemon serves."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from relayd.catalogue import migrate
from relayd.catalogue.queries import open_reader
from relayd.catalogue.queries.workers import WorkerView, unserved_hops, workers
from relayd.catalogue.schema import Worker
from relayd.catalogue.store import FileSpec, HopRules, RepoSpec, Store, WorkerBeat, utcnow
from relayd.cli import cli

ROUTE = ("dl", "up", "vm", "push")
RULES = HopRules(
    writes_staging=frozenset({"dl"}),
    reads_staging=frozenset({"up", "push"}),
    staging_unneeded_after={"push": frozenset({"vm"})},
)
ABROAD_1, ABROAD_2 = "abroad:host-1:/srv/staging", "abroad:host-2:/srv/staging"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'catalogue.db'}"


@pytest.fixture
def stores(url: str) -> Iterator[dict[str, Store]]:
    """Three daemons' stores on one catalogue: two download machines abroad, and the VM."""
    made = {}
    for holder in (ABROAD_1, ABROAD_2, "vm:vm-host:/mnt/staging"):
        store = Store(url, rules=RULES)
        store.staging_holder = holder
        made[holder] = store
    migrate.ensure_schema(made[ABROAD_1].engine, auto_upgrade=False)
    yield made
    for store in made.values():
        store.close()


def seed(store: Store, names: list[str]) -> None:
    repo, _ = store.add_repo(RepoSpec(name="acme/model", every=3600, route=ROUTE))
    specs = [FileSpec(name, 10, True, hashlib.sha256(name.encode()).hexdigest()) for name in names]
    store.record_snapshot(repo.id, "c" * 40, specs)


def test_a_staged_copy_is_read_only_where_it_was_staged(stores: dict[str, Store]) -> None:
    one, two, vm = stores[ABROAD_1], stores[ABROAD_2], stores["vm:vm-host:/mnt/staging"]
    seed(one, ["a.bin", "b.bin"])
    first = one.claim("dl", "d1", lease=60)
    second = two.claim("dl", "d2", lease=60)
    assert first is not None and second is not None and first.id != second.id
    one.complete(first.id, "d1", {}, staged_path="blobs/a")
    two.complete(second.id, "d2", {}, staged_path="blobs/b")
    # Each machine uploads the copy it staged, and only that one.
    mine = one.claim("up", "d1", lease=60)
    assert mine is not None and mine.staged_on == ABROAD_1
    assert one.claim("up", "d1", lease=60, exclude=[mine.id]) is None
    assert vm.claim("up", "v", lease=60) is None, "the VM holds no staged copy"
    theirs = two.claim("up", "d2", lease=60)
    assert theirs is not None and theirs.staged_on == ABROAD_2
    assert set(one.runnable_hops()) == set(), "nothing runnable here: the vm hop waits for uploads"
    # A hop that reads the drive, not staging, runs anywhere; so does push after vm (it reads the VM).
    one.complete(mine.id, "d1", {"file_id": "f1"})
    pulled = vm.claim("vm", "v", lease=60)
    assert pulled is not None and pulled.staged_on is None
    vm.complete(pulled.id, "v", {"path": "/vm/a"})
    pushed = vm.claim("push", "v", lease=60)
    assert pushed is not None and pushed.staged_on is None


def test_without_a_holder_every_staged_copy_is_claimable(url: str) -> None:
    """A catalogue's single daemon (SQLite) sets no holder: nothing it staged is ever out of reach, even
    after the machine or the staging directory was renamed."""
    store = Store(url, rules=RULES)
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    seed(store, ["a.bin"])
    store.staging_holder = "default:old-name:/old/staging"
    download = store.claim("dl", "d", lease=60)
    assert download is not None
    store.complete(download.id, "d", {}, staged_path="blobs/a")
    store.staging_holder = None
    upload = store.claim("up", "d", lease=60)
    assert upload is not None and upload.staged_on == "default:old-name:/old/staging"
    store.close()


def beat(store: Store, worker_id: str, site: str, hops: tuple[str, ...] | None, **extra: object) -> None:
    fields: dict[str, object] = {"host": "elsewhere", "pid": 1234, "version": "9.9", "started_at": utcnow()}
    fields.update(extra)
    store.beat(WorkerBeat(worker_id, site, hops=hops, **fields))  # type: ignore[arg-type]


def test_each_daemon_has_its_own_heartbeat_and_dead_ones_are_dead(stores: dict[str, Store], url: str) -> None:
    store = stores[ABROAD_1]
    beat(store, "abroad-1", "abroad", ("dl", "up"))
    beat(store, "vm-1", "vm", ("vm", "push"))
    beat(store, "vm-1", "vm", ("vm", "push"))  # a second beat updates the same row
    beat(store, "old", "vm", None, state="stopped")
    # This host, a process that is gone: killed, so dead at once.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True
    )
    beat(store, "killed", "vm", ("vm",), host=socket.gethostname(), pid=int(gone.stdout))
    with store._write() as session:  # a daemon silent for two minutes
        session.execute(
            update(Worker).where(Worker.id == "abroad-1").values(last_seen=utcnow() - timedelta(minutes=2))
        )
    reader = open_reader(url)
    found = {worker.id: worker for worker in workers(reader, datetime.now(UTC))}
    reader.close()
    assert {key: worker.state for key, worker in found.items()} == {
        "abroad-1": "dead",
        "vm-1": "running",
        "old": "stopped",
        "killed": "dead",
    }
    assert found["vm-1"].hops == ("vm", "push") and found["old"].hops is None
    assert found["vm-1"].site == "vm" and found["vm-1"].version == "9.9" and found["vm-1"].pid == 1234


def test_a_dead_daemons_leases_are_listed_and_come_back(stores: dict[str, Store], url: str) -> None:
    one, two = stores[ABROAD_1], stores[ABROAD_2]
    seed(one, ["a.bin"])
    beat(one, "abroad-1", "abroad", ("dl", "up"))
    held = one.claim("dl", "abroad-1", lease=3.0)  # outlives the checks below under load
    assert held is not None
    reader = open_reader(url)
    (listed,) = workers(reader, datetime.now(UTC))
    reader.close()
    assert listed.leased == 1
    assert two.claim("dl", "abroad-2", lease=60) is None
    time.sleep(3.1)
    again = two.claim("dl", "abroad-2", lease=60)
    assert again is not None and again.id == held.id


def test_unserved_hops_are_those_no_running_daemon_serves() -> None:
    now = datetime.now(UTC)

    def worker(state: str, hops: tuple[str, ...] | None) -> WorkerView:
        return WorkerView("w", "s", "h", 1, hops, "v", state, now, now, 0.0, 0)

    wanted = {"dl", "up", "vm", "push"}
    abroad = worker("running", ("dl", "up"))
    assert [item.hop for item in unserved_hops(wanted, [abroad, worker("dead", None)])] == ["push", "vm"]
    assert unserved_hops(wanted, [abroad, worker("running", None)]) == []
    assert unserved_hops(wanted, [worker("stopped", ("dl",))]) == [], "no daemon runs: status says that"
    (item,) = unserved_hops({"vm"}, [abroad])
    assert item.hint == 'no daemon serves vm: start one with daemon.hops = ["vm"] (docs/sites.md)'


def test_relayctl_workers_lists_them_as_text_and_json(
    tmp_path: Path, make_config: Callable[..., Path]
) -> None:
    config = make_config(tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'catalogue.db'}")
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    beat(store, "abroad-1", "abroad", ("download", "pan_upload"))
    beat(store, "vm-1", "vm", None, state="stopped")
    store.close()

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, ["-c", str(config), "workers", *args], env={"COLUMNS": None})
        assert result.exit_code == 0, result.output
        return result.output

    lines = run().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("abroad     running elsewhere pid 1234  relayd 9.9  last seen ")
    assert lines[0].endswith("hops: download, pan_upload")
    assert lines[1].startswith("vm         stopped elsewhere pid 1234") and lines[1].endswith(
        "hops: every hop"
    )
    document = json.loads(run("--json"))
    first = document["workers"][0]
    assert {
        key: first[key] for key in ("id", "site", "host", "pid", "hops", "version", "state", "leased")
    } == {
        "id": "abroad-1",
        "site": "abroad",
        "host": "elsewhere",
        "pid": 1234,
        "hops": ["download", "pan_upload"],
        "version": "9.9",
        "state": "running",
        "leased": 0,
    }
    assert first["last_seen"].endswith("Z") and first["last_seen_age_seconds"] >= 0
    assert document["workers"][1]["hops"] is None


def test_no_heartbeat_says_so(tmp_path: Path, make_config: Callable[..., Path]) -> None:
    config = make_config(tmp_path)
    result = CliRunner().invoke(cli, ["-c", str(config), "workers"])
    assert result.exit_code == 0
    assert result.output == "no daemon has published a heartbeat on this catalogue\n"


def test_one_site_stopping_does_not_make_status_say_no_daemon_runs(
    stores: dict[str, Store], url: str
) -> None:
    """Both sites write the one `daemon` fact; the last to stop says stopped while the other still runs."""
    from relayd.catalogue.queries import daemon_of

    store = stores[ABROAD_1]
    beat(store, "abroad-1", "abroad", ("dl", "up"), state="stopped")
    store.publish("daemon", {"pid": 1, "version": "9.9", "state": "stopped"})
    reader = open_reader(url)
    try:
        assert daemon_of(reader, datetime.now(UTC)).state == "stopped"
        beat(store, "vm-1", "vm", ("vm", "push"), pid=4321)
        status = daemon_of(reader, datetime.now(UTC))
    finally:
        reader.close()
    assert status.state == "running" and status.pid == 4321
    assert status.detail == "running: 1 daemon(s) on site(s) vm (`relayctl workers`)"
