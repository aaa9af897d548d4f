"""The engine with real SQLite: claims with leases, per-hop limits, error classification, linking of
unchanged content, staging release, and the local_copy reference hop's resume and repair."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from relayd.assembly import hop_rules
from relayd.catalogue import migrate
from relayd.catalogue.schema import BLOCKED, DONE, PENDING, RUNNING, WAITING, Piece, Snapshot, Transfer
from relayd.catalogue.store import FileSpec, HopRules, RepoSpec, Store, utcnow
from relayd.config import LocalCopyConfig, RetryConfig, StagingConfig
from relayd.engine import Engine, EngineSettings, backoff_delay
from relayd.errors import IntegrityMismatch, NeedsPerson, Permanent, Retryable
from relayd.hops import loadable
from relayd.hops.base import Hop, HopContext, Job, Outcome, PieceSpec, plan_ranges
from relayd.hops.local_copy import LocalCopyHop
from relayd.staging import Staging

RETRY = RetryConfig(initial=5.0, maximum=3600.0, multiplier=2.0)


class World:
    """A catalogue, staging, and an engine factory in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = Store(f"sqlite:///{root / 'catalogue.db'}")
        migrate.ensure_schema(self.store.engine, auto_upgrade=False)
        self.staging = Staging(StagingConfig(dir=root / "staging", max_bytes=10**12, min_free=0))
        self.source = root / "source"
        self.dest = root / "dest"

    def ctx(self, owner: str = "test-owner") -> HopContext:
        return HopContext(self.store, self.staging, self.root / "state", threading.Event(), owner)

    def engine(
        self,
        hops: Callable[[HopContext], dict[str, Hop]],
        *,
        owner: str = "test-owner",
        limits: dict[str, int] | None = None,
        workers: int = 4,
        lease: float = 30.0,
    ) -> Engine:
        ctx = self.ctx(owner)
        built = hops(ctx)
        self.store.rules = hop_rules(built)
        settings = EngineSettings(
            workers=workers,
            lease=lease,
            idle_wait=0.05,
            retry=RETRY,
            limits=limits or dict.fromkeys(built, 2),
        )
        return Engine(self.store, self.staging, built, ctx, settings)

    def local_copy(
        self, piece_size: int = 64 * 1024, max_rate: int = 0
    ) -> Callable[[HopContext], dict[str, Hop]]:
        section = LocalCopyConfig(
            source=self.source, dest=self.dest, piece_size=piece_size, concurrency=2, max_rate=max_rate
        )
        return lambda ctx: {"local_copy": LocalCopyHop(section, ctx)}

    def add_files(self, repo: str, files: dict[str, bytes], route: Sequence[str] = ("local_copy",)) -> int:
        base = self.source / repo
        specs = []
        for path, data in files.items():
            target = base / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            specs.append(
                FileSpec(path=path, size=len(data), lfs=True, sha256=hashlib.sha256(data).hexdigest())
            )
        repo_row, _ = self.store.add_repo(RepoSpec(name=repo, every=3600, route=tuple(route)))
        commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        return self.store.record_snapshot(repo_row.id, commit, specs).snapshot_id

    def transfers(self) -> list[Transfer]:
        with self.store.read() as session:
            return list(session.query(Transfer).order_by(Transfer.id))

    def pieces(self) -> list[Piece]:
        with self.store.read() as session:
            return list(session.query(Piece).order_by(Piece.transfer_id, Piece.idx))


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_local_copy_relays_and_verifies_every_file(world: World) -> None:
    files = {"model.bin": os.urandom(300_000), "sub/config.json": b'{"a": 1}', "empty.txt": b""}
    snapshot_id = world.add_files("acme/tiny", files)
    world.engine(world.local_copy()).run_until_idle(timeout=30)
    for path, data in files.items():
        assert (world.dest / "acme/tiny" / path).read_bytes() == data
    assert all(t.state == DONE for t in world.transfers())
    with world.store.read() as session:
        assert session.get(Snapshot, snapshot_id).state == "done"  # type: ignore[union-attr]
    assert not list(world.dest.rglob("*.relayd-partial"))


