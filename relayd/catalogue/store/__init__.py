"""Every write to the catalogue goes through this package.

Each method is one short transaction, so relayctl and the daemon's workers interleave without holding
locks for long, and a crash between two calls leaves the catalogue consistent: a piece is recorded only
after it is durable, a transfer is done only after it is verified, and the next hop's transfer is
created in the same transaction that marks the previous one done.

``Store`` stacks one layer per job, each in its own module: ``base`` (sessions, the notification
outbox, published facts), ``repos`` (repos and their polls), ``snapshots`` (recording a head, each
file's next transfer, a snapshot's end), ``claims`` (claims, leases, the jobs handed to hops),
``progress`` (pieces, traffic, completing a transfer), ``failures`` (parking, stuck, retry) and
``workers`` (each daemon's heartbeat). The
values they take and give are in ``records``; the decisions that need no database are in
``relayd.catalogue.rules``.
"""

from relayd.catalogue.rules import DRIVE, DRIVE_HANDLES, HopRules
from relayd.catalogue.store.records import (
    FileSpec,
    LeaseLost,
    RepoSpec,
    SnapshotResult,
    StagedBlob,
    StuckNotice,
    TransferGone,
    new_owner_id,
    utcnow,
)
from relayd.catalogue.store.workers import WorkerBeat, WorkerStore

__all__ = [
    "DRIVE",
    "DRIVE_HANDLES",
    "FileSpec",
    "HopRules",
    "LeaseLost",
    "RepoSpec",
    "SnapshotResult",
    "StagedBlob",
    "Store",
    "StuckNotice",
    "TransferGone",
    "WorkerBeat",
    "new_owner_id",
    "utcnow",
]


class Store(WorkerStore):
    """The catalogue's single writer API. Thread-safe: every method opens its own session."""
