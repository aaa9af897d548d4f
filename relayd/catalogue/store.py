"""Every write to the catalogue goes through this module.

Each method is one short transaction, so relayctl and the daemon's workers interleave without holding
locks for long, and a crash between two calls leaves the catalogue consistent: a piece is recorded only
after it is durable, a transfer is done only after it is verified, and the next hop's transfer is
created in the same transaction that marks the previous one done.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from relayd.catalogue.db import is_sqlite, make_engine
from relayd.catalogue.queries import stuck_hint
from relayd.catalogue.schema import (
    BLOCKED,
    DONE,
    PENDING,
    POLL_BLOCKED,
    POLL_OK,
    POLL_WAITING,
    RUNNING,
    SNAPSHOT_ACTIVE,
    SNAPSHOT_DONE,
    SNAPSHOT_REFUSED,
    SNAPSHOT_SUPERSEDED,
    WAITING,
    Blob,
    File,
    Notification,
    Piece,
    Repo,
    ServiceState,
    Snapshot,
    SnapshotFile,
    Transfer,
)
from relayd.errors import CatalogueError, ErrorClass, UsageError
from relayd.hops.records import (
    FileInfo,
    Handles,
    JobData,
    PieceSpec,
    RepoInfo,
    SnapshotInfo,
    SnapshotMember,
)
from relayd.text import safe_optional, safe_text

log = logging.getLogger(__name__)


#: The kind of location (``Hop.produces``) whose verified copies later files of the same content reuse.
DRIVE = "drive"
#: The handles of a drive copy that a file reusing it gets.
DRIVE_HANDLES = ("file_id", "drive_id", "path", "content_hash")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_owner_id() -> str:
    """Return a lease owner id unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class RepoSpec:
    """What `relayctl add` asks for."""

    name: str
    every: float
    route: tuple[str, ...]
    repo_type: str = "model"
    revision: str = "main"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    destinations: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FileSpec:
    """One file of a polled snapshot: the path and what identifies its content."""

    path: str
    size: int
    lfs: bool
    sha256: str | None = None
    git_blob_id: str | None = None


@dataclass(frozen=True)
class HopRules:
    """What the store must know about hops, from what they declare (``relayd.daemon.hop_rules``):
    which fill and which read the staged copy, which finish a snapshot, and the kinds of location each
    reads and leaves its copy in."""

    reads_staging: frozenset[str] = frozenset()
    finishes_snapshot: frozenset[str] = frozenset()
    # hop → hops that, when earlier in the route, mean it does not read the staged copy there.
    staging_unneeded_after: Mapping[str, frozenset[str]] = field(default_factory=dict)
    writes_staging: frozenset[str] = frozenset()
    produces: Mapping[str, str] = field(default_factory=dict)
    consumes: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def reuses_drive_copy(self, route: Sequence[str]) -> bool:
        """Return whether a verified drive copy of a file's content can stand for *route*'s first two
        hops: they fill staging and then the drive, and the third reads the drive."""
        return (
            len(route) > 2
            and route[0] in self.writes_staging
            and self.produces.get(route[1]) == DRIVE
            and DRIVE in self.consumes.get(route[2], frozenset())
        )


@dataclass(frozen=True)
class SnapshotResult:
    snapshot_id: int
    created: bool
    new_files: int
    linked_files: int
    removed_files: int


@dataclass(frozen=True)
class StagedBlob:
    blob_id: int
    staged_path: str


@dataclass(frozen=True)
class StuckNotice:
    """A transfer (or, with *hop* None, a repo's poll) that has kept failing for longer than
    retry.surface_after, as surfaced and notified."""

    repo: str
    hop: str | None
    path: str | None
    error: str | None
    error_class: str | None
    attempts: int
    failing_since: datetime
    hint: str


class LeaseLost(CatalogueError):
    """Another worker owns this transfer now (our lease expired); drop the result."""


def _runnable(now: datetime) -> tuple[Any, ...]:
    """The conditions of a claimable transfer: pending, or waiting whose time has come, or running
    with an expired lease (its worker died), in a repo that is not paused."""
    return (
        Repo.paused.is_(False),
        or_(
            and_(
                Transfer.state.in_((PENDING, WAITING)),
                or_(Transfer.next_attempt_at.is_(None), Transfer.next_attempt_at <= now),
            ),
            and_(Transfer.state == RUNNING, Transfer.lease_expires_at < now),
        ),
    )


def _file_info(file: File, blob: Blob) -> FileInfo:
    return FileInfo(
        id=file.id,
        blob_id=file.blob_id,
        path=file.path,
        size=file.size,
        lfs=file.lfs,
        sha256=file.sha256 or blob.sha256,
        git_blob_id=file.git_blob_id,
        sha1=file.sha1 or blob.sha1,
        staged_path=blob.staged_path,
    )


def _repo_info(repo: Repo) -> RepoInfo:
    return RepoInfo(
        name=repo.name,
        repo_type=repo.repo_type,
        revision=repo.revision,
        route=tuple(repo.route),
        destinations=dict(repo.destinations or {}),
        options=dict(repo.options or {}),
    )