def test_an_unchanged_file_is_linked_not_moved_again(world: World) -> None:
    world.add_files("acme/tiny", {"a.bin": b"A" * 1000, "b.bin": b"B" * 1000})
    world.engine(world.local_copy()).run_until_idle(timeout=30)
    assert len(world.transfers()) == 2
    (world.source / "acme/tiny/b.bin").unlink()
    # A new snapshot: a.bin unchanged, b.bin removed, c.bin new.
    repo = world.store.repo("acme/tiny")
    assert repo is not None
    result = world.store.record_snapshot(
        repo.id,
        "1" * 40,
        [
            FileSpec("a.bin", 1000, True, hashlib.sha256(b"A" * 1000).hexdigest()),
            FileSpec("c.bin", 5, True, hashlib.sha256(b"CCCCC").hexdigest()),
        ],
    )
    assert (result.new_files, result.linked_files, result.removed_files) == (1, 1, 1)
    assert len(world.transfers()) == 3  # only c.bin got a transfer


def test_a_corrupted_destination_is_detected_and_only_bad_pieces_are_copied_again(world: World) -> None:
    data = os.urandom(64 * 1024 * 8)
    world.add_files("acme/tiny", {"model.bin": data})
    world.engine(world.local_copy()).run_until_idle(timeout=30)
    target = world.dest / "acme/tiny/model.bin"
    # Simulate a transfer whose copy rotted before verification: un-done the transfer, corrupt a piece.
    with world.store._write() as session:
        transfer = session.query(Transfer).one()
        transfer.state = PENDING
    corrupted = bytearray(target.read_bytes())
    corrupted[3 * 64 * 1024 + 10] ^= 0xFF
    target.rename(target.with_name("model.bin.relayd-partial"))
    target.with_name("model.bin.relayd-partial").write_bytes(bytes(corrupted))
    engine = world.engine(world.local_copy())
    engine.run_until_idle(timeout=30)
    transfer = world.transfers()[0]
    assert transfer.state == WAITING and transfer.error_class == "integrity"
    with world.store._write() as session:
        session.query(Transfer).update({"next_attempt_at": None})
    engine.run_until_idle(timeout=30)
    assert target.read_bytes() == data
    sends = {p.idx: p.sends for p in world.pieces()}
    # Every piece travelled once; only the corrupted one a second time.
    assert sends == {i: (2 if i == 3 else 1) for i in range(8)}
    assert world.transfers()[0].handles == {"path": str(target)}  # verified: the mismatch streak ended


class DamagingCopy(LocalCopyHop):
    """local_copy onto a disk that damages every piece it writes (one byte inverted)."""

    def _copy_range(self, job: Job, source_fd: int, target_fd: int, piece: PieceSpec) -> None:
        super()._copy_range(job, source_fd, target_fd, piece)
        with self._partial(job).open("r+b") as partial:
            partial.seek(piece.offset)
            byte = partial.read(1)
            partial.seek(piece.offset)
            partial.write(bytes([byte[0] ^ 0xFF]))


def test_a_destination_that_keeps_damaging_copies_blocks_after_the_second_copy(world: World) -> None:
    data = os.urandom(64 * 1024 * 4)
    world.add_files("acme/tiny", {"model.bin": data})
    section = LocalCopyConfig(
        source=world.source, dest=world.dest, piece_size=64 * 1024, concurrency=2, max_rate=0
    )
    for _attempt in range(3):
        world.engine(lambda ctx: {"local_copy": DamagingCopy(section, ctx)}).run_until_idle(timeout=30)
        with world.store._write() as session:
            session.query(Transfer).update({"next_attempt_at": None})
    (transfer,) = world.transfers()
    assert transfer.state == BLOCKED and transfer.error_class == "integrity"
    error = transfer.last_error or ""
    assert error.startswith("sha256 mismatch measured at the destination after local_copy, twice in a row")
    expected, got = re.findall(r"expected ([0-9a-f]{64}), got ([0-9a-f]{64})", error)[0]
    assert expected == hashlib.sha256(data).hexdigest() and got != expected
    assert "destination disk" in (transfer.hint or "")
    assert {p.sends for p in world.pieces()} == {2}  # copied twice, never a third time
    assert transfer.bytes_moved == 2 * len(data)
    assert not (world.dest / "acme/tiny/model.bin").exists()


