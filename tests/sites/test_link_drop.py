"""The link between a site and the shared catalogue drops, as docs/sites.md ("When the link between the
sites drops") says it may: two real daemons serve the download hop on one throwaway PostgreSQL, one of
them through a TCP relay that the test cuts (or stalls) while that daemon downloads, and heals later."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, make_url, select, text

from relayd.catalogue import migrate
from relayd.catalogue.queries import open_reader
from relayd.catalogue.queries.reader import as_utc
from relayd.catalogue.queries.workers import STALE_AFTER, WorkerView, workers
from relayd.catalogue.schema import DONE, RUNNING, Blob, Piece, Snapshot, Transfer, Worker
from relayd.catalogue.store import RepoSpec, Store, utcnow
from relayd.daemon import HEARTBEAT_INTERVAL
from relayd.staging import partial_name
from relayd_sandbox.hub import FakeHub, Generated
from relayd_sandbox.tcprelay import CuttableRelay
from tests.support.hubrelay import TOKEN, sha256_of

KiB = 1024
SIZE = 4096 * KiB
#: One connection at this rate moves the file in about 20 s: the cut (after about 2 s) and the heal (12 s
#: later: a heartbeat missed, and the lease, the shortest relayd accepts, run out) both land while it moves.
CAP = 200 * KiB
LEASE = 5.0
OUTAGE = HEARTBEAT_INTERVAL + 2
CUT, NEAR = "abroad-cut", "abroad-near"
WEIGHTS = "model.safetensors"


class Site:
    """One daemon serving the download hop, on the catalogue at *url*."""

    def __init__(self, root: Path, name: str, url: str, hub: FakeHub) -> None:
        self.name = name
        self.home = root / name
        self.home.mkdir(parents=True)
        self.config = self.home / "relayd.toml"
        self.log_path = self.home / "relayd.log"
        self.staging = self.home / "staging"
        self.config.write_text(
            f"""
[daemon]
site = "{name}"
hops = ["download"]
state_dir = "{self.home / "state"}"
lease = "{LEASE}s"
shutdown_grace = "2s"
poll_jitter = "0s"
idle_wait = "0.2s"
watch_config = false
[catalogue]
url = "{url}"
[retry]
initial = "0.2s"
maximum = "1s"
[staging]
dir = "{self.staging}"
max_bytes = "1 GB"
min_free = "0"
[hub]
endpoint = "{hub.endpoint}"
token = "{TOKEN}"
connections = 1
piece_size = "256 KiB"
"""
        )
        self.config.chmod(0o600)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        relayd = Path(sys.executable).with_name("relayd")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([relayd, "run", "-c", str(self.config)], stdout=log, stderr=log)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def sites(
    tmp_path: Path, postgres_url: str, fake_hub: FakeHub
) -> Iterator[tuple[Site, Site, CuttableRelay, Store]]:
    address = make_url(postgres_url)
    assert address.host is not None and address.port is not None
    relay = CuttableRelay(address.host, address.port).start()
    relayed = address.set(port=relay.port).render_as_string(hide_password=False)
    store = Store(postgres_url)
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    fake_hub.add_token(TOKEN, user="alice")
    fake_hub.create_repo("alice/one", files={WEIGHTS: Generated(SIZE, seed=17)})
    fake_hub.bandwidth_cap = CAP
    cut, near = Site(tmp_path, CUT, relayed, fake_hub), Site(tmp_path, NEAR, postgres_url, fake_hub)
    yield cut, near, relay, store
    for site in (cut, near):
        site.stop()
    relay.stop()
    store.close()


def wait_for(
    condition: Callable[[], object], what: str, sites: tuple[Site, ...], timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    logs = "\n".join(f"--- {site.name}:\n{site.log()[-3000:]}" for site in sites)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def find_download(store: Store) -> Transfer | None:
    """Return the file's download (None before the first poll)."""
    with store.read() as session:
        return session.scalars(select(Transfer).where(Transfer.file_id.is_not(None))).one_or_none()


def assert_partial_swept(site: Site, transfer_id: int, sites: tuple[Site, ...]) -> None:
    """The losing *site*'s partial download of the transfer it lost is removed by a sweep once that
    transfer is done (both sites run on this machine: while the other held it, it might have been a
    daemon sharing this staging directory), so it no longer counts against its staging budget."""
    partial = site.staging / "partial" / partial_name(transfer_id)
    wait_for(
        lambda: not partial.exists(), "the losing site's partial download to be swept", sites, timeout=25
    )
    assert f"transfer {transfer_id}: removed its partial download {partial.name}" in site.log()


def the_transfer(store: Store) -> Transfer:
    found = find_download(store)
    assert found is not None
    return found


def moved(store: Store) -> int:
    found = find_download(store)
    return 0 if found is None else found.bytes_done


def pieces_sent(store: Store) -> dict[int, int]:
    """Return how many times each piece of the download has been sent, by piece."""
    with store.read() as session:
        pieces = session.scalars(select(Piece).where(Piece.transfer_id == the_transfer(store).id)).all()
        return {piece.idx: piece.sends for piece in pieces}


