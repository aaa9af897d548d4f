"""Watching the route sandbox's daemon from a test: wait for a condition (with the daemon log's tail in
the failure), and read its catalogue."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from relayd.catalogue.schema import RUNNING, Piece, Snapshot, Transfer
from relayd.catalogue.store import Store
from relayd_sandbox.route import RouteSandbox


def wait_for(condition: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-5000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


class Catalogue:
    """Read-only views of the sandbox daemon's catalogue."""

    def __init__(self, box: RouteSandbox) -> None:
        self.store = Store(f"sqlite:///{box.root / 'state' / 'catalogue.db'}")

    def snapshot_done(self, commit: str) -> bool:
        with self.store.read() as session:
            state = session.scalar(select(Snapshot.state).where(Snapshot.commit == commit))
        return state == "done"

    def progress(self, commit: str) -> float:
        """The share of the route's bytes done for the snapshot *commit* (every file × every hop)."""
        with self.store.read() as session:
            snapshot = session.scalar(select(Snapshot).where(Snapshot.commit == commit))
            if snapshot is None or not snapshot.total_bytes:
                return 0.0
            done = session.scalar(
                select(func.coalesce(func.sum(Transfer.bytes_done), 0)).where(
                    Transfer.repo_id == snapshot.repo_id, Transfer.file_id.is_not(None)
                )
            )
        return float(done or 0) / (4 * snapshot.total_bytes)

    def in_flight(self) -> set[tuple[int, int]]:
        """The pieces begun and not yet done: (transfer id, piece index)."""
        with self.store.read() as session:
            rows = session.execute(
                select(Piece.transfer_id, Piece.idx).where(Piece.sends >= 1, Piece.done.is_(False))
            ).all()
        return {(transfer_id, idx) for transfer_id, idx in rows}

    def transfers(self) -> list[Transfer]:
        with self.store.read() as session:
            return list(session.scalars(select(Transfer).order_by(Transfer.id)))

    def pieces(self) -> list[Piece]:
        with self.store.read() as session:
            return list(session.scalars(select(Piece)))

    def unfinished(self) -> dict[tuple[int, int], int]:
        """The pieces not yet done of the transfers running now: (transfer id, piece index) → sends."""
        with self.store.read() as session:
            rows = session.execute(
                select(Piece.transfer_id, Piece.idx, Piece.sends)
                .join(Transfer, Transfer.id == Piece.transfer_id)
                .where(Transfer.state == RUNNING, Piece.done.is_(False))
            ).all()
        return {(transfer_id, idx): sends for transfer_id, idx, sends in rows}

    def bytes_moved(self, hop: str) -> int:
        with self.store.read() as session:
            return int(
                session.scalar(
                    select(func.coalesce(func.sum(Transfer.bytes_moved), 0)).where(Transfer.hop == hop)
                )
                or 0
            )