def test_an_expired_lease_makes_the_transfer_runnable_for_another_worker(world: World) -> None:
    world.add_files("acme/tiny", {"model.bin": os.urandom(10_000)})
    crashed = world.store.claim("local_copy", "crashed-worker", lease=0.5)
    assert crashed is not None and crashed.state == RUNNING
    assert world.store.claim("local_copy", "other", lease=30) is None  # the lease still holds
    threading.Event().wait(0.6)
    world.engine(world.local_copy(), owner="survivor").run_until_idle(timeout=30)
    transfer = world.transfers()[0]
    assert transfer.state == DONE
    assert transfer.attempts == 2


def test_a_live_lease_is_not_taken_over(world: World) -> None:
    world.add_files("acme/tiny", {"model.bin": os.urandom(10_000)})
    assert world.store.claim("local_copy", "alive", lease=60) is not None
    assert world.store.claim("local_copy", "other", lease=60) is None


def test_a_paused_repo_is_not_claimed(world: World) -> None:
    world.add_files("acme/tiny", {"model.bin": b"x" * 100})
    world.store.set_paused("acme/tiny", True)
    assert world.store.claim("local_copy", "w", lease=60) is None
    world.store.set_paused("acme/tiny", False)
    assert world.store.claim("local_copy", "w", lease=60) is not None


class ScriptedHop(Hop):
    """A hop that fails the way a test tells it to."""

    name = "scripted"

    def __init__(self, section: object, ctx: HopContext, failure: BaseException | None) -> None:
        super().__init__(section, ctx)
        self.failure = failure

    def plan(self, job: Job) -> Sequence[PieceSpec]:
        return plan_ranges(job.file_or_fail.size, 1 << 20)

    def move(self, job: Job, missing: Sequence[PieceSpec]) -> None:
        if self.failure is not None:
            raise self.failure
        for piece in missing:
            job.piece_done(piece.index)

    def verify(self, job: Job) -> Outcome:
        return Outcome(handles={"ok": True})


@pytest.mark.parametrize(
    ("failure", "state", "error_class", "hint"),
    [
        (Retryable("server said 503", error_class="server", retry_after=120), WAITING, "server", None),
        (
            NeedsPerson("token refused", hint="set a new token", error_class="auth"),
            BLOCKED,
            "auth",
            "set a new token",
        ),
        (
            Permanent("upstream file is broken"),
            BLOCKED,
            "permanent",
            "fix the cause, then run `relayctl retry`",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), BLOCKED, "disk", "free space"),
        (OSError(errno.EIO, "I/O error"), WAITING, "io", None),
        (ValueError("a bug"), WAITING, "internal", None),
    ],
)
def test_failures_are_classified(
    world: World, failure: BaseException, state: str, error_class: str, hint: str | None
) -> None:
    world.add_files("acme/tiny", {"model.bin": b"x" * 100}, route=("scripted",))
    before = utcnow()
    engine = world.engine(lambda ctx: {"scripted": ScriptedHop(None, ctx, failure)})
    engine.run_until_idle(timeout=30)
    transfer = world.transfers()[0]
    assert transfer.state == state
    assert transfer.error_class == error_class
    assert transfer.last_error
    if hint:
        assert hint in (transfer.hint or "")
    if state == WAITING:
        assert transfer.next_attempt_at is not None and transfer.next_attempt_at > before
    if isinstance(failure, Retryable):
        assert transfer.next_attempt_at is not None
        assert transfer.next_attempt_at >= before + timedelta(seconds=119)


