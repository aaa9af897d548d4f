"""The catalogue's tables, as SQLAlchemy 2 typed models.

A *repo* is a watched source; each poll that sees a new head records a *snapshot* (a pinned commit)
and links it to its *files*. A file row is one path with one content in one repo, so an unchanged file
is shared by consecutive snapshots and never moved twice. Its content is a *blob* (keyed by sha256),
staged once however many files carry it. A *transfer* is one file × hop (or, for a hop that commits a
whole snapshot, one snapshot × hop) and its *pieces* are the byte ranges recorded as they become durable.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Transfer states (DESIGN.md): pending → running → done, or waiting (retry at a time) or blocked (a person).
PENDING = "pending"
RUNNING = "running"
WAITING = "waiting"
BLOCKED = "blocked"
DONE = "done"
TRANSFER_STATES = (PENDING, RUNNING, WAITING, BLOCKED, DONE)

# Snapshot states.
SNAPSHOT_ACTIVE = "active"
SNAPSHOT_DONE = "done"
SNAPSHOT_SUPERSEDED = "superseded"
SNAPSHOT_REFUSED = "refused"

# Repo poll states.
POLL_NEW = "new"
POLL_OK = "ok"
POLL_WAITING = "waiting"
POLL_BLOCKED = "blocked"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores no zone of its own)."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not allowed in the catalogue")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
        int: BigInteger().with_variant(Integer(), "sqlite"),
    }


class Repo(Base):
    """A watched source and where its files go."""

    __tablename__ = "repos"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    repo_type: Mapped[str] = mapped_column(String(16), default="model")
    revision: Mapped[str] = mapped_column(String(255), default="main")
    include: Mapped[list[str]] = mapped_column(default=list)
    exclude: Mapped[list[str]] = mapped_column(default=list)
    every: Mapped[float] = mapped_column(Float)
    route: Mapped[list[str]] = mapped_column()
    destinations: Mapped[dict[str, Any]] = mapped_column(default=dict)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    head_commit: Mapped[str | None] = mapped_column(String(64))
    poll_state: Mapped[str] = mapped_column(String(16), default=POLL_NEW)
    poll_error: Mapped[str | None] = mapped_column(Text)
    poll_hint: Mapped[str | None] = mapped_column(Text)
    next_poll_at: Mapped[datetime | None]
    poll_error_class: Mapped[str | None] = mapped_column(String(32))
    # The current streak of failed polls (reset by a poll that gets an answer): how many, since when,
    # and when it was surfaced as stuck (retry.surface_after).
    poll_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    poll_failing_since: Mapped[datetime | None]
    poll_surfaced_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    snapshots: Mapped[list[Snapshot]] = relationship(
        back_populates="repo", cascade="all, delete-orphan", passive_deletes=True
    )


class Snapshot(Base):
    """One pinned commit of a repo that a poll observed."""

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("repo_id", "commit"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), index=True)
    commit: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=SNAPSHOT_ACTIVE)
    reason: Mapped[str | None] = mapped_column(Text)
    file_count: Mapped[int] = mapped_column(default=0)
    total_bytes: Mapped[int] = mapped_column(default=0)
    seen_at: Mapped[datetime]
    done_at: Mapped[datetime | None]

    repo: Mapped[Repo] = relationship(back_populates="snapshots")


class Blob(Base):
    """Content, keyed by sha256 once known (LFS files know it up front; small files once downloaded)."""

    __tablename__ = "blobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    git_blob_id: Mapped[str | None] = mapped_column(String(40), index=True)
    sha1: Mapped[str | None] = mapped_column(String(40))
    size: Mapped[int]
    staged_path: Mapped[str | None] = mapped_column(Text)
    staged_at: Mapped[datetime | None]
    # Whose staging holds the staged copy (a daemon's `staging_holder`): a transfer that reads it runs
    # there (docs/sites.md). None: staged before sites were recorded, readable wherever it is.
    staged_on: Mapped[str | None] = mapped_column(String(255))


class File(Base):
    """One path with one content in one repo; shared by every snapshot in which it is unchanged."""

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("repo_id", "path", "blob_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), index=True)
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id"), index=True)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int]
    lfs: Mapped[bool] = mapped_column(Boolean, default=False)
    sha256: Mapped[str | None] = mapped_column(String(64))
    git_blob_id: Mapped[str | None] = mapped_column(String(40))
    sha1: Mapped[str | None] = mapped_column(String(40))

    blob: Mapped[Blob] = relationship()


class SnapshotFile(Base):
    """Membership of a file in a snapshot."""

    __tablename__ = "snapshot_files"

    snapshot_id: Mapped[int] = mapped_column(ForeignKey("snapshots.id", ondelete="CASCADE"), primary_key=True)
    file_id: Mapped[int] = mapped_column(
        ForeignKey("files.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Transfer(Base):
    """One file × hop (or snapshot × hop for a hop that finishes whole snapshots) and its progress."""

    __tablename__ = "transfers"
    __table_args__ = (
        UniqueConstraint("file_id", "hop"),
        UniqueConstraint("snapshot_id", "hop"),
        Index("ix_transfers_claim", "hop", "state", "next_attempt_at"),
        # The claim's order (the largest runnable first) over the transfers not done: a claim reads one
        # hop's entries backwards from the largest (ties by id sorted incrementally) instead of sorting
        # every pending transfer of the hop. (A predicate PostgreSQL can prove from the claim's
        # conditions: `state IN (...)` is stored as a coerced array that its planner does not compare.)
        Index(
            "ix_transfers_claim_order",
            "hop",
            "bytes_total",
            postgresql_where=text("state <> 'done'"),
            sqlite_where=text("state <> 'done'"),
        ),
        Index("ix_transfers_summary", "repo_id", "hop", "state", "bytes_total", "bytes_done"),
        Index("ix_transfers_failing", "failing_since"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"))
    file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    snapshot_id: Mapped[int | None] = mapped_column(ForeignKey("snapshots.id", ondelete="CASCADE"))
    hop: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=PENDING)
    bytes_done: Mapped[int] = mapped_column(default=0)
    bytes_total: Mapped[int] = mapped_column(default=0)
    bytes_moved: Mapped[int] = mapped_column(default=0)
    rate: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    error_class: Mapped[str | None] = mapped_column(String(32))
    hint: Mapped[str | None] = mapped_column(Text)
    # The current streak of failures (reset when the transfer is done or `relayctl retry` runs): since
    # when, and when it was surfaced as stuck (retry.surface_after).
    failing_since: Mapped[datetime | None]
    surfaced_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    # The staging holder whose staged copy this transfer reads (None: it reads none): only a daemon
    # there claims it, so several machines staging downloads stay correct (docs/sites.md).
    staged_on: Mapped[str | None] = mapped_column(String(255))
    handles: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class Piece(Base):
    """A byte range of a transfer; ``done`` only once it is durable at the destination."""

    __tablename__ = "pieces"

    transfer_id: Mapped[int] = mapped_column(ForeignKey("transfers.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    offset: Mapped[int]
    length: Mapped[int]
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    sends: Mapped[int] = mapped_column(Integer, default=0)
    # Payload bytes of the latest send already counted in the transfer's bytes_moved: a send that
    # turns out complete after a restart is counted up to its length, not twice (Store.piece_done).
    moved: Mapped[int] = mapped_column(default=0, server_default="0")
    done_at: Mapped[datetime | None]


class ServiceState(Base):
    """Small facts the daemon publishes for relayctl: heartbeat, drive token expiry, disk budget."""

    __tablename__ = "service_state"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column()
    updated_at: Mapped[datetime]


class Worker(Base):
    """One daemon process serving the catalogue, as its heartbeat last said (`relayctl workers`):
    several daemons on several sites share a PostgreSQL catalogue, each with a row of its own."""

    __tablename__ = "workers"

    # The daemon's lease owner id: its claims carry it (transfers.lease_owner).
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    site: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    # The hops it serves (None: every hop it has).
    hops: Mapped[list[str] | None] = mapped_column(JSON)
    version: Mapped[str] = mapped_column(String(64))
    # running or stopped (a stale heartbeat of a running one means it is dead).
    state: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    last_seen: Mapped[datetime] = mapped_column(index=True)


class Notification(Base):
    """An outbox of webhook notifications (snapshot done, transfer blocked), delivered with retries so
    that a receiver that is down loses nothing."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_due", "delivered_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    repo_id: Mapped[int | None] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
