"""The store's progress layer: a transfer's pieces, its traffic, and its end.

A hop records its plan (the pieces), each piece as it becomes durable at the destination, the bytes it
moved and its rate, and its remote handles before it relies on them. ``complete`` marks a verified
transfer done, records what was learnt of the content (hashes, the staged copy), starts the file's
next hop and ends the snapshot when this was its last work, in one transaction; it returns the staged
copies no hop needs any more (``HopRules.needs_staged_copy``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from relayd.catalogue.schema import (
    DONE,
    RUNNING,
    SNAPSHOT_ACTIVE,
    SNAPSHOT_DONE,
    Blob,
    File,
    Piece,
    Repo,
    Snapshot,
    Transfer,
)
from relayd.catalogue.store.claims import ClaimStore
from relayd.catalogue.store.records import LeaseLost, StagedBlob, TransferGone, utcnow
from relayd.hops.records import PieceSpec


def check_held(session: Session, transfer_id: int, owner: str | None) -> None:
    """Raise LeaseLost unless *owner* (None: nobody checks) still holds the transfer's lease; the row
    stays locked until the transaction ends, so a worker taking it over waits for this write or skips it."""
    if owner is None:
        return
    held = session.execute(
        select(Transfer.lease_owner, Transfer.state).where(Transfer.id == transfer_id).with_for_update()
    ).first()
    if held is None:
        raise TransferGone(f"transfer {transfer_id} no longer exists")
    lease_owner, state = held
    if lease_owner != owner or state != RUNNING:
        raise LeaseLost(f"transfer {transfer_id} is now held by {lease_owner or 'nobody'}")


class ProgressStore(ClaimStore):
    """Pieces, bytes moved, handles, and completing a transfer. A job's writes are checked against the
    lease (``lease_holder``)."""

    def record_plan(self, transfer_id: int, pieces: Sequence[PieceSpec], bytes_total: int) -> None:
        """Replace the transfer's pieces with *pieces* (a fresh plan)."""
        now = utcnow()
        with self._write() as session:
            check_held(session, transfer_id, self.lease_holder)
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
            check_held(session, transfer_id, self.lease_holder)
            query = update(Piece).where(Piece.transfer_id == transfer_id)
            if indices is not None:
                query = query.where(Piece.idx.in_(indices))
            session.execute(query.values(done=False, done_at=None))
            self._refresh_bytes_done(session, transfer_id)

    def piece_started(self, transfer_id: int, index: int, *, moved: int = 0) -> None:
        """Count one more send of the piece (for 'moved at most N times' checks); its bytes are counted
        from zero. *moved*: bytes of the piece's previous send not counted yet (they count now)."""
        with self._write() as session:
            check_held(session, transfer_id, self.lease_holder)
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
            check_held(session, transfer_id, self.lease_holder)
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
            check_held(session, transfer_id, self.lease_holder)
            session.execute(update(Transfer).where(Transfer.id == transfer_id).values(**values))
            hop = self._count_moved(session, transfer_id, moved, by_piece or {})
        self._counted(hop, moved)

    def save_handles(self, transfer_id: int, handles: dict[str, Any]) -> None:
        """Persist the transfer's remote handles (upload ids, file ids) before they are relied on."""
        with self._write() as session:
            check_held(session, transfer_id, self.lease_holder)
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
            check_held(session, transfer_id, owner)
            transfer = session.get(Transfer, transfer_id)
            assert transfer is not None  # noqa: S101 - check_held found it, and holds its row
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
                    session,
                    file,
                    blob,
                    sha256=sha256,
                    sha1=sha1,
                    staged_path=staged_path,
                    staged_on=self.staging_holder,
                    now=now,
                )
            live = self._live_snapshots(session, file.id)
            if live:
                self._ensure_frontier(session, repo, file.id, now)
                session.flush()
                for snapshot in live:
                    self._maybe_finish_snapshot(session, repo, snapshot, now)
            return self._releasable(session, blob)

    @staticmethod
    def _update_content(
        session: Session,
        file: File,
        blob: Blob,
        *,
        sha256: str | None,
        sha1: str | None,
        staged_path: str | None,
        staged_on: str | None,
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
            blob.staged_on = staged_on
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
        files = session.execute(
            select(File.id, Repo.route).join(Repo, Repo.id == File.repo_id).where(File.blob_id == blob.id)
        ).all()
        for file_id, route in files:
            if self.rules.keeps_staged_copy(route):
                return []
            if not self._live_snapshots(session, file_id):
                continue
            states: dict[str, str] = {
                hop: state
                for hop, state in session.execute(
                    select(Transfer.hop, Transfer.state).where(Transfer.file_id == file_id)
                ).all()
            }
            if self.rules.needs_staged_copy(route, states):
                return []
        return [StagedBlob(blob.id, blob.staged_path)]

    def unstage(self, blob_id: int) -> None:
        """Record that the blob's staged copy is gone (call before deleting the file)."""
        with self._write() as session:
            unstaged = {"staged_path": None, "staged_at": None, "staged_on": None}
            session.execute(update(Blob).where(Blob.id == blob_id).values(**unstaged))
