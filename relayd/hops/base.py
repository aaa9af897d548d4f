"""The hop contract: plan the pieces, move the missing ones, verify the whole.

This module is the whole public surface a hop needs, the errors it raises included. The engine claims
a transfer, builds a ``Job`` for it and calls ``plan`` (only when no plan is recorded), ``move`` with
the pieces not yet durable, and ``verify``; a hop that commits a whole snapshot at once also implements
``finish_snapshot``. A hop signals what should happen after a failure by the error it raises (see
relayd.errors).

A hop reads plain records (relayd.hops.records) and reports through its ``Job``, which reaches the
catalogue only by the narrow ``StorePort``; a hop never imports the catalogue or SQLAlchemy (ruff's
banned-api rule, pyproject.toml). What the rest of relayd needs to know about a hop is what its class
declares (``Hop``), never its name.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from relayd.errors import (
    Cancelled,
    ErrorClass,
    HopError,
    IntegrityMismatch,
    NeedsPerson,
    Permanent,
    Retryable,
)
from relayd.health import FAIL, OK, SKIP, WARN, Check, CheckScope, Finding
from relayd.hops.records import (
    FileInfo,
    Handles,
    JobData,
    PieceSpec,
    RepoInfo,
    SnapshotInfo,
    SnapshotMember,
)
from relayd.services import Services

if TYPE_CHECKING:
    from relayd.staging import Staging

__all__ = [
    "FAIL",
    "OK",
    "SKIP",
    "WARN",
    "Cancelled",
    "Check",
    "CheckScope",
    "ErrorClass",
    "FileInfo",
    "Finding",
    "Handles",
    "Hop",
    "HopContext",
    "IntegrityMismatch",
    "Job",
    "JobData",
    "NeedsPerson",
    "Outcome",
    "Permanent",
    "PieceSpec",
    "RepoInfo",
    "Retryable",
    "Services",
    "SnapshotInfo",
    "SnapshotMember",
    "StorePort",
    "plan_ranges",
]

PROGRESS_INTERVAL = 1.0
#: The handle key under which Job keeps a transfer's integrity mismatches in a row (hops never see it).
MISMATCHES = "integrity_mismatches"


class StorePort(Protocol):
    """The few calls through which a job reports to the catalogue (``relayd.catalogue.store.Store``
    implements them). Each is one short transaction; a hop reaches them through its ``Job``."""

    def record_plan(self, transfer_id: int, pieces: Sequence[PieceSpec], bytes_total: int) -> None:
        """Replace the transfer's pieces with *pieces* (a fresh plan)."""

    def piece_started(self, transfer_id: int, index: int, *, moved: int = 0) -> None:
        """Count one more send of the piece; *moved*: bytes of its previous send not counted yet."""

    def piece_done(
        self,
        transfer_id: int,
        indices: Sequence[int],
        *,
        moved: int = 0,
        by_piece: Mapping[int, int] | None = None,
        sent_before: Sequence[int] = (),
        rate: float | None = None,
    ) -> None:
        """Record that the pieces are durable at the destination, with the bytes counted so far."""

    def reset_pieces(self, transfer_id: int, indices: Sequence[int] | None = None) -> None:
        """Mark the pieces (all when *indices* is None) as missing again."""

    def progress(
        self,
        transfer_id: int,
        *,
        moved: int,
        rate: float | None,
        bytes_done: int | None = None,
        by_piece: Mapping[int, int] | None = None,
    ) -> None:
        """Count *moved* bytes towards the transfer's traffic and record its current rate."""

    def save_handles(self, transfer_id: int, handles: dict[str, Any]) -> None:
        """Persist the transfer's remote handles before they are relied on."""

    def fetch_again(self, transfer_id: int, reason: str) -> None:
        """Forget the file's reused copies and have the route's first hop fetch it again."""

    def publish(self, key: str, value: dict[str, Any]) -> None:
        """Set a fact for relayctl (a token's lifetime, a cap the service imposed)."""


@dataclass(frozen=True)
class HopContext:
    """What every hop of one daemon shares. ``store`` is the narrow port jobs report through (never the
    catalogue itself); ``cancel`` is set when work must stop at the next durable point (the daemon is
    stopping); ``services`` hands out shared clients (the drive, the VM executor)."""

    store: StorePort
    staging: Staging
    state_dir: Path
    cancel: threading.Event
    owner: str
    services: Services = field(default_factory=Services)


@dataclass(frozen=True)
class Outcome:
    """What a verified transfer leaves behind: handles naming the copy at the destination, and
    content facts learned on the way (recorded on the blob so later hops and repos reuse them)."""

    handles: dict[str, Any]
    sha256: str | None = None
    sha1: str | None = None
    staged_path: str | None = None


