"""The sweep of abandoned partial downloads (relayd.partials) with a real Store and real files: a partial
whose transfer is done, gone or held by another daemon is removed and the staging budget drops by its
bytes; one this daemon may still resume stays. The takeover by another daemon runs on PostgreSQL too."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from relayd.catalogue.schema import BLOCKED, WAITING, File, Transfer
from relayd.catalogue.store import FileSpec, RepoSpec, Store, new_owner_id
from relayd.config import RetryConfig, StagingConfig
from relayd.engine import Engine, EngineSettings
from relayd.errors import ErrorClass
from relayd.hops.base import HopContext
from relayd.partials import PartialSweep
from relayd.staging import Staging, partial_name

MINE = new_owner_id()
SIZE = 256 * 1024


@pytest.fixture
def store(either_store: Store) -> Store:
    return either_store


@pytest.fixture
def staging(tmp_path: Path) -> Staging:
    return Staging(StagingConfig(dir=tmp_path / "staging", max_bytes=10**12, min_free=0))


def add_downloads(store: Store, name: str, count: int) -> list[int]:
    """Add a repo of *count* files routed to download; return its transfer ids by path."""
    repo, _ = store.add_repo(RepoSpec(name=name, every=3600, route=("download",)))
    files = [
        FileSpec(f"f{i}.bin", SIZE, True, hashlib.sha256(f"{name}{i}".encode()).hexdigest())
        for i in range(count)
    ]
    store.record_snapshot(repo.id, "c" * 40, files)
    with store.read() as session:
        rows = session.execute(
            select(Transfer.id)
            .join(File, File.id == Transfer.file_id)
            .where(File.repo_id == repo.id)
            .order_by(File.path)
        )
        return list(rows.scalars())


def take(store: Store, transfer_id: int, owner: str, lease: float = 60) -> None:
    """Claim this one transfer for *owner*, as its daemon would."""
    with store.read() as session:
        others = list(session.scalars(select(Transfer.id).where(Transfer.id != transfer_id)))
    claimed = store.claim("download", owner, lease=lease, exclude=others)
    assert claimed is not None and claimed.id == transfer_id


def write_partial(staging: Staging, transfer_id: int) -> Path:
    path = staging.partial_path(partial_name(transfer_id))
    path.write_bytes(os.urandom(SIZE))
    return path


def dead_owner_here() -> str:
    """Return a lease owner id of a daemon process of this machine that has exited."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    return f"{socket.gethostname()}:{int(child.stdout)}:deadbeef"


def test_only_abandoned_partials_are_removed_and_the_budget_drops(
    store: Store, staging: Staging, caplog: pytest.LogCaptureFixture
) -> None:
    ids = add_downloads(store, "acme/model", 10)
    done, pending, waiting, blocked, mine, elsewhere, expired, killed, busy, sibling = ids
    take(store, done, "other-site:1:aa")
    store.complete(done, "other-site:1:aa", {})
    for transfer_id in (pending, waiting, blocked, mine):
        take(store, transfer_id, MINE)
    store.release(pending, MINE)
    store.defer(waiting, MINE, state=WAITING, error="slow", error_class=ErrorClass.NETWORK)
    store.defer(blocked, MINE, state=BLOCKED, error="full", error_class=ErrorClass.DISK, hint="free space")
    take(store, elsewhere, "other-site:2:bb")
    take(store, expired, "other-site:3:cc", lease=0.5)
    take(store, killed, dead_owner_here())
    take(store, sibling, new_owner_id())  # another daemon of this machine, maybe sharing this staging
    take(store, busy, "other-site:4:dd")  # held elsewhere, yet still running here
    removed_repo = add_downloads(store, "acme/removed", 1)[0]
    assert store.remove_repo("acme/removed")
    time.sleep(0.6)  # the short lease runs out
    paths = {transfer_id: write_partial(staging, transfer_id) for transfer_id in [*ids, removed_repo]}
    never_made = write_partial(staging, 10**9)
    foreign = staging.partial / "filler"
    foreign.write_bytes(b"x" * 10_000)
    before = staging.used_bytes()

    caplog.set_level(logging.DEBUG, logger="relayd.partials")
    sweep = PartialSweep(staging, store, MINE)
    freed = sweep.sweep(busy={busy})

    removed = {transfer_id for transfer_id, path in paths.items() if not path.exists()}
    assert removed == {done, elsewhere, removed_repo}
    assert not never_made.exists() and foreign.exists()
    assert freed >= 4 * SIZE and before - staging.used_bytes() == freed
    lines = [record.getMessage() for record in caplog.records if record.levelno == logging.INFO]
    assert any(f"transfer {done}: removed" in line and "its transfer is done" in line for line in lines)
    assert any(f"transfer {removed_repo}: removed" in line and "no longer exists" in line for line in lines)
    assert any(f"transfer {elsewhere}: removed" in line and "other-site:2:bb holds" in line for line in lines)
    assert all("bytes) freed" in line for line in lines) and len(lines) == 4

    assert sweep.sweep() >= SIZE and not paths[busy].exists(), "no longer running here: removed"
    assert all(
        paths[transfer_id].exists()
        for transfer_id in (pending, waiting, blocked, mine, expired, killed, sibling)
    )
    assert sum(1 for record in caplog.records if "filler" in record.getMessage()) == 1, "logged once"