def test_retry_makes_blocked_transfers_runnable(world: World) -> None:
    world.add_files("acme/tiny", {"model.bin": b"x" * 100}, route=("scripted",))
    world.engine(
        lambda ctx: {"scripted": ScriptedHop(None, ctx, NeedsPerson("no", hint="h"))}
    ).run_until_idle(timeout=30)
    assert world.transfers()[0].state == BLOCKED
    assert world.store.retry("acme/tiny") == 1
    world.engine(lambda ctx: {"scripted": ScriptedHop(None, ctx, None)}).run_until_idle(timeout=30)
    assert world.transfers()[0].state == DONE


def test_backoff_grows_exponentially_is_capped_and_honours_retry_after() -> None:
    delays = [backoff_delay(n, RETRY) for n in range(1, 12)]
    assert 2.5 <= delays[0] <= 5
    assert 20 <= delays[3] <= 40
    assert all(d <= 3600 for d in delays)
    assert backoff_delay(1, RETRY, retry_after=600) >= 600


def test_per_hop_limits_are_respected(world: World) -> None:
    started = threading.Semaphore(0)
    release = threading.Event()
    peak = {"now": 0, "max": 0}
    lock = threading.Lock()

    class SlowHop(ScriptedHop):
        def move(self, job: Job, missing: Sequence[PieceSpec]) -> None:
            with lock:
                peak["now"] += 1
                peak["max"] = max(peak["max"], peak["now"])
            started.release()
            release.wait(10)
            with lock:
                peak["now"] -= 1
            super().move(job, missing)

    world.add_files("acme/tiny", {f"f{i}.bin": b"x" for i in range(6)}, route=("scripted",))
    engine = world.engine(
        lambda ctx: {"scripted": SlowHop(None, ctx, None)}, limits={"scripted": 2}, workers=8
    )
    runner = threading.Thread(target=engine.run_until_idle, kwargs={"timeout": 30})
    runner.start()
    assert started.acquire(timeout=10) and started.acquire(timeout=10)
    assert not started.acquire(timeout=0.3)
    release.set()
    runner.join(30)
    assert peak["max"] == 2
    assert all(t.state == DONE for t in world.transfers())


def test_large_files_go_one_at_a_time_with_small_ones_beside(world: World) -> None:
    """A hop whose large files each fill its capacity (the download hop) runs one of them at a time and
    small files beside it, up to its concurrency."""
    lock = threading.Lock()
    running: dict[str, int] = {}
    seen: list[tuple[int, int]] = []  # (large, small) running, at each start

    class SizedHop(ScriptedHop):
        @property
        def large_files(self) -> tuple[int, int]:
            return 1000, 1

        def move(self, job: Job, missing: Sequence[PieceSpec]) -> None:
            kind = "large" if job.file_or_fail.size >= 1000 else "small"
            with lock:
                running[kind] = running.get(kind, 0) + 1
                seen.append((running.get("large", 0), running.get("small", 0)))
            threading.Event().wait(0.3)
            with lock:
                running[kind] -= 1
            super().move(job, missing)

    files = {f"large{i}.bin": b"L" * 2000 for i in range(3)}
    files.update({f"small{i}.json": b"s" * 10 for i in range(3)})
    world.add_files("acme/sized", files, route=("scripted",))
    engine = world.engine(lambda ctx: {"scripted": SizedHop(None, ctx, None)}, limits={"scripted": 4})
    engine.run_until_idle(timeout=30)
    assert all(t.state == DONE for t in world.transfers())
    assert max(large for large, _ in seen) == 1, seen
    assert any(large == 1 and small >= 1 for large, small in seen), "small files should run beside"