def worker_of(store: Store, site: str) -> Worker:
    with store.read() as session:
        (worker,) = session.scalars(select(Worker).where(Worker.site == site))
        return worker


def last_seen(store: Store, site: str) -> datetime:
    seen = as_utc(worker_of(store, site).last_seen)
    assert seen is not None
    return seen


def judged(url: str, silent: Worker) -> dict[str, WorkerView]:
    """Return the daemons by site as `relayctl workers` judges them STALE_AFTER (and a second) after the
    last heartbeat of *silent*: the moment it turns dead unless it beats again."""
    when = as_utc(silent.last_seen)
    assert when is not None
    reader = open_reader(url)
    try:
        return {view.site: view for view in workers(reader, when + timedelta(seconds=STALE_AFTER + 1))}
    finally:
        reader.close()


def start_both(cut: Site, near: Site, store: Store) -> str:
    """Start the cut site, add the repo, and once the cut site downloads, the near one; return the cut
    site's lease owner id."""
    cut.start()
    store.add_repo(RepoSpec(name="alice/one", every=3600, route=("download",), include=(WEIGHTS,)))
    wait_for(lambda: moved(store) > 0, "the cut site to record a piece", (cut, near))
    owner = the_transfer(store).lease_owner
    assert owner is not None
    near.start()
    wait_for(lambda: near.log().count("serving"), "the near site to serve", (cut, near))
    assert the_transfer(store).lease_owner == owner, "the near site took a transfer that was leased"
    return owner


def stall_between_transactions(relay: CuttableRelay, store: Store) -> None:
    """Stall the relay at a moment none of its connections is inside a transaction: one stalled inside
    holds its rows locked on the server until PostgreSQL drops the session (docs/sites.md)."""
    for _ in range(50):
        relay.stall()
        time.sleep(0.3)
        ports = list(relay.upstream_ports())
        with store.read() as session:
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(:ports) AND state <> 'idle'"
            )
            busy = session.execute(text(query), {"ports": ports}).scalar_one()
        if not busy:
            return
        relay.heal()
        time.sleep(0.2)
    raise AssertionError("the stalled site was inside a transaction at every try")


def test_a_site_that_loses_the_catalogue_keeps_trying_and_its_transfer_is_taken_over(
    sites: tuple[Site, Site, CuttableRelay, Store], postgres_url: str, fake_hub: FakeHub
) -> None:
    cut, near, relay, store = sites
    both = (cut, near)
    owner = start_both(cut, near, store)

    relay.cut()
    cut_at = time.monotonic()
    time.sleep(0.5)  # what reached the server before the cut is committed
    sent = pieces_sent(store)  # the cut site can record no more
    held_until = the_transfer(store).lease_expires_at  # its last renewal went through before the cut
    assert held_until is not None
    wait_for(
        lambda: the_transfer(store).lease_owner not in (None, owner),
        "the near site to take the transfer over",
        both,
        timeout=LEASE * 2 + 5,
    )
    taken = the_transfer(store).lease_expires_at
    assert taken is not None and taken - timedelta(seconds=LEASE) >= held_until, (
        "taken before the lease ran out"
    )
    assert f"the lease of {owner} expired; taking it over" in near.log()
    remaining = OUTAGE - (time.monotonic() - cut_at)
    time.sleep(max(0.0, remaining))
    assert cut.alive(), f"the cut site exited:\n{cut.log()[-3000:]}"
    # Its heartbeat stopped at the cut while the other's went on: `relayctl workers` shows it dead once
    # it has been silent for STALE_AFTER, and the other running.
    silent, beating = worker_of(store, CUT), worker_of(store, NEAR)
    assert beating.last_seen - silent.last_seen > timedelta(seconds=1)
    found = judged(postgres_url, silent)
    assert found[CUT].state == "dead" and found[NEAR].state == "running"
    assert the_transfer(store).state == RUNNING, "the transfer was finished while the cut site was away"

    relay.heal()
    healed_at = utcnow()
    wait_for(lambda: the_transfer(store).state == DONE, "the transfer to end", both, timeout=40)
    wait_for(
        lambda: last_seen(store, CUT) > healed_at,
        "the cut site's heartbeat to come back",
        both,
        timeout=HEARTBEAT_INTERVAL + 5,
    )
    assert cut.alive() and near.alive()

    transfer = the_transfer(store)
    assert transfer.lease_owner is None and transfer.bytes_done == SIZE == transfer.bytes_total
    sha256 = fake_hub.file("alice/one", WEIGHTS).sha256
    with store.read() as session:
        pieces = session.scalars(select(Piece).where(Piece.transfer_id == transfer.id)).all()
        blob = session.scalars(select(Blob)).one()
        snapshot = session.scalars(select(Snapshot)).one()
        transfers = session.scalar(select(func.count()).select_from(Transfer))
    assert all(piece.done for piece in pieces) and sum(piece.length for piece in pieces) == SIZE
    # Nothing recorded twice: one transfer, done once; each piece sent once more (by the
    # near site) than before the cut, none by the cut site after it.
    assert transfers == 1 and snapshot.state == "done"
    assert {piece.idx: piece.sends for piece in pieces} == {idx: sends + 1 for idx, sends in sent.items()}
    # Done once, and verified where the catalogue says the copy is.
    assert blob.sha256 == sha256 and blob.staged_on is not None and blob.staged_on.startswith(f"{NEAR}:")
    assert blob.staged_path is not None and sha256_of(near.staging / blob.staged_path) == sha256
    assert near.log().count("done (download)") == 1 and "done (download)" not in cut.log()
    # The cut site logged each failure and kept trying; its transfer waited for its lease to run out.
    log = cut.log()
    assert "claiming transfers failed; trying again shortly: the catalogue did not answer: connection" in log
    assert "periodic task failed; trying again later: the catalogue did not answer: " in log
    assert log.count("Traceback") < 5, "a failure retried every second is one line, not a traceback"
    assert "transfer 1: parking it failed too; it is parked once the catalogue answers" in log
    assert "transfer 1: another worker took it over while the catalogue was away" in log
    assert_partial_swept(cut, transfer.id, both)