def test_the_losing_daemons_partial_goes_once_another_took_its_transfer_over(
    store: Store, staging: Staging
) -> None:
    """Owner A downloads, its lease runs out (its link dropped), owner B takes the transfer over: A's
    partial is removed at its next sweep while B holds it; when B finishes, too."""
    held, finished = add_downloads(store, "acme/model", 2)
    a, b = new_owner_id(), "other-site:7:ee"  # B: the daemon of the other site
    take(store, held, a, lease=0.5)
    take(store, finished, a, lease=0.5)
    partials = {transfer_id: write_partial(staging, transfer_id) for transfer_id in (held, finished)}
    sweep = PartialSweep(staging, store, a)
    assert sweep.sweep() == 0 and all(path.exists() for path in partials.values()), "A's own: kept"
    time.sleep(0.6)
    assert sweep.sweep() == 0, "lease run out, nobody else holds it: A may resume it"
    take(store, held, b)
    take(store, finished, b)
    store.complete(finished, b, {})
    before = staging.used_bytes()
    freed = sweep.sweep()
    assert not any(path.exists() for path in partials.values())
    assert freed >= 2 * SIZE and before - staging.used_bytes() == freed


def test_a_failure_to_remove_is_a_warning_and_the_sweep_goes_on(
    store: Store, staging: Staging, caplog: pytest.LogCaptureFixture
) -> None:
    stuck, free = add_downloads(store, "acme/model", 2)
    for transfer_id in (stuck, free):
        take(store, transfer_id, "other-site:1:aa")
        store.complete(transfer_id, "other-site:1:aa", {})
    directory = staging.partial / partial_name(stuck)
    directory.mkdir()  # unlink refuses a directory
    path = write_partial(staging, free)
    assert PartialSweep(staging, store, MINE).sweep() > 0
    assert directory.exists() and not path.exists()
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(
        f"transfer {stuck}: could not remove" in line and "delete the file by hand" in line
        for line in warnings
    )


def test_the_engine_sweeps_at_its_first_claim_round_then_after_a_loss_or_its_interval(
    store: Store, staging: Staging, tmp_path: Path
) -> None:
    """`relayd run --once` and the daemon's dispatcher both claim through the same round: the first
    one sweeps (at start, after reset_orphaned); a later one only once a transfer was lost or
    SWEEP_INTERVAL has passed."""
    first, second = add_downloads(store, "acme/model", 2)
    for transfer_id in (first, second):
        take(store, transfer_id, "other-site:1:aa")
        store.complete(transfer_id, "other-site:1:aa", {})
    early = write_partial(staging, first)
    ctx = HopContext(store, staging, tmp_path / "state", threading.Event(), MINE)
    settings = EngineSettings(
        workers=1,
        lease=30,
        idle_wait=0.05,
        retry=RetryConfig(initial=5.0, maximum=60.0, multiplier=2.0),
        limits={},
    )
    engine = Engine(store, staging, {}, ctx, settings)
    engine.run_until_idle(timeout=10)
    assert not early.exists()
    late = write_partial(staging, second)
    engine.run_until_idle(timeout=10)
    assert late.exists(), "not due yet"
    engine._sweep_due = True  # as after a transfer lost to another worker
    engine.run_until_idle(timeout=10)
    assert not late.exists()
    engine.drain(1)