class StagingHop(ScriptedHop):
    """A first hop that puts the content into staging, like the download hop does."""

    name = "download"
    writes_staging = True

    def verify(self, job: Job) -> Outcome:
        file = job.file_or_fail
        data = (self.ctx.staging.root.parent / "source" / job.repo.name / file.path).read_bytes()
        partial = self.ctx.staging.partial_path(f"t{job.id}")
        partial.write_bytes(data)
        target = self.ctx.staging.promote(partial, hashlib.sha256(data).hexdigest())
        return Outcome(handles={}, staged_path=self.ctx.staging.relative(target))


class ReaderHop(ScriptedHop):
    name = "reader"
    reads_staging = True


def test_a_staged_copy_is_released_once_every_reader_is_done(world: World) -> None:
    world.add_files("acme/tiny", {"model.bin": b"payload" * 100}, route=("download", "reader"))
    held = threading.Event()

    class BlockingReader(ReaderHop):
        def move(self, job: Job, missing: Sequence[PieceSpec]) -> None:
            if not held.is_set():
                held.set()
                raise Retryable("not yet")
            super().move(job, missing)

    engine = world.engine(
        lambda ctx: {"download": StagingHop(None, ctx, None), "reader": BlockingReader(None, ctx, None)}
    )
    engine.run_until_idle(timeout=30)
    staged = list((world.staging.blobs).rglob("*"))
    assert any(p.is_file() for p in staged), "kept while the reader is not done"
    world.store.retry("acme/tiny")
    engine.run_until_idle(timeout=30)
    assert not any(p.is_file() for p in world.staging.blobs.rglob("*")), "released after the reader"


def test_downloads_wait_while_staging_is_over_budget(world: World) -> None:
    world.staging.config = StagingConfig(dir=world.staging.root, max_bytes=1, min_free=0)
    (world.staging.partial / "filler").write_bytes(b"x" * 10_000)
    world.add_files("acme/tiny", {"model.bin": b"payload"}, route=("download",))
    engine = world.engine(lambda ctx: {"download": StagingHop(None, ctx, None)})
    engine.run_until_idle(timeout=30)
    assert world.transfers()[0].state == PENDING
    assert engine.hold_reason and "staging.max_bytes" in engine.hold_reason
    facts = world.store.service_state()
    assert facts["staging"][0]["held"] == engine.hold_reason


def test_downloads_are_admitted_only_while_staging_can_hold_them(world: World) -> None:
    size = 64 * 1024
    world.staging.config = StagingConfig(dir=world.staging.root, max_bytes=2 * size, min_free=0)
    world.add_files(
        "acme/tiny", {f"s{i}.bin": os.urandom(size) for i in range(4)}, route=("download", "reader")
    )

    class StuckReader(ReaderHop):
        def move(self, job: Job, missing: Sequence[PieceSpec]) -> None:
            raise Retryable("the drive is slow today")

    engine = world.engine(
        lambda ctx: {"download": StagingHop(None, ctx, None), "reader": StuckReader(None, ctx, None)},
        limits={"download": 4, "reader": 1},
    )
    engine.run_until_idle(timeout=30)
    downloads = [t for t in world.transfers() if t.hop == "download"]
    assert sum(1 for t in downloads if t.state == DONE) == 2
    assert sum(1 for t in downloads if t.state == PENDING) == 2
    assert all(t.attempts == 1 for t in downloads if t.state == DONE)
    assert all(t.attempts == 0 for t in downloads if t.state == PENDING), "a held claim does not count"
    assert engine.hold_reason and "with the next file" in engine.hold_reason
    staged = sum(p.stat().st_size for p in world.staging.blobs.rglob("*") if p.is_file())
    assert staged == 2 * size