def test_a_site_whose_link_stalls_finds_its_lease_lost_and_records_nothing_more(
    sites: tuple[Site, Site, CuttableRelay, Store], fake_hub: FakeHub
) -> None:
    """The link stalls instead (every byte held, no connection closed): the stalled site's round trips
    hang, its lease runs out and the near site takes the transfer over; when the link is back, the
    stalled site's renewal and its next record find the lease lost, and it stops that transfer."""
    cut, near, relay, store = sites
    both = (cut, near)
    owner = start_both(cut, near, store)

    stall_between_transactions(relay, store)
    sent = pieces_sent(store)
    wait_for(
        lambda: the_transfer(store).lease_owner not in (None, owner),
        "the near site to take the transfer over",
        both,
        timeout=LEASE * 2 + 5,
    )
    time.sleep(1)
    relay.heal()
    wait_for(
        lambda: "lease lost to another worker" in cut.log(), "the stalled site to find its lease lost", both
    )
    wait_for(
        lambda: "is now held by" in cut.log() and "the other worker's result stands" in cut.log(),
        "the stalled site to stop the transfer",
        both,
    )
    wait_for(lambda: the_transfer(store).state == DONE, "the transfer to end", both, timeout=40)
    assert cut.alive() and near.alive()

    transfer = the_transfer(store)
    sha256 = fake_hub.file("alice/one", WEIGHTS).sha256
    with store.read() as session:
        pieces = session.scalars(select(Piece).where(Piece.transfer_id == transfer.id)).all()
        blob = session.scalars(select(Blob)).one()
    # Nothing recorded twice: the stalled site's held records were refused, so each piece was sent once
    # more than before the stall, by the near site.
    assert {piece.idx: piece.sends for piece in pieces} == {idx: sends + 1 for idx, sends in sent.items()}
    assert transfer.bytes_done == SIZE and all(piece.done for piece in pieces)
    assert blob.staged_on is not None and blob.staged_on.startswith(f"{NEAR}:")
    assert blob.staged_path is not None and sha256_of(near.staging / blob.staged_path) == sha256
    log = cut.log()
    assert f"transfer {transfer.id}: stopped, transfer {transfer.id} is now held by" in log
    assert "verified" not in log and "done (download)" not in log, "the stalled site finished its copy"
    assert near.log().count("done (download)") == 1 and "lease lost" not in near.log()
    assert_partial_swept(cut, transfer.id, both)


def test_a_short_outage_parks_the_transfer_as_soon_as_the_catalogue_answers(
    sites: tuple[Site, Site, CuttableRelay, Store], fake_hub: FakeHub
) -> None:
    """An outage shorter than the lease: the transfer its hop could not record is parked once the link
    is back and runs again at once, rather than waiting for its lease to run out."""
    cut, _near, relay, store = sites
    cut.start()
    store.add_repo(RepoSpec(name="alice/one", every=3600, route=("download",), include=(WEIGHTS,)))
    wait_for(lambda: moved(store) > 0, "the cut site to record a piece", (cut,))
    relay.cut()
    time.sleep(2)  # the hop records a piece or its progress every second: one of them fails
    relay.heal()
    wait_for(
        lambda: "parked now that the catalogue answers again" in cut.log(), "the transfer parked", (cut,)
    )
    wait_for(lambda: the_transfer(store).state == DONE, "the transfer to end", (cut,), timeout=40)
    transfer = the_transfer(store)
    assert transfer.attempts == 2 and transfer.bytes_done == SIZE
    log = cut.log()
    assert "expired; taking it over" not in log, "it waited for its own lease to run out"
    assert log.count("done (download)") == 1 and cut.alive()
    with store.read() as session:
        blob = session.scalars(select(Blob)).one()
    assert blob.staged_path is not None
    assert sha256_of(cut.staging / blob.staged_path) == fake_hub.file("alice/one", WEIGHTS).sha256