class Store:
    """The catalogue's single writer API. Thread-safe: every method opens its own session."""

    def __init__(self, url: str, *, rules: HopRules | None = None) -> None:
        self.url = url
        self.rules = rules or HopRules()
        # Webhook URLs that receive every repo's notifications (config notify.webhooks).
        self.webhooks: tuple[str, ...] = ()
        # Told, after each commit, of the bytes a hop moved (hop, bytes) and of each attempt parked
        # (hop, state, error_class): the daemon's metrics count them as they happen.
        self.on_moved: Callable[[str, int], None] | None = None
        self.on_deferred: Callable[[str, str, str], None] | None = None
        self.engine: Engine = make_engine(url, immediate=True)
        self._reader_engine: Engine = make_engine(url, immediate=False) if is_sqlite(url) else self.engine
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(self._reader_engine, expire_on_commit=False)
        self._skip_locked = not is_sqlite(url)

    def close(self) -> None:
        self.engine.dispose()
        if self._reader_engine is not self.engine:
            self._reader_engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """Yield a read-only session (it never takes the SQLite write lock)."""
        with self._readers() as session:
            yield session

    # -- repos -------------------------------------------------------------------------------------

    def add_repo(self, spec: RepoSpec, *, replace: bool = False) -> tuple[Repo, str]:
        """Add the repo; return it and 'created', 'exists' (left unchanged) or 'updated' (replace)."""
        now = utcnow()
        with self._write() as session:
            repo = session.scalar(select(Repo).where(Repo.name == spec.name))
            if repo is not None and not replace:
                return repo, "exists"
            outcome = "updated"
            if repo is None:
                repo = Repo(name=spec.name, created_at=now, paused=False)
                session.add(repo)
                outcome = "created"
            repo.repo_type = spec.repo_type
            repo.revision = spec.revision
            repo.include = list(spec.include)
            repo.exclude = list(spec.exclude)
            repo.every = spec.every
            repo.route = list(spec.route)
            repo.destinations = dict(spec.destinations)
            repo.options = dict(spec.options)
            repo.next_poll_at = now
            repo.updated_at = now
            if outcome == "updated":
                # A changed revision or globs must be looked at again even if the head did not move.
                repo.head_commit = None
            session.flush()
            return repo, outcome

    def remove_repo(self, name: str) -> bool:
        """Forget the repo and everything recorded for it; return False if there was none."""
        with self._write() as session:
            repo_id = session.scalar(select(Repo.id).where(Repo.name == name))
            if repo_id is None:
                return False
            transfer_ids = select(Transfer.id).where(Transfer.repo_id == repo_id)
            session.execute(delete(Piece).where(Piece.transfer_id.in_(transfer_ids)))
            session.execute(delete(Transfer).where(Transfer.repo_id == repo_id))
            snapshot_ids = select(Snapshot.id).where(Snapshot.repo_id == repo_id)
            session.execute(delete(SnapshotFile).where(SnapshotFile.snapshot_id.in_(snapshot_ids)))
            session.execute(delete(Snapshot).where(Snapshot.repo_id == repo_id))
            session.execute(delete(File).where(File.repo_id == repo_id))
            session.execute(delete(Repo).where(Repo.id == repo_id))
            return True

    def set_paused(self, name: str, paused: bool) -> bool:
        """Pause or resume the repo; return False if there is no such repo."""
        with self._write() as session:
            result = session.execute(
                update(Repo)
                .where(Repo.name == name)
                .values(paused=paused, updated_at=utcnow(), next_poll_at=None if paused else utcnow())
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def repo(self, name: str) -> Repo | None:
        with self.read() as session:
            return session.scalar(select(Repo).where(Repo.name == name))

    def repos(self) -> list[Repo]:
        with self.read() as session:
            return list(session.scalars(select(Repo).order_by(Repo.name)))

    # -- polls -------------------------------------------------------------------------------------

    def record_poll_state(
        self,
        repo_id: int,
        *,
        state: str,
        error: str | None = None,
        error_class: ErrorClass | None = None,
        hint: str | None = None,
        next_poll_at: datetime | None = None,
    ) -> None:
        """Record how the last poll of the repo went (only called when something changed). A failed poll
        adds to the repo's streak of failures; one that got an answer (``ok``) ends it."""
        now = utcnow()
        error, hint = safe_optional(error), safe_optional(hint)
        with self._write() as session:
            repo = session.get(Repo, repo_id)
            if repo is None:
                return
            if state == POLL_BLOCKED and (repo.poll_state != POLL_BLOCKED or repo.poll_error != error):
                self._enqueue(
                    session,
                    repo,
                    "blocked",
                    {"hop": "poll", "path": None, "error": error, "error_class": error_class, "hint": hint},
                    now,
                )
            if state == POLL_OK:
                self._end_poll_streak(repo)
            else:
                repo.poll_attempts += 1
                repo.poll_failing_since = repo.poll_failing_since or now
            if next_poll_at != repo.next_poll_at:
                repo.updated_at = now  # a new retry time: the daemon's reconcile notices the change
            repo.poll_state = state
            repo.poll_error = error
            repo.poll_error_class = error_class
            repo.poll_hint = hint
            repo.next_poll_at = next_poll_at

    @staticmethod
    def _end_poll_streak(repo: Repo) -> None:
        repo.poll_attempts = 0
        repo.poll_failing_since = repo.poll_surfaced_at = None

    def record_snapshot(self, repo_id: int, commit: str, files: Sequence[FileSpec]) -> SnapshotResult:
        """Record a new head of the repo and its files; start moving what is new.

        Files whose path and content were in an earlier snapshot are linked, not moved again; earlier
        unfinished snapshots are superseded. Raise CatalogueError on duplicate paths.
        """
        paths = [spec.path for spec in files]
        if len(set(paths)) != len(paths):
            raise CatalogueError(f"snapshot {commit} lists a path twice")
        try:
            return self._record_snapshot(repo_id, commit, files)
        except IntegrityError:
            # Another worker sharing the catalogue recorded the same head (or content) at the same
            # moment; its transaction won, so ours finds the snapshot there now.
            return self._record_snapshot(repo_id, commit, files)

    def _record_snapshot(self, repo_id: int, commit: str, files: Sequence[FileSpec]) -> SnapshotResult:
        now = utcnow()
        with self._write() as session:
            repo = session.get(Repo, repo_id)
            if repo is None:
                raise CatalogueError(f"repo {repo_id} does not exist")
            existing = session.scalar(
                select(Snapshot).where(Snapshot.repo_id == repo_id, Snapshot.commit == commit)
            )
            if existing is not None and existing.state != SNAPSHOT_REFUSED:
                repo.head_commit = commit
                repo.poll_state = POLL_OK
                repo.poll_error = repo.poll_hint = repo.poll_error_class = None
                repo.next_poll_at = None
                self._end_poll_streak(repo)
                return SnapshotResult(existing.id, False, 0, 0, 0)
            # A head refused before is recorded now that the repo's globs leave out what was refused.
            snapshot = existing or Snapshot(repo_id=repo_id, commit=commit, seen_at=now)
            snapshot.state, snapshot.reason = SNAPSHOT_ACTIVE, None
            snapshot.file_count = len(files)
            snapshot.total_bytes = sum(spec.size for spec in files)
            session.add(snapshot)
            session.flush()
            file_ids: list[int] = []
            new_file_ids: list[int] = []
            for spec in files:
                blob = self._find_or_create_blob(session, spec)
                file = session.scalar(
                    select(File).where(
                        File.repo_id == repo_id, File.path == spec.path, File.blob_id == blob.id
                    )
                )
                if file is None:
                    file = File(
                        repo_id=repo_id,
                        blob_id=blob.id,
                        path=spec.path,
                        size=spec.size,
                        lfs=spec.lfs,
                        sha256=spec.sha256 or blob.sha256,
                        git_blob_id=spec.git_blob_id,
                        sha1=blob.sha1,
                    )
                    session.add(file)
                    session.flush()
                    new_file_ids.append(file.id)
                file_ids.append(file.id)
                session.add(SnapshotFile(snapshot_id=snapshot.id, file_id=file.id))
            removed = self._supersede_older(session, repo, snapshot.id, set(file_ids))
            for file_id in file_ids:
                self._ensure_frontier(session, repo, file_id, now)
            linked = len(file_ids) - len(new_file_ids)
            repo.head_commit = commit
            repo.poll_state = POLL_OK
            repo.poll_error = repo.poll_hint = repo.poll_error_class = None
            repo.next_poll_at = None
            self._end_poll_streak(repo)
            session.flush()
            self._maybe_finish_snapshot(session, repo, snapshot, now)
            return SnapshotResult(snapshot.id, True, len(new_file_ids), linked, removed)

    def refuse_snapshot(self, repo_id: int, commit: str, reason: str, hint: str) -> None:
        """Record that the head *commit* was refused (hostile or broken listing) and block the poll.

        The head is remembered so an unchanged head is not listed again; a new commit is.
        """
        reason, hint = safe_text(reason), safe_text(hint)
        now = utcnow()
        with self._write() as session:
            repo = session.get(Repo, repo_id)
            if repo is None:
                raise CatalogueError(f"repo {repo_id} does not exist")
            snapshot = session.scalar(
                select(Snapshot).where(Snapshot.repo_id == repo_id, Snapshot.commit == commit)
            )
            if snapshot is None:
                session.add(
                    Snapshot(
                        repo_id=repo_id, commit=commit, state=SNAPSHOT_REFUSED, reason=reason, seen_at=now
                    )
                )
            else:
                snapshot.state = SNAPSHOT_REFUSED
                snapshot.reason = reason
            repo.head_commit = commit
            self._enqueue(
                session, repo, "blocked", {"hop": "poll", "path": None, "error": reason, "hint": hint}, now
            )
            repo.poll_state = POLL_BLOCKED
            repo.poll_error = reason
            repo.poll_error_class = ErrorClass.HOSTILE
            repo.poll_hint = hint
            repo.next_poll_at = None

    def _find_or_create_blob(self, session: Session, spec: FileSpec) -> Blob:
        blob: Blob | None = None
        if spec.sha256:
            blob = session.scalar(select(Blob).where(Blob.sha256 == spec.sha256))
        elif spec.git_blob_id:
            blob = session.scalar(select(Blob).where(Blob.git_blob_id == spec.git_blob_id).limit(1))
        if blob is None:
            blob = Blob(
                sha256=spec.sha256, git_blob_id=None if spec.lfs else spec.git_blob_id, size=spec.size
            )
            session.add(blob)
            session.flush()
        return blob

    def _supersede_older(self, session: Session, repo: Repo, keep_snapshot: int, keep_files: set[int]) -> int:
        """Supersede the repo's other active snapshots; drop unstarted work on files no longer present.

        Return how many files of the previous head are gone from the new one.
        """
        older = list(
            session.scalars(
                select(Snapshot).where(
                    Snapshot.repo_id == repo.id,
                    Snapshot.id != keep_snapshot,
                    Snapshot.state == SNAPSHOT_ACTIVE,
                )
            )
        )
        previous = session.scalar(
            select(Snapshot)
            .where(Snapshot.repo_id == repo.id, Snapshot.id != keep_snapshot)
            .order_by(Snapshot.id.desc())
            .limit(1)
        )
        removed = 0
        if previous is not None:
            previous_files = set(
                session.scalars(select(SnapshotFile.file_id).where(SnapshotFile.snapshot_id == previous.id))
            )
            removed = len(previous_files - keep_files)
        for snapshot in older:
            snapshot.state = SNAPSHOT_SUPERSEDED
            stale_files = select(SnapshotFile.file_id).where(
                SnapshotFile.snapshot_id == snapshot.id, SnapshotFile.file_id.not_in(keep_files or {-1})
            )
            stale = select(Transfer.id).where(
                Transfer.file_id.in_(stale_files), Transfer.state.in_((PENDING, WAITING, BLOCKED))
            )
            stale_ids = list(session.scalars(stale))
            if stale_ids:
                session.execute(delete(Piece).where(Piece.transfer_id.in_(stale_ids)))
                session.execute(delete(Transfer).where(Transfer.id.in_(stale_ids)))
            session.execute(
                delete(Transfer).where(Transfer.snapshot_id == snapshot.id, Transfer.state != RUNNING)
            )
        return removed

    def _ensure_frontier(self, session: Session, repo: Repo, file_id: int, now: datetime) -> bool:
        """Make sure the file's next needed transfer exists; return True if one was created."""
        route = list(repo.route)
        done_hops = {
            hop: state
            for hop, state in session.execute(
                select(Transfer.hop, Transfer.state).where(Transfer.file_id == file_id)
            )
        }
        for step, hop in enumerate(route):
            state = done_hops.get(hop)
            if state == DONE:
                continue
            if state is not None:
                return False
            file = session.get(File, file_id)
            assert file is not None  # noqa: S101 - file_id comes from this transaction
            if step == 0 and self._reuse_drive_copy(session, repo, file, now):
                done_hops.update(dict.fromkeys(route[:2], DONE))
                continue
            session.add(
                Transfer(
                    repo_id=repo.id,
                    file_id=file_id,
                    hop=hop,
                    step=step,
                    state=PENDING,
                    bytes_total=file.size,
                    created_at=now,
                    updated_at=now,
                    handles={},
                )
            )
            session.flush()
            return True
        return False

    def _reuse_drive_copy(self, session: Session, repo: Repo, file: File, now: datetime) -> bool:
        """Record the route's first two hops (to staging, to the drive) as done by a verified drive copy
        of the file's content (another file's done transfer to the drive), when it is no longer staged
        and the route reads the drive next; return False, recording nothing, when there is no such
        copy."""
        if not self.rules.reuses_drive_copy(repo.route):
            return False
        to_staging, to_drive = repo.route[:2]
        drive_hops = [hop for hop, kind in self.rules.produces.items() if kind == DRIVE]
        blob = session.get(Blob, file.blob_id)
        if blob is None or not blob.sha256 or not blob.sha1 or blob.staged_path:
            return False
        copy = session.scalar(
            select(Transfer.handles)
            .join(File, File.id == Transfer.file_id)
            .where(
                File.blob_id == blob.id,
                File.id != file.id,
                Transfer.hop.in_(drive_hops),
                Transfer.state == DONE,
            )
            .order_by(Transfer.finished_at.desc())
            .limit(1)
        )
        if not copy or not copy.get("file_id"):
            return False
        reason = f"reused drive copy of {blob.sha256}"
        reused = {"reused": True, "reason": reason}
        drive = {key: copy.get(key) for key in DRIVE_HANDLES}
        handles = {to_staging: reused, to_drive: {**drive, **reused}}
        for step, hop in enumerate((to_staging, to_drive)):
            session.add(
                Transfer(
                    repo_id=repo.id,
                    file_id=file.id,
                    hop=hop,
                    step=step,
                    state=DONE,
                    bytes_total=file.size,
                    bytes_done=file.size,
                    created_at=now,
                    updated_at=now,
                    finished_at=now,
                    handles=handles[hop],
                )
            )
        session.flush()
        log.info("%s: %s: %s", repo.name, file.path, reason)
        return True

    def fetch_again(self, transfer_id: int, reason: str) -> None:
        """The drive copy the file of *transfer_id* reused is gone: forget the file's transfers after
        the first hop (this one included) and run its first hop (download) again."""
        now = utcnow()
        with self._write() as session:
            transfer = session.get(Transfer, transfer_id)
            if transfer is None or transfer.file_id is None:
                return
            repo = session.get(Repo, transfer.repo_id)
            assert repo is not None  # noqa: S101 - enforced by the foreign key
            later = select(Transfer.id).where(
                Transfer.file_id == transfer.file_id, Transfer.hop != repo.route[0]
            )
            later_ids = list(session.scalars(later))
            session.execute(delete(Piece).where(Piece.transfer_id.in_(later_ids)))
            session.execute(delete(Transfer).where(Transfer.id.in_(later_ids)))
            session.execute(
                update(Transfer)
                .where(Transfer.file_id == transfer.file_id, Transfer.hop == repo.route[0])
                .values(
                    state=PENDING,
                    bytes_done=0,
                    attempts=0,
                    handles={"not_reused": reason},
                    finished_at=None,
                    next_attempt_at=None,
                    updated_at=now,
                )
            )

    def _maybe_finish_snapshot(self, session: Session, repo: Repo, snapshot: Snapshot, now: datetime) -> None:
        """Start (or record) the end of a snapshot once every file reached the route's last hop."""
        if snapshot.state != SNAPSHOT_ACTIVE:
            return
        last_hop = repo.route[-1]
        members = select(SnapshotFile.file_id).where(SnapshotFile.snapshot_id == snapshot.id)
        done_count = session.scalar(
            select(func.count())
            .select_from(Transfer)
            .where(Transfer.file_id.in_(members), Transfer.hop == last_hop, Transfer.state == DONE)
        )
        if done_count != snapshot.file_count:
            return
        if last_hop in self.rules.finishes_snapshot:
            exists = session.scalar(
                select(Transfer.id).where(Transfer.snapshot_id == snapshot.id, Transfer.hop == last_hop)
            )
            if exists is None:
                session.add(
                    Transfer(
                        repo_id=repo.id,
                        snapshot_id=snapshot.id,
                        hop=last_hop,
                        step=len(repo.route) - 1,
                        state=PENDING,
                        bytes_total=0,
                        created_at=now,
                        updated_at=now,
                        handles={},
                    )
                )
            return
        snapshot.state = SNAPSHOT_DONE
        snapshot.done_at = now
        self._notify_snapshot_done(session, repo, snapshot, {}, now)

    # -- notifications -----------------------------------------------------------------------------

    def _enqueue(
        self, session: Session, repo: Repo, kind: str, payload: dict[str, Any], now: datetime
    ) -> None:
        """Queue a webhook notification for each URL that wants it (the repo's own and the global ones)."""
        urls = list(dict.fromkeys([*(repo.options or {}).get("webhooks", []), *self.webhooks]))
        for url in urls:
            session.add(
                Notification(
                    repo_id=repo.id,
                    kind=kind,
                    payload={
                        "url": url,
                        "body": {"event": kind, "repo": repo.name, "at": now.isoformat(), **payload},
                    },
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )

    def _notify_snapshot_done(
        self, session: Session, repo: Repo, snapshot: Snapshot, handles: dict[str, Any], now: datetime
    ) -> None:
        self._enqueue(
            session,
            repo,
            "snapshot_done",
            {
                "commit": snapshot.commit,
                "files": snapshot.file_count,
                "bytes": snapshot.total_bytes,
                "route": list(repo.route),
                "destination": handles,
            },
            now,
        )

    def surface_stuck(self, cutoff: datetime) -> list[StuckNotice]:
        """Surface every transfer and poll still retrying whose streak of failures began at *cutoff* or
        earlier and was not surfaced yet: mark it and queue one ``stuck`` notification per streak, as for
        a blocked one. Return what was surfaced. Finding nothing costs one read, no write."""
        retrying = (Transfer.state.in_((PENDING, RUNNING, WAITING)), Transfer.surfaced_at.is_(None))
        with self.read() as session:
            transfer_ids = list(
                session.scalars(select(Transfer.id).where(Transfer.failing_since <= cutoff, *retrying))
            )
            repo_ids = list(
                session.scalars(
                    select(Repo.id).where(
                        Repo.poll_failing_since <= cutoff,
                        Repo.poll_surfaced_at.is_(None),
                        Repo.poll_state == POLL_WAITING,
                    )
                )
            )
        if not transfer_ids and not repo_ids:
            return []
        now = utcnow()
        surfaced: list[StuckNotice] = []
        with self._write() as session:
            for transfer_id in transfer_ids:
                # Conditional, so that of daemons sharing the catalogue only one notifies.
                marked = session.execute(
                    update(Transfer)
                    .where(Transfer.id == transfer_id, Transfer.failing_since <= cutoff, *retrying)
                    .values(surfaced_at=now)
                )
                transfer = session.get(Transfer, transfer_id)
                if not marked.rowcount or transfer is None:  # type: ignore[attr-defined]
                    continue
                file = session.get(File, transfer.file_id) if transfer.file_id is not None else None
                surfaced.append(
                    self._notify_stuck(
                        session,
                        transfer.repo_id,
                        hop=transfer.hop,
                        path=file.path if file is not None else None,
                        error=transfer.last_error,
                        error_class=transfer.error_class,
                        attempts=transfer.attempts,
                        failing_since=transfer.failing_since or now,
                        now=now,
                    )
                )
            for repo_id in repo_ids:
                marked = session.execute(
                    update(Repo)
                    .where(
                        Repo.id == repo_id,
                        Repo.poll_failing_since <= cutoff,
                        Repo.poll_surfaced_at.is_(None),
                        Repo.poll_state == POLL_WAITING,
                    )
                    .values(poll_surfaced_at=now)
                )
                repo = session.get(Repo, repo_id)
                if not marked.rowcount or repo is None:  # type: ignore[attr-defined]
                    continue
                surfaced.append(
                    self._notify_stuck(
                        session,
                        repo_id,
                        hop=None,
                        path=None,
                        error=repo.poll_error,
                        error_class=repo.poll_error_class,
                        attempts=repo.poll_attempts,
                        failing_since=repo.poll_failing_since or now,
                        now=now,
                    )
                )
        return surfaced

    def _notify_stuck(
        self,
        session: Session,
        repo_id: int,
        *,
        hop: str | None,
        path: str | None,
        error: str | None,
        error_class: str | None,
        attempts: int,
        failing_since: datetime,
        now: datetime,
    ) -> StuckNotice:
        repo = session.get(Repo, repo_id)
        assert repo is not None  # noqa: S101 - enforced by the foreign key
        notice = StuckNotice(
            repo=repo.name,
            hop=hop,
            path=path,
            error=error,
            error_class=error_class,
            attempts=attempts,
            failing_since=failing_since,
            hint=stuck_hint(error_class),
        )
        self._enqueue(
            session,
            repo,
            "stuck",
            {
                "hop": hop or "poll",
                "path": path,
                "error": error,
                "error_class": error_class,
                "attempts": attempts,
                "failing_since": failing_since.isoformat(),
                "hint": notice.hint,
            },
            now,
        )
        return notice

    def due_notifications(self, limit: int = 50) -> list[Notification]:
        """Return undelivered notifications whose time has come."""
        with self.read() as session:
            return list(
                session.scalars(
                    select(Notification)
                    .where(Notification.delivered_at.is_(None), Notification.next_attempt_at <= utcnow())
                    .order_by(Notification.id)
                    .limit(limit)
                )
            )

    def notification_result(
        self,
        notification_id: int,
        *,
        delivered: bool,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> None:
        """Record a delivery attempt: delivered, retry at *retry_at*, or given up (retry_at None)."""
        now = utcnow()
        error = safe_optional(error)
        with self._write() as session:
            values: dict[str, Any] = {"attempts": Notification.attempts + 1, "last_error": error}
            if delivered or retry_at is None:
                values["delivered_at"] = now
                values["next_attempt_at"] = None
            else:
                values["next_attempt_at"] = retry_at
            session.execute(update(Notification).where(Notification.id == notification_id).values(**values))

    # -- the engine --------------------------------------------------------------------------------

    def reset_orphaned(self) -> int:
        """Put every `running` transfer back to pending (the single daemon of a SQLite catalogue
        calls this at start: whoever held them is dead). Return how many."""
        with self._write() as session:
            result = session.execute(
                update(Transfer)
                .where(Transfer.state == RUNNING)
                .values(state=PENDING, lease_owner=None, lease_expires_at=None, updated_at=utcnow())
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def claim(
        self,
        hop: str,
        owner: str,
        lease: float,
        *,
        exclude: Iterable[int] = (),
        smaller_than: int | None = None,
    ) -> Transfer | None:
        """Claim one runnable transfer of *hop* for *owner* with a lease; return it or None.

        Runnable: pending, or waiting whose time has come, or running with an expired lease (its
        worker died), in a repo that is not paused. *smaller_than*: only a transfer of fewer bytes.
        The largest runnable transfer comes first (then the oldest): the slowest hop then ends on small
        files, so little of the route is left after it (a large file last would still have to go
        through every later hop alone).
        """
        now = utcnow()
        with self._write() as session:
            query = (
                select(Transfer.id)
                .join(Repo, Repo.id == Transfer.repo_id)
                .where(
                    Transfer.hop == hop,
                    *_runnable(now),
                )
                .order_by(Transfer.bytes_total.desc(), Transfer.id)
                .limit(1)
            )
            excluded = list(exclude)
            if excluded:
                query = query.where(Transfer.id.not_in(excluded))
            if smaller_than is not None:
                query = query.where(Transfer.bytes_total < smaller_than)
            if self._skip_locked:
                query = query.with_for_update(of=Transfer, skip_locked=True)
            transfer_id = session.scalar(query)
            if transfer_id is None:
                return None
            transfer = session.get(Transfer, transfer_id)
            assert transfer is not None  # noqa: S101 - selected in this transaction
            if transfer.state == RUNNING:
                log.info(
                    "transfer %s: the lease of %s expired; taking it over", transfer.id, transfer.lease_owner
                )
            transfer.state = RUNNING
            transfer.lease_owner = owner
            transfer.lease_expires_at = now + timedelta(seconds=lease)
            transfer.attempts += 1
            transfer.started_at = transfer.started_at or now
            transfer.updated_at = now
            transfer.rate = None
            return transfer

    def runnable_hops(self) -> dict[str, int]:
        """Return the hops that have a transfer claimable now, each with the furthest position in its
        repo's route among them (0: the first hop). A cheap read, so an idle daemon never takes the
        write lock just to find nothing."""
        now = utcnow()
        with self.read() as session:
            rows = session.execute(
                select(Transfer.hop, func.max(Transfer.step))
                .join(Repo, Repo.id == Transfer.repo_id)
                .where(
                    *_runnable(now),
                )
                .group_by(Transfer.hop)
            ).all()
        return {hop: int(step) for hop, step in rows}

    def repos_fingerprint(self) -> tuple[Any, ...]:
        """Return a value that changes whenever a repo is added, removed, changed or asks for a poll."""
        with self.read() as session:
            row = session.execute(
                select(func.count(Repo.id), func.max(Repo.updated_at), func.max(Repo.next_poll_at))
            ).one()
        return tuple(row)

    def renew_leases(self, owner: str, transfer_ids: Sequence[int], lease: float) -> set[int]:
        """Extend our leases; return the ids we no longer own."""
        if not transfer_ids:
            return set()
        with self._write() as session:
            session.execute(
                update(Transfer)
                .where(
                    Transfer.id.in_(transfer_ids), Transfer.lease_owner == owner, Transfer.state == RUNNING
                )
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease))
            )
            owned = set(
                session.scalars(
                    select(Transfer.id).where(Transfer.id.in_(transfer_ids), Transfer.lease_owner == owner)
                )
            )
            return set(transfer_ids) - owned

    def load_job(self, transfer_id: int) -> JobData:
        """Return what a hop needs to run this transfer, as plain records."""
        with self.read() as session:
            transfer = session.get(Transfer, transfer_id)
            if transfer is None:
                raise CatalogueError(f"transfer {transfer_id} does not exist")
            repo = session.get(Repo, transfer.repo_id)
            assert repo is not None  # noqa: S101 - enforced by the foreign key
            file: FileInfo | None = None
            locations: dict[str, Handles] = {}
            commit = ""
            if transfer.file_id is not None:
                file = self._file_info(session, transfer.file_id)
                locations = self._locations(session, transfer.file_id)
                commit = (
                    session.scalar(
                        select(Snapshot.commit)
                        .join(SnapshotFile, SnapshotFile.snapshot_id == Snapshot.id)
                        .where(SnapshotFile.file_id == transfer.file_id)
                        .order_by(Snapshot.id.desc())
                        .limit(1)
                    )
                    or ""
                )
            pieces = tuple(
                PieceSpec(p.idx, p.offset, p.length, p.done)
                for p in session.scalars(
                    select(Piece).where(Piece.transfer_id == transfer_id).order_by(Piece.idx)
                )
            )
            snapshot: SnapshotInfo | None = None
            members: list[SnapshotMember] = []
            previous_handles: Handles | None = None
            if transfer.snapshot_id is not None:
                row = session.get(Snapshot, transfer.snapshot_id)
                if row is not None:
                    snapshot = SnapshotInfo(row.id, row.commit)
                    commit = row.commit
                member_ids = list(
                    session.scalars(
                        select(SnapshotFile.file_id).where(SnapshotFile.snapshot_id == transfer.snapshot_id)
                    )
                )
                members = [
                    SnapshotMember(self._file_info(session, file_id), self._locations(session, file_id))
                    for file_id in member_ids
                ]
                members.sort(key=lambda member: member.file.path)
                previous_handles = session.scalar(
                    select(Transfer.handles)
                    .where(
                        Transfer.repo_id == repo.id,
                        Transfer.hop == transfer.hop,
                        Transfer.snapshot_id.is_not(None),
                        Transfer.state == DONE,
                        Transfer.id != transfer.id,
                    )
                    .order_by(Transfer.finished_at.desc())
                    .limit(1)
                )
            return JobData(
                transfer_id=transfer.id,
                hop=transfer.hop,
                attempts=transfer.attempts,
                handles=dict(transfer.handles or {}),
                repo=_repo_info(repo),
                commit=commit or repo.head_commit or "",
                file=file,
                pieces=pieces,
                locations=locations,
                snapshot=snapshot,
                snapshot_files=tuple(members),
                previous_snapshot_handles=dict(previous_handles) if previous_handles is not None else None,
            )

    @staticmethod
    def _file_info(session: Session, file_id: int) -> FileInfo:
        file = session.get(File, file_id)
        assert file is not None  # noqa: S101 - enforced by the foreign key
        blob = session.get(Blob, file.blob_id)
        assert blob is not None  # noqa: S101 - enforced by the foreign key
        return _file_info(file, blob)

    @staticmethod
    def _locations(session: Session, file_id: int) -> dict[str, Handles]:
        rows = session.execute(
            select(Transfer.hop, Transfer.handles).where(Transfer.file_id == file_id, Transfer.state == DONE)
        )
        return {hop: dict(handles or {}) for hop, handles in rows}

    def record_plan(self, transfer_id: int, pieces: Sequence[PieceSpec], bytes_total: int) -> None:
        """Replace the transfer's pieces with *pieces* (a fresh plan)."""
        now = utcnow()
        with self._write() as session:
            session.execute(delete(Piece).where(Piece.transfer_id == transfer_id))
            session.add_all(
                Piece(
                    transfer_id=transfer_id,
                    idx=p.index,
                    offset=p.offset,
                    length=p.length,
                    done=p.done,
                    sends=0,
                    done_at=now if p.done else None,
                )
                for p in pieces
            )
            done = sum(p.length for p in pieces if p.done)
            session.execute(
                update(Transfer)
                .where(Transfer.id == transfer_id)
                .values(bytes_total=bytes_total, bytes_done=done, updated_at=now)
            )

    def reset_pieces(self, transfer_id: int, indices: Sequence[int] | None = None) -> None:
        """Mark the pieces (all when *indices* is None) as not done, e.g. after a failed verification."""
        with self._write() as session:
            query = update(Piece).where(Piece.transfer_id == transfer_id)
            if indices is not None:
                query = query.where(Piece.idx.in_(indices))
            session.execute(query.values(done=False, done_at=None))
            self._refresh_bytes_done(session, transfer_id)

    def piece_started(self, transfer_id: int, index: int, *, moved: int = 0) -> None:
        """Count one more send of the piece (for 'moved at most N times' checks); its bytes are counted
        from zero. *moved*: bytes of the piece's previous send not counted yet (they count now)."""
        with self._write() as session:
            session.execute(
                update(Piece)
                .where(Piece.transfer_id == transfer_id, Piece.idx == index)
                .values(sends=Piece.sends + 1, moved=0)
            )
            hop = self._count_moved(session, transfer_id, moved, {})
        self._counted(hop, moved)

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
        """Record that the pieces are durable at the destination, and count *moved* payload bytes
        (*by_piece*: those of each piece's latest send) and the current *rate* in the same transaction.

        *sent_before*: pieces among them whose latest send was begun by an earlier attempt (a process
        that died, or failed, before it recorded them): the destination holds them, so that send
        completed and counts up to its length (the part counted already is not counted again).
        """
        with self._write() as session:
            if sent_before:
                rest = session.scalar(
                    select(func.coalesce(func.sum(Piece.length - Piece.moved), 0)).where(
                        Piece.transfer_id == transfer_id,
                        Piece.idx.in_(sent_before),
                        Piece.done.is_(False),
                        Piece.sends > 0,
                        Piece.moved < Piece.length,
                    )
                )
                session.execute(
                    update(Piece)
                    .where(Piece.transfer_id == transfer_id, Piece.idx.in_(sent_before), Piece.sends > 0)
                    .values(moved=Piece.length)
                )
                moved += int(rest or 0)
            session.execute(
                update(Piece)
                .where(Piece.transfer_id == transfer_id, Piece.idx.in_(indices))
                .values(done=True, done_at=utcnow())
            )
            session.execute(update(Transfer).where(Transfer.id == transfer_id).values(rate=rate))
            hop = self._count_moved(session, transfer_id, moved, by_piece or {})
            self._refresh_bytes_done(session, transfer_id)
        self._counted(hop, moved)

    @staticmethod
    def _count_moved(
        session: Session, transfer_id: int, moved: int, by_piece: Mapping[int, int]
    ) -> str | None:
        """Add *moved* to the transfer's bytes_moved and *by_piece* to each piece's current send; return
        the transfer's hop when bytes were counted (for ``_counted`` once the transaction is committed)."""
        hop = None
        if moved:
            hop = session.execute(
                update(Transfer)
                .where(Transfer.id == transfer_id)
                .values(bytes_moved=Transfer.bytes_moved + moved)
                .returning(Transfer.hop)
            ).scalar_one_or_none()
        for index, count in by_piece.items():
            session.execute(
                update(Piece)
                .where(Piece.transfer_id == transfer_id, Piece.idx == index)
                .values(moved=Piece.moved + count)
            )
        return hop

    def _counted(self, hop: str | None, moved: int) -> None:
        """Tell ``on_moved`` (the process's metrics) of bytes counted in a committed transaction."""
        if hop is not None and moved and self.on_moved is not None:
            self.on_moved(hop, moved)

    @staticmethod
    def _refresh_bytes_done(session: Session, transfer_id: int) -> None:
        done = select(func.coalesce(func.sum(Piece.length), 0)).where(
            Piece.transfer_id == transfer_id, Piece.done.is_(True)
        )
        session.execute(
            update(Transfer)
            .where(Transfer.id == transfer_id)
            .values(bytes_done=done.scalar_subquery(), updated_at=utcnow())
        )

    def progress(
        self,
        transfer_id: int,
        *,
        moved: int,
        rate: float | None,
        bytes_done: int | None = None,
        by_piece: Mapping[int, int] | None = None,
    ) -> None:
        """Add *moved* bytes to the transfer's traffic (*by_piece*: those of each piece's latest send)
        and record its current rate (for status)."""
        values: dict[str, Any] = {"rate": rate, "updated_at": utcnow()}
        if bytes_done is not None:
            values["bytes_done"] = bytes_done
        with self._write() as session:
            session.execute(update(Transfer).where(Transfer.id == transfer_id).values(**values))
            hop = self._count_moved(session, transfer_id, moved, by_piece or {})
        self._counted(hop, moved)

    def save_handles(self, transfer_id: int, handles: dict[str, Any]) -> None:
        """Persist the transfer's remote handles (upload ids, file ids) before they are relied on."""
        with self._write() as session:
            session.execute(
                update(Transfer)
                .where(Transfer.id == transfer_id)
                .values(handles=handles, updated_at=utcnow())
            )

    def complete(
        self,
        transfer_id: int,
        owner: str,
        handles: dict[str, Any],
        *,
        sha256: str | None = None,
        sha1: str | None = None,
        staged_path: str | None = None,
    ) -> list[StagedBlob]:
        """Mark the transfer verified and done, start the next hop, and finish the snapshot if this
        was its last piece of work. Return staged copies that no hop needs any more.

        Raise LeaseLost if another worker took the transfer over meanwhile.
        """
        now = utcnow()
        with self._write() as session:
            transfer = session.get(Transfer, transfer_id)
            if transfer is None:
                raise LeaseLost(f"transfer {transfer_id} no longer exists")
            if transfer.lease_owner != owner or transfer.state != RUNNING:
                raise LeaseLost(f"transfer {transfer_id} is now held by {transfer.lease_owner or 'nobody'}")
            repo = session.get(Repo, transfer.repo_id)
            assert repo is not None  # noqa: S101 - enforced by the foreign key
            transfer.state = DONE
            transfer.bytes_done = transfer.bytes_total
            transfer.handles = handles
            transfer.finished_at = now
            transfer.updated_at = now
            transfer.lease_owner = None
            transfer.lease_expires_at = None
            transfer.last_error = transfer.error_class = transfer.hint = None
            transfer.next_attempt_at = None
            transfer.failing_since = transfer.surfaced_at = None
            transfer.rate = None
            session.execute(update(Piece).where(Piece.transfer_id == transfer_id).values(done=True))
            if transfer.snapshot_id is not None:
                snapshot = session.get(Snapshot, transfer.snapshot_id)
                if snapshot is not None and snapshot.state == SNAPSHOT_ACTIVE:
                    snapshot.state = SNAPSHOT_DONE
                    snapshot.done_at = now
                    self._notify_snapshot_done(session, repo, snapshot, handles, now)
                return []
            assert transfer.file_id is not None  # noqa: S101 - a transfer has a file or a snapshot
            file = session.get(File, transfer.file_id)
            assert file is not None  # noqa: S101 - enforced by the foreign key
            blob = session.get(Blob, file.blob_id)
            assert blob is not None  # noqa: S101 - enforced by the foreign key
            if sha256 or sha1 or staged_path:
                self._update_content(
                    session, file, blob, sha256=sha256, sha1=sha1, staged_path=staged_path, now=now
                )
            live = self._live_snapshots(session, file.id)
            if live:
                self._ensure_frontier(session, repo, file.id, now)
                session.flush()
                for snapshot in live:
                    self._maybe_finish_snapshot(session, repo, snapshot, now)
            return self._releasable(session, blob)

    @staticmethod
    def _live_snapshots(session: Session, file_id: int) -> list[Snapshot]:
        return list(
            session.scalars(
                select(Snapshot)
                .join(SnapshotFile, SnapshotFile.snapshot_id == Snapshot.id)
                .where(SnapshotFile.file_id == file_id, Snapshot.state == SNAPSHOT_ACTIVE)
            )
        )

    @staticmethod
    def _update_content(
        session: Session,
        file: File,
        blob: Blob,
        *,
        sha256: str | None,
        sha1: str | None,
        staged_path: str | None,
        now: datetime,
    ) -> None:
        if sha256 and blob.sha256 is None:
            twin = session.scalar(select(Blob).where(Blob.sha256 == sha256))
            if twin is not None and twin.id != blob.id:
                # Same content arrived earlier under another identity: keep one blob.
                session.execute(update(File).where(File.blob_id == blob.id).values(blob_id=twin.id))
                file.blob_id = twin.id
                blob = twin
            else:
                blob.sha256 = sha256
        if sha1:
            blob.sha1 = sha1
        if staged_path:
            blob.staged_path = staged_path
            blob.staged_at = now
        values: dict[str, Any] = {}
        if sha256:
            values["sha256"] = sha256
        if sha1:
            values["sha1"] = sha1
        if values:
            session.execute(update(File).where(File.blob_id == blob.id).values(**values))

    def _releasable(self, session: Session, blob: Blob) -> list[StagedBlob]:
        """Return the blob's staged copy if no hop of any live file still needs to read it."""
        if not blob.staged_path:
            return []
        readers = self.rules.reads_staging | self.rules.writes_staging
        files = session.execute(
            select(File.id, Repo.route).join(Repo, Repo.id == File.repo_id).where(File.blob_id == blob.id)
        ).all()
        for file_id, route in files:
            if route and route[-1] in self.rules.writes_staging:
                return []  # a mirror route: staging is the destination
            if not self._live_snapshots(session, file_id):
                continue
            states: dict[str, str] = {
                hop: state
                for hop, state in session.execute(
                    select(Transfer.hop, Transfer.state).where(Transfer.file_id == file_id)
                ).all()
            }
            for step, hop in enumerate(route):
                unneeded = self.rules.staging_unneeded_after.get(hop, frozenset())
                if unneeded.intersection(route[:step]):
                    continue
                if hop in readers and states.get(hop) != DONE:
                    return []
        return [StagedBlob(blob.id, blob.staged_path)]

    def unstage(self, blob_id: int) -> None:
        """Record that the blob's staged copy is gone (call before deleting the file)."""
        with self._write() as session:
            session.execute(update(Blob).where(Blob.id == blob_id).values(staged_path=None, staged_at=None))

    def defer(
        self,
        transfer_id: int,
        owner: str,
        *,
        state: str,
        error: str,
        error_class: ErrorClass,
        hint: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        """Park the transfer as waiting (retry at *next_attempt_at*) or blocked (needs a person); a first
        failure since it last succeeded begins its streak of failures."""
        if state not in (WAITING, BLOCKED):
            raise ValueError(state)
        now = utcnow()
        error, hint = safe_text(error), safe_optional(hint)
        with self._write() as session:
            if state == BLOCKED:
                self._notify_blocked(session, transfer_id, error=error, error_class=error_class, hint=hint)
            parked = session.execute(
                update(Transfer)
                .where(Transfer.id == transfer_id, Transfer.lease_owner == owner)
                .values(
                    state=state,
                    last_error=error,
                    error_class=error_class,
                    hint=hint,
                    next_attempt_at=next_attempt_at,
                    lease_owner=None,
                    lease_expires_at=None,
                    rate=None,
                    updated_at=now,
                )
                .returning(Transfer.hop)
            ).scalar_one_or_none()
            if parked is not None:
                session.execute(
                    update(Transfer)
                    .where(Transfer.id == transfer_id, Transfer.failing_since.is_(None))
                    .values(failing_since=now)
                )
        if parked is not None and self.on_deferred is not None:
            self.on_deferred(parked, state, error_class)

    def _notify_blocked(
        self, session: Session, transfer_id: int, *, error: str, error_class: ErrorClass, hint: str | None
    ) -> None:
        transfer = session.get(Transfer, transfer_id)
        if transfer is None or transfer.state == BLOCKED:
            return
        repo = session.get(Repo, transfer.repo_id)
        if repo is None:
            return
        file = session.get(File, transfer.file_id) if transfer.file_id is not None else None
        self._enqueue(
            session,
            repo,
            "blocked",
            {
                "hop": transfer.hop,
                "path": file.path if file else None,
                "error": error,
                "error_class": error_class,
                "hint": hint,
            },
            utcnow(),
        )

    def release(self, transfer_id: int, owner: str) -> None:
        """Give the transfer back untouched (the daemon is stopping); the attempt does not count."""
        with self._write() as session:
            session.execute(
                update(Transfer)
                .where(Transfer.id == transfer_id, Transfer.lease_owner == owner)
                .values(
                    state=PENDING,
                    lease_owner=None,
                    lease_expires_at=None,
                    attempts=func.max(Transfer.attempts - 1, 0)
                    if is_sqlite(self.url)
                    else func.greatest(Transfer.attempts - 1, 0),
                    rate=None,
                    updated_at=utcnow(),
                )
            )

    # -- control -----------------------------------------------------------------------------------

    def retry(self, repo_name: str | None = None, hop: str | None = None) -> int:
        """Make blocked and waiting transfers (and polls) runnable now, each beginning a new streak of
        failures (attempts from 0); return how many transfers.

        Raise UsageError for an unknown repo.
        """
        now = utcnow()
        with self._write() as session:
            query = update(Transfer).where(Transfer.state.in_((BLOCKED, WAITING)))
            repo_query = update(Repo).where(Repo.poll_state != POLL_OK)
            if repo_name is not None:
                repo_id = session.scalar(select(Repo.id).where(Repo.name == repo_name))
                if repo_id is None:
                    raise UsageError(f"no repo named {repo_name!r} (see `relayctl list`)")
                query = query.where(Transfer.repo_id == repo_id)
                repo_query = repo_query.where(Repo.id == repo_id)
            if hop is not None:
                query = query.where(Transfer.hop == hop)
            result = session.execute(
                query.values(
                    state=PENDING,
                    next_attempt_at=None,
                    attempts=0,
                    failing_since=None,
                    surfaced_at=None,
                    updated_at=now,
                )
            )
            if hop is None:
                session.execute(
                    repo_query.values(
                        next_poll_at=now,
                        poll_attempts=0,
                        poll_failing_since=None,
                        poll_surfaced_at=None,
                        updated_at=now,
                    )
                )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def unblock(self, *, error_class: ErrorClass, hops: Sequence[str]) -> int:
        """Make transfers of *hops* blocked for *error_class* (e.g. a full disk) runnable again."""
        with self._write() as session:
            result = session.execute(
                update(Transfer)
                .where(Transfer.state == BLOCKED, Transfer.error_class == error_class, Transfer.hop.in_(hops))
                .values(state=PENDING, next_attempt_at=None, updated_at=utcnow())
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    # -- service state -----------------------------------------------------------------------------

    def publish(self, key: str, value: dict[str, Any]) -> None:
        """Set a fact the daemon publishes for relayctl (heartbeat, token lifetime, disk budget)."""
        now = utcnow()
        with self._write() as session:
            # One upsert: daemons sharing a catalogue publish the same keys at the same moment.
            insert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
            statement = insert(ServiceState).values(key=key, value=value, updated_at=now)
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=[ServiceState.key], set_={"value": value, "updated_at": now}
                )
            )

    def service_state(self) -> dict[str, tuple[dict[str, Any], datetime]]:
        with self.read() as session:
            return {row.key: (row.value, row.updated_at) for row in session.scalars(select(ServiceState))}
