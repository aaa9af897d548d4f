"""The store's snapshot layer: recording what a poll saw, and starting and ending the work on it.

A new head becomes a snapshot linked to its files (a file whose path and content an earlier snapshot
had is linked, not moved again); older unfinished snapshots are superseded and their unstarted work on
files that left is dropped. Each file gets its next transfer (its *frontier*, ``rules.next_step``), the
first two hops done at once when a verified drive copy of its content can stand for them, and a
snapshot ends (or gets the transfer of the hop that commits it) once every file reached the route's
end. A refused head blocks the poll.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from relayd.catalogue.rules import ASKED_END, drive_copy_handles, next_step
from relayd.catalogue.schema import (
    BLOCKED,
    DONE,
    PENDING,
    POLL_BLOCKED,
    POLL_OK,
    RUNNING,
    SNAPSHOT_ACTIVE,
    SNAPSHOT_DONE,
    SNAPSHOT_REFUSED,
    SNAPSHOT_SUPERSEDED,
    WAITING,
    Blob,
    File,
    Piece,
    Repo,
    Snapshot,
    SnapshotFile,
    Transfer,
)
from relayd.catalogue.store.records import FileSpec, SnapshotResult, utcnow
from relayd.catalogue.store.repos import RepoStore
from relayd.errors import CatalogueError, ErrorClass
from relayd.text import safe_text

log = logging.getLogger(__name__)


class SnapshotStore(RepoStore):
    """Snapshots, their files and each file's next transfer."""

    def record_snapshot(
        self, repo_id: int, commit: str, files: Sequence[FileSpec], *, held: Collection[str] = ()
    ) -> SnapshotResult:
        """Record a new head of the repo and its files; start moving what is new.

        Files whose path and content were in an earlier snapshot are linked, not moved again; earlier
        unfinished snapshots are superseded. A new file whose sha256 is in *held* (the route's last hop
        said its destination holds it) skips every hop before the last. Raise CatalogueError on
        duplicate paths.
        """
        paths = [spec.path for spec in files]
        if len(set(paths)) != len(paths):
            raise CatalogueError(f"snapshot {commit} lists a path twice")
        try:
            return self._record_snapshot(repo_id, commit, files, held)
        except IntegrityError:
            # Another worker sharing the catalogue recorded the same head (or content) at the same
            # moment; its transaction won, so ours finds the snapshot there now.
            return self._record_snapshot(repo_id, commit, files, held)

    def _record_snapshot(
        self, repo_id: int, commit: str, files: Sequence[FileSpec], held: Collection[str]
    ) -> SnapshotResult:
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
                self._ensure_frontier(session, repo, file_id, now, held if file_id in new_file_ids else ())
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

    def _ensure_frontier(
        self, session: Session, repo: Repo, file_id: int, now: datetime, held: Collection[str] = ()
    ) -> bool:
        """Make sure the file's next needed transfer exists; return True if one was created. A file
        whose content is in *held* skips every hop before the route's last."""
        route = list(repo.route)
        states = {
            hop: state
            for hop, state in session.execute(
                select(Transfer.hop, Transfer.state).where(Transfer.file_id == file_id)
            )
        }
        step = next_step(route, states)
        if step is None:
            return False
        file = session.get(File, file_id)
        assert file is not None  # noqa: S101 - file_id comes from this transaction
        if step == 0 and file.sha256 in held and len(route) > 1:
            self._skip_to_the_end(session, repo, file, now)
            step = len(route) - 1
        elif step == 0 and self._reuse_drive_copy(session, repo, file, now):
            states.update(dict.fromkeys(route[:2], DONE))
            step = next_step(route, states)
            if step is None:
                return False
        staged_on = None
        if self.rules.reads_staged_copy(route, step):
            # It runs where the copy was staged (docs/sites.md).
            staged_on = session.scalar(select(Blob.staged_on).where(Blob.id == file.blob_id))
        session.add(
            Transfer(
                repo_id=repo.id,
                file_id=file_id,
                hop=route[step],
                step=step,
                state=PENDING,
                bytes_total=file.size,
                staged_on=staged_on,
                created_at=now,
                updated_at=now,
                handles={},
            )
        )
        session.flush()
        return True

    def _skip_to_the_end(self, session: Session, repo: Repo, file: File, now: datetime) -> None:
        """Record every hop before the route's last as done for *file* without moving it: the
        destination holds its content ("ask the end first"; the last hop checks it again)."""
        _done_without_moving(session, repo, file, {hop: dict(ASKED_END) for hop in repo.route[:-1]}, now)
        log.info(
            "%s: %s: the destination has it; skipped on %s", repo.name, file.path, ",".join(repo.route[:-1])
        )

    def _reuse_drive_copy(self, session: Session, repo: Repo, file: File, now: datetime) -> bool:
        """Record the route's first two hops (to staging, to the drive) as done by a verified drive copy
        of the file's content (another file's done transfer to the drive), when it is no longer staged
        and the route reads the drive next; return False, recording nothing, when there is no such
        copy."""
        if not self.rules.reuses_drive_copy(repo.route):
            return False
        blob = session.get(Blob, file.blob_id)
        if blob is None or not blob.sha256 or not blob.sha1 or blob.staged_path:
            return False
        copy = session.scalar(
            select(Transfer.handles)
            .join(File, File.id == Transfer.file_id)
            .where(
                File.blob_id == blob.id,
                File.id != file.id,
                Transfer.hop.in_(self.rules.drive_hops()),
                Transfer.state == DONE,
            )
            .order_by(Transfer.finished_at.desc())
            .limit(1)
        )
        if not copy or not copy.get("file_id"):
            return False
        reason, handles = drive_copy_handles(repo.route, blob.sha256, copy)
        _done_without_moving(session, repo, file, {hop: handles[hop] for hop in repo.route[:2]}, now)
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
        finisher = self.rules.snapshot_finisher(repo.route)
        if finisher is not None:
            exists = session.scalar(
                select(Transfer.id).where(Transfer.snapshot_id == snapshot.id, Transfer.hop == finisher)
            )
            if exists is None:
                session.add(
                    Transfer(
                        repo_id=repo.id,
                        snapshot_id=snapshot.id,
                        hop=finisher,
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

    @staticmethod
    def _live_snapshots(session: Session, file_id: int) -> list[Snapshot]:
        return list(
            session.scalars(
                select(Snapshot)
                .join(SnapshotFile, SnapshotFile.snapshot_id == Snapshot.id)
                .where(SnapshotFile.file_id == file_id, Snapshot.state == SNAPSHOT_ACTIVE)
            )
        )


def _done_without_moving(
    session: Session, repo: Repo, file: File, handles: dict[str, dict[str, Any]], now: datetime
) -> None:
    """Record the route's first hops (the keys of *handles*, in route order) as done for *file*
    without moving a byte: what they would have made exists already, as their *handles* say."""
    for step, (hop, hop_handles) in enumerate(handles.items()):
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
                handles=hop_handles,
            )
        )
    session.flush()
