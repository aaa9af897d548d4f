"""The store's worker layer: each daemon's own heartbeat row (the ``workers`` table), so several daemons
on several sites sharing one catalogue never overwrite each other's (docs/sites.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete

from relayd.catalogue.schema import Worker
from relayd.catalogue.store.failures import FailureStore
from relayd.catalogue.store.records import utcnow

#: A stopped or dead daemon's row is forgotten this long after its last heartbeat.
FORGET_AFTER = timedelta(days=7)


@dataclass(frozen=True)
class WorkerBeat:
    """What a daemon says of itself in each heartbeat."""

    id: str  # its lease owner id: the claims it holds carry it
    site: str
    host: str
    pid: int
    hops: tuple[str, ...] | None  # None: every hop
    version: str
    started_at: datetime
    state: str = "running"  # or "stopped", said as it stops


class WorkerStore(FailureStore):
    """Heartbeats, one row per daemon process."""

    def beat(self, worker: WorkerBeat) -> None:
        """Record *worker*'s heartbeat now (its row created at the first one)."""
        now = utcnow()
        hops = None if worker.hops is None else list(worker.hops)
        with self._write() as session:
            row = session.get(Worker, worker.id)
            if row is None:
                row = Worker(id=worker.id, started_at=worker.started_at)
                session.add(row)
            row.site, row.host, row.pid, row.hops = worker.site, worker.host, worker.pid, hops
            row.version, row.state, row.last_seen = worker.version, worker.state, now

    def forget_workers(self) -> int:
        """Delete the rows of daemons silent for longer than FORGET_AFTER; return how many."""
        with self._write() as session:
            result = session.execute(delete(Worker).where(Worker.last_seen < utcnow() - FORGET_AFTER))
            return int(result.rowcount)  # type: ignore[attr-defined]