def plan_ranges(size: int, piece_size: int) -> list[PieceSpec]:
    """Return pieces of *piece_size* bytes covering *size* bytes (one empty piece for an empty file)."""
    if size == 0:
        return [PieceSpec(0, 0, 0)]
    return [
        PieceSpec(index, offset, min(piece_size, size - offset))
        for index, offset in enumerate(range(0, size, piece_size))
    ]


@dataclass
class _Rate:
    """Bytes moved since the last report (by piece; None: not tied to one), and a smoothed rate."""

    pending: dict[int | None, int] = field(default_factory=dict)
    rate: float | None = None
    last: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _by_piece(counted: dict[int | None, int]) -> dict[int, int]:
    return {piece: moved for piece, moved in counted.items() if piece is not None and moved}


class JobLog(logging.LoggerAdapter[logging.Logger]):
    """Prefix a job's log lines with its repo and path, so each line stands on its own."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"{extra.get('repo')}: {extra.get('path')}: {msg}", kwargs


class Job:
    """One claimed transfer as a hop sees it: what to move, where it came from, and how to report."""

    def __init__(self, data: JobData, ctx: HopContext) -> None:
        self._ctx = ctx
        self.id: int = data.transfer_id
        self.hop: str = data.hop
        self.repo: RepoInfo = data.repo
        self.file: FileInfo | None = data.file
        #: The pinned commit this transfer belongs to: its snapshot's, or that of the newest snapshot
        #: listing its file (never a branch head that moved on).
        self.commit: str = data.commit
        self.snapshot: SnapshotInfo | None = data.snapshot
        self.snapshot_files: tuple[SnapshotMember, ...] = data.snapshot_files
        self.previous_snapshot_handles: Handles | None = data.previous_snapshot_handles
        self.attempts: int = data.attempts
        self.handles: Handles = dict(data.handles)
        self._mismatches: list[dict[str, str]] = list(self.handles.pop(MISMATCHES, None) or [])
        self._begun: set[int] = set()  # pieces whose latest send this attempt began
        self.locations: dict[str, Handles] = {hop: dict(handles) for hop, handles in data.locations.items()}
        self.pieces: list[PieceSpec] = list(data.pieces)
        self.log = JobLog(
            logging.getLogger(f"relayd.hops.{self.hop}"),
            {"repo": self.repo.name, "path": self.file.path if self.file else f"snapshot {self.commit[:12]}"},
        )
        self._rate = _Rate()

    @property
    def previous(self) -> Handles:
        """Handles of the copy made by the previous hop of the route ({} for the first hop)."""
        route = list(self.repo.route)
        step = route.index(self.hop) if self.hop in route else 0
        return self.locations.get(route[step - 1], {}) if step > 0 else {}

    @property
    def file_or_fail(self) -> FileInfo:
        if self.file is None:
            raise TypeError("this is a snapshot-level transfer; it has no single file")
        return self.file

    @property
    def cancelled(self) -> bool:
        return self._ctx.cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise Cancelled if the daemon is stopping (call between pieces)."""
        if self._ctx.cancel.is_set():
            raise Cancelled("the daemon is stopping")

    def save_handles(self) -> None:
        """Persist ``handles`` now (before relying on a remote id after a crash)."""
        handles = dict(self.handles)
        if self._mismatches:
            handles[MISMATCHES] = self._mismatches
        self._ctx.store.save_handles(self.id, handles)

    def integrity_failed(self, mismatch: IntegrityMismatch) -> HopError:
        """Count *mismatch* in the transfer's streak of mismatches in a row and return what follows:
        Retryable (the hop discarded the copy; send it again) the first time, NeedsPerson (with both
        hashes and where they were measured) the second. The streak is kept in the handles, so hops
        and restarts cannot lose it; it ends when the copy verifies (the done transfer's handles are
        the outcome's) or when it blocks (a person's retry starts afresh)."""
        seen = {"expected": mismatch.expected, "actual": mismatch.actual, "where": mismatch.where}
        self._mismatches = [*self._mismatches, seen][-2:]
        if len(self._mismatches) < 2:
            self.save_handles()
            return Retryable(f"{mismatch}; sending it again", error_class=ErrorClass.INTEGRITY)
        first = self._mismatches[0]
        self._mismatches = []
        self.save_handles()
        before = "" if first["actual"] == mismatch.actual else f" ({first['actual']} the time before)"
        detail = f"; {mismatch.detail}" if mismatch.detail else ""
        return NeedsPerson(
            f"{mismatch.algorithm} mismatch measured {mismatch.where}, twice in a row: expected "
            f"{mismatch.expected}, got {mismatch.actual}{before}{detail}",
            hint=mismatch.hint,
            error_class=ErrorClass.INTEGRITY,
        )

    def fetch_again(self, reason: str) -> None:
        """The copy this file's earlier hops reused (``locations[...]["reused"]``) is gone: forget
        them and this transfer, and have the route's first hop fetch the file again. Raise after it
        (the engine's record of this attempt then finds nothing to update)."""
        self._ctx.store.fetch_again(self.id, reason)

    def replan(self, pieces: Sequence[PieceSpec], size: int) -> None:
        """Record a new plan (for instance when the remote side dictates the part size)."""
        self._ctx.store.record_plan(self.id, pieces, size)
        self.pieces = list(pieces)

    def begin_piece(self, index: int) -> None:
        """Note that the piece is being sent (counts re-sends); its bytes are counted from zero."""
        with self._rate.lock:
            before = self._rate.pending.pop(index, 0)
        self._ctx.store.piece_started(self.id, index, moved=before)
        self._begun.add(index)

    def piece_done(self, index: int) -> None:
        """Record that the piece is durable at the destination; call only after fsync or its remote
        equivalent."""
        self.pieces_done([index])

    def pieces_done(self, indices: Sequence[int]) -> None:
        """Record that the pieces are durable at the destination, with the bytes counted so far, in
        one transaction. A piece whose latest send an earlier attempt began (and did not record, as a
        kill -9 leaves it) is now known to have arrived whole: that send counts up to its length."""
        counted, rate = self._take_progress(force=True)
        self._ctx.store.piece_done(
            self.id,
            indices,
            moved=sum(counted.values()),
            by_piece=_by_piece(counted),
            sent_before=[index for index in indices if index not in self._begun],
            rate=rate,
        )
        done = set(indices)
        self.pieces = [
            PieceSpec(p.index, p.offset, p.length, True) if p.index in done else p for p in self.pieces
        ]

    def reset_pieces(self, indices: Sequence[int] | None = None) -> None:
        """Mark pieces (all by default) as missing again, e.g. after a failed verification."""
        self._ctx.store.reset_pieces(self.id, indices)
        wanted = set(indices) if indices is not None else None
        self.pieces = [
            PieceSpec(p.index, p.offset, p.length, False) if wanted is None or p.index in wanted else p
            for p in self.pieces
        ]

    def add_progress(self, moved: int, piece: int | None = None) -> None:
        """Count *moved* payload bytes sent (or received) towards the destination, as part of *piece*
        when the hop knows it (thread-safe). They are saved with the next piece record, at the end of
        the attempt, or about once a second (status shows the rate)."""
        with self._rate.lock:
            self._rate.pending[piece] = self._rate.pending.get(piece, 0) + moved
        self._flush_progress()

    def _take_progress(self, *, force: bool) -> tuple[dict[int | None, int], float | None]:
        """Take the bytes counted since the last save and update the rate; nothing ({}) before a
        second has passed unless *force*."""
        with self._rate.lock:
            now = time.monotonic()
            elapsed = now - self._rate.last
            if not force and elapsed < PROGRESS_INTERVAL:
                return {}, self._rate.rate
            counted, self._rate.pending = self._rate.pending, {}
            moved = sum(counted.values())
            if elapsed > 0 and (moved or elapsed >= PROGRESS_INTERVAL):
                current = moved / elapsed
                previous = self._rate.rate
                self._rate.rate = current if previous is None else 0.6 * current + 0.4 * previous
            self._rate.last = now
            return counted, self._rate.rate

    def _flush_progress(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._rate.last < PROGRESS_INTERVAL:
            return
        counted, rate = self._take_progress(force=force)
        moved = sum(counted.values())
        if moved or force:
            self._ctx.store.progress(self.id, moved=moved, rate=rate, by_piece=_by_piece(counted))

    def finish_progress(self) -> None:
        """Flush what add_progress counted (the engine calls this when the hop returns)."""
        self._flush_progress(force=True)

    def publish(self, key: str, value: dict[str, Any]) -> None:
        """Publish a service fact for relayctl (e.g. the drive token's expiry)."""
        self._ctx.store.publish(key, value)


class Hop(abc.ABC):
    """A stage of the route: moves one file from the previous location to the next and verifies it.

    Subclasses set ``name`` and declare what the rest of relayd needs to know about them (it never
    tests a hop's name): ``config_section``, the config table they receive; ``short_name`` for the
    one-line status; ``writes_staging`` when they fill the staging disk (downloads wait while it is
    over its budget), ``reads_staging`` when they read the staged copy (it is kept until they are
    done), ``finishes_snapshot`` when a snapshot-level step must run after all files
    (``finish_snapshot``), ``source`` when they are a route's first hop and need a poller ("hub" or
    "local"), ``consumes`` and ``produces`` for where they read each file and leave their verified
    copy, and ``large_files`` when one large file already takes all they can move at once (see there).
    """

    name: ClassVar[str]
    # The config table the hop receives (relayd.config.HOP_SECTIONS: "hub", "drive", …); None: its own
    # [hops.NAME] table, as a plain mapping it validates itself.
    config_section: ClassVar[str | None] = None
    # What `relayctl status` calls it where space is short ("dl", "up", …); None: its name.
    short_name: ClassVar[str | None] = None
    writes_staging: ClassVar[bool] = False
    reads_staging: ClassVar[bool] = False
    finishes_snapshot: ClassVar[bool] = False
    # With reads_staging: hops that, when earlier in a repo's route, make this one read their copy
    # instead of the staged one (so staging need not wait for it on that route).
    staging_unneeded_after: ClassVar[frozenset[str]] = frozenset()
    source: ClassVar[str | None] = None
    # Where the hop reads each file (any one of these kinds of location will do) and where it leaves
    # its verified copy, e.g. "staging", "drive", "vm": in a route, each hop after the first must read
    # a kind that a hop before it produces (relayd.hops.routes); the first one reads its ``source``.
    consumes: ClassVar[frozenset[str]] = frozenset()
    produces: ClassVar[str | None] = None
    # The shared services it asks ``ctx.services`` for ("hub", "drive", "vm"): doctor checks them too.
    services: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def section_key(cls) -> str:
        """Return the key of the config section this hop receives (``relayd.config.Config.section``)."""
        return cls.config_section or f"hops.{cls.name}"

    @classmethod
    def short(cls) -> str:
        """Return the hop's short name for the one-line status."""
        return cls.short_name or cls.name

    def __init__(self, section: Any, ctx: HopContext) -> None:
        """Keep what it is given: the daemon builds every installed hop at start, routed or not, so
        clients that are slow to build belong in ``prepare``."""
        self.section = section
        self.ctx = ctx

    def prepare(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Build the clients this hop uses now, so that a broken config shows when relayd starts, not
        at the first transfer: the daemon calls it for the hops some repo's route (or ``daemon.hops``)
        uses, and never for the others. Log what is wrong; never raise."""

    @property
    def large_files(self) -> tuple[int, int] | None:
        """``(size, at_once)``: files of at least *size* bytes run at most *at_once* at a time, smaller
        ones beside them up to the hop's concurrency; None (the default) when size does not matter."""
        return None

    @abc.abstractmethod
    def plan(self, job: Job) -> Sequence[PieceSpec]:
        """Return the pieces of the whole transfer (called when no plan is recorded)."""

    @abc.abstractmethod
    def move(self, job: Job, missing: Sequence[PieceSpec]) -> None:
        """Move the *missing* pieces, calling job.piece_done(i) as each becomes durable."""

    @abc.abstractmethod
    def verify(self, job: Job) -> Outcome:
        """Check the whole copy at the destination (size and hash) and return where it is.

        Reset the bad pieces and raise Retryable when it can be repaired; raise NeedsPerson or
        Permanent when it cannot.
        """

    def finish_snapshot(self, job: Job) -> Outcome:
        """Run the snapshot-level step (only for hops with finishes_snapshot)."""
        raise Permanent(f"hop {self.name} has no snapshot-level step")

    @classmethod
    def checks(cls, section: Any, scope: CheckScope) -> Sequence[Check]:
        """Return what `relayctl doctor` checks for this hop given its config *section*, beside the
        checks of the services it uses (``services``): none by default. Each check runs in its own
        thread within ``scope.timeout`` and returns its findings (relayd.health)."""
        return ()

    def held(self, repo: RepoInfo, contents: Sequence[tuple[str, int]]) -> set[str]:
        """Given *contents* ((sha256, size) pairs) of a snapshot of *repo* about to be recorded, return
        the sha256s this hop's destination already holds, when the hop ends the route: "ask the end
        first", so no earlier hop moves them. None by default (the hop cannot tell). Raise HopError
        when the destination cannot be asked (the files then move as usual)."""
        return set()

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections and child processes (called when the daemon stops)."""


HopFactory = Callable[[Any, HopContext], Hop]