def test_a_transfer_blocked_by_a_full_disk_tries_again_when_there_is_room(world: World) -> None:
    world.add_files("acme/tiny", {"model.bin": b"x" * 100}, route=("download",))
    engine = world.engine(
        lambda ctx: {"download": StagingHop(None, ctx, OSError(errno.ENOSPC, "No space left on device"))}
    )
    engine.run_until_idle(timeout=30)
    assert world.transfers()[0].state == BLOCKED
    assert world.transfers()[0].error_class == "disk"
    healthy = world.engine(lambda ctx: {"download": StagingHop(None, ctx, None)})
    healthy.run_until_idle(timeout=30)
    assert world.transfers()[0].state == DONE


class MismatchingHop(ScriptedHop):
    """A hop whose attempts fail in the order a test gives (None: the attempt verifies)."""

    def __init__(self, section: object, ctx: HopContext, failures: list[BaseException | None]) -> None:
        super().__init__(section, ctx, None)
        self.failures = failures

    def move(self, job: Job, missing: Sequence[PieceSpec]) -> None:
        for piece in missing:
            job.begin_piece(piece.index)
        failure = self.failures.pop(0)
        if failure is not None:
            job.handles = {"upload": "a hop's own handles, replaced wholesale"}
            job.save_handles()
            raise failure
        for piece in missing:
            job.piece_done(piece.index)


def mismatch(actual: str) -> IntegrityMismatch:
    return IntegrityMismatch(expected="e" * 64, actual=actual, where="at the test's end", hint="look")


@pytest.mark.parametrize(
    ("failures", "state"),
    [
        # Other failures between two mismatches do not end the streak.
        ([mismatch("a" * 64), Retryable("link dropped"), mismatch("b" * 64)], BLOCKED),
        # A copy that verifies ends it: the next mismatch is a first one again.
        ([mismatch("a" * 64), None], DONE),
    ],
)
def test_only_mismatches_in_a_row_block(
    world: World, failures: list[BaseException | None], state: str
) -> None:
    world.add_files("acme/tiny", {"model.bin": b"x" * 100}, route=("scripted",))
    hop_failures = list(failures)
    for _attempt in failures:
        world.engine(lambda ctx: {"scripted": MismatchingHop(None, ctx, hop_failures)}).run_until_idle(
            timeout=30
        )
        with world.store._write() as session:
            session.query(Transfer).update({"next_attempt_at": None})
    (transfer,) = world.transfers()
    assert transfer.state == state
    if state == BLOCKED:
        assert transfer.last_error == (
            "sha256 mismatch measured at the test's end, twice in a row: expected "
            f"{'e' * 64}, got {'b' * 64} ({'a' * 64} the time before)"
        )
        assert transfer.hint == "look"
    else:
        assert transfer.handles == {"ok": True}


def job_for(world: World) -> Job:
    (transfer,) = world.transfers()
    return Job(world.store.load_job(transfer.id), world.ctx())


@pytest.mark.parametrize("first_attempt_ends", ["killed", "failed"])
def test_a_send_found_complete_after_the_attempt_ended_counts_once(
    world: World, first_attempt_ends: str
) -> None:
    """bytes_moved counts the latest send of a piece up to its length when a later attempt finds the
    piece at the destination: whole after a kill -9 (nothing of it was saved), not again after a
    failure (the engine saved what it had counted)."""
    world.add_files("acme/tiny", {"model.bin": b"x" * 1000}, route=("scripted",))
    claimed = world.store.claim("scripted", "test-owner", 30)
    assert claimed is not None
    first = job_for(world)
    first.replan(plan_ranges(1000, 400), 1000)  # pieces of 400, 400 and 200 bytes
    first.begin_piece(0)
    first.add_progress(400, 0)
    first.piece_done(0)
    first.begin_piece(1)
    first.add_progress(300, 1)  # the send of piece 1 is under way ...
    if first_attempt_ends == "failed":
        first.add_progress(100, 1)
        first.finish_progress()  # ... it ends with an error the engine saw (the answer was lost)
    # ... or the process dies here: nothing of piece 1 was saved.
    second = job_for(world)
    second.pieces_done([1])  # the destination holds piece 1: the earlier send completed
    second.begin_piece(2)
    second.add_progress(200, 2)
    second.piece_done(2)
    (transfer,) = world.transfers()
    assert transfer.bytes_moved == 1000
    assert [(p.sends, p.moved, p.done) for p in world.pieces()] == [
        (1, 400, True),
        (1, 400, True),
        (1, 200, True),
    ]


