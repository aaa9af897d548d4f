"""The store's claim layer: handing transfers to workers under leases, and what a job needs to run.

A worker claims one runnable transfer of a hop (the largest first) with a lease it renews while it
works; a transfer whose lease expired (its worker died) is runnable again, a daemon starting on a
SQLite catalogue puts every ``running`` transfer back, and a stopping one releases its claims without
counting the attempt. ``load_job`` reads what a hop needs as plain records (``relayd.hops.records``),
so no ORM object crosses the hop contract.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from relayd.catalogue.db import is_sqlite
from relayd.catalogue.schema import (
    DONE,
    PENDING,
    RUNNING,
    WAITING,
    Blob,
    File,
    Piece,
    Repo,
    Snapshot,
    SnapshotFile,
    Transfer,
)
from relayd.catalogue.store.records import utcnow
from relayd.catalogue.store.snapshots import SnapshotStore
from relayd.errors import CatalogueError
from relayd.hops.records import (
    FileInfo,
    Handles,
    JobData,
    PieceSpec,
    RepoInfo,
    SnapshotInfo,
    SnapshotMember,
)

log = logging.getLogger(__name__)


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


def _here(holder: str | None) -> tuple[Any, ...]:
    """The condition of a transfer this daemon may run: one that reads no staged copy, or reads one
    staged by *holder* (None: any, on a catalogue with one daemon)."""
    if holder is None:
        return ()
    return (or_(Transfer.staged_on.is_(None), Transfer.staged_on == holder),)


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


def repo_info(repo: Repo) -> RepoInfo:
    """Return the plain record of *repo* a hop is handed."""
    return RepoInfo(
        name=repo.name,
        repo_type=repo.repo_type,
        revision=repo.revision,
        route=tuple(repo.route),
        destinations=dict(repo.destinations or {}),
        options=dict(repo.options or {}),
    )


class ClaimStore(SnapshotStore):
    """Claims, leases and the jobs handed to hops."""

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
        worker died), in a repo that is not paused; one that reads a staged copy only where it was
        staged (``staging_holder``). *smaller_than*: only a transfer of fewer bytes.
        The largest runnable transfer comes first (then the oldest): the slowest hop then ends on small
        files, so little of the route is left after it (a large file last would still have to go
        through every later hop alone).
        """
        now = utcnow()
        with self._write() as session:
            query = (
                select(Transfer.id, Transfer.state, Transfer.lease_owner)
                .join(Repo, Repo.id == Transfer.repo_id)
                .where(
                    Transfer.hop == hop,
                    *_runnable(now),
                    *_here(self.staging_holder),
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
            found = session.execute(query).first()
            if found is None:
                return None
            transfer_id, state, previous = found
            if state == RUNNING:
                log.info("transfer %s: the lease of %s expired; taking it over", transfer_id, previous)
            # One UPDATE … RETURNING, not a load and a flush: a claim is the engine's hottest write.
            claimed = (
                update(Transfer)
                .where(Transfer.id == transfer_id)
                .values(
                    state=RUNNING,
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease),
                    attempts=Transfer.attempts + 1,
                    started_at=func.coalesce(Transfer.started_at, now),
                    updated_at=now,
                    rate=None,
                )
                .returning(Transfer)
            )
            return session.scalars(claimed, execution_options={"synchronize_session": False}).one()

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
                    *_here(self.staging_holder),
                )
                .group_by(Transfer.hop)
            ).all()
        return {hop: int(step) for hop, step in rows}

    def renew_leases(self, owner: str, transfer_ids: Sequence[int], lease: float) -> set[int]:
        """Extend our leases; return the ids another worker holds now (not one we have just finished,
        parked or released, which nobody holds)."""
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
            return set(
                session.scalars(
                    select(Transfer.id).where(
                        Transfer.id.in_(transfer_ids),
                        Transfer.lease_owner.is_not(None),
                        Transfer.lease_owner != owner,
                    )
                )
            )

    def leases(self, transfer_ids: Collection[int]) -> dict[int, tuple[str, str | None]]:
        """Return each of *transfer_ids* that exists with its state and who holds it: the owner of a
        running transfer's lease while it runs, else None (nobody, or a lease run out). A read, for
        the sweep of abandoned partial downloads (``relayd.partials``)."""
        if not transfer_ids:
            return {}
        now = utcnow()
        with self.read() as session:
            rows = session.execute(
                select(
                    Transfer.id, Transfer.state, Transfer.lease_owner, Transfer.lease_expires_at > now
                ).where(Transfer.id.in_(list(transfer_ids)))
            ).all()
        return {
            transfer_id: (state, owner if state == RUNNING and running else None)
            for transfer_id, state, owner, running in rows
        }

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
                repo=repo_info(repo),
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