def test_bytes_moved_include_re_sends_and_are_saved_with_the_piece_record(world: World) -> None:
    world.add_files("acme/tiny", {"model.bin": b"x" * 1000}, route=("scripted",))
    assert world.store.claim("scripted", "test-owner", 30) is not None
    job = job_for(world)
    job.replan(plan_ranges(1000, 1000), 1000)
    job.begin_piece(0)
    job.add_progress(600, 0)  # a send that fails part way ...
    job.begin_piece(0)  # ... and the piece again from byte 0
    job.add_progress(1000, 0)
    job.piece_done(0)  # no finish_progress: the piece record carries the bytes
    (transfer,) = world.transfers()
    assert transfer.bytes_moved == 1600
    assert [(p.sends, p.moved) for p in world.pieces()] == [(2, 1000)]


@pytest.mark.parametrize(
    ("route", "staged", "reused"),
    [
        (("download", "pan_upload", "vm_pull", "lfs_push"), False, True),
        (("download", "pan_upload", "vm_pull", "lfs_push"), True, False),  # staging serves it
        (("download", "pan_upload"), False, False),  # the drive is the destination: a copy of its own
        (("download", "lfs_push"), False, False),  # nothing reads the drive back
    ],
)
def test_content_relayed_before_reuses_its_verified_drive_copy(
    world: World, route: tuple[str, ...], staged: bool, reused: bool
) -> None:
    data = b"w" * 1000
    sha256 = hashlib.sha256(data).hexdigest()
    spec = FileSpec("w.bin", len(data), True, sha256)
    full = ("download", "pan_upload", "vm_pull", "lfs_push")
    declared = loadable(full)  # what those hops declare
    world.store.rules = HopRules(
        writes_staging=frozenset(name for name, hop in declared.items() if hop.writes_staging),
        produces={name: hop.produces for name, hop in declared.items() if hop.produces},
        consumes={name: hop.consumes for name, hop in declared.items()},
    )
    first, _ = world.store.add_repo(RepoSpec(name="acme/first", every=3600, route=full))
    world.store.record_snapshot(first.id, "1" * 40, [spec])
    for hop, handles in (
        ("download", {}),
        ("pan_upload", {"file_id": "F1", "path": "/relayd/acme/first/w.bin"}),
    ):
        claimed = world.store.claim(hop, "seed", 30)
        assert claimed is not None
        world.store.complete(
            claimed.id,
            "seed",
            handles,
            sha256=sha256,
            sha1=hashlib.sha1(data).hexdigest(),
            staged_path="blobs/w",
        )
    if not staged:
        job = world.store.load_job(world.transfers()[0].id)
        assert job.file is not None
        world.store.unstage(job.file.blob_id)
    second, _ = world.store.add_repo(RepoSpec(name="acme/second", every=3600, route=tuple(route)))
    world.store.record_snapshot(second.id, "2" * 40, [FileSpec("renamed.bin", len(data), True, sha256)])
    theirs = {t.hop: t for t in world.transfers() if t.repo_id == second.id}
    if reused:
        assert {hop: t.state for hop, t in theirs.items()} == {
            "download": DONE,
            "pan_upload": DONE,
            "vm_pull": PENDING,
        }
        reason = f"reused drive copy of {sha256}"
        assert theirs["download"].handles == {"reused": True, "reason": reason}
        assert (
            theirs["pan_upload"].handles["file_id"] == "F1"
            and theirs["pan_upload"].handles["reason"] == reason
        )
    else:
        assert {hop: t.state for hop, t in theirs.items()} == {"download": PENDING}
