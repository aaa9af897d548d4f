"""The bottom layer of the catalogue's writer: sessions, the notification outbox, published facts.

``StoreBase`` opens the engines (a writer that takes SQLite's write lock at once, and a reader that
never takes it) and gives each method one short transaction (``_write``) or a read (``read``). It also
holds what every layer above uses or what stands alone: queueing webhook notifications in the same
transaction as the change they tell of (``_enqueue``), handing due ones to the notifier and recording
their delivery, and the facts the daemon publishes for relayctl (heartbeat, token lifetime, disk).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from relayd.catalogue.db import is_sqlite, make_engine
from relayd.catalogue.rules import HopRules
from relayd.catalogue.schema import Notification, Repo, ServiceState
from relayd.catalogue.store.records import utcnow
from relayd.text import safe_optional


class StoreBase:
    """Sessions, the notification outbox and the service facts. Thread-safe: every method opens its
    own session."""

    def __init__(self, url: str, *, rules: HopRules | None = None) -> None:
        self.url = url
        self.rules = rules or HopRules()
        # Webhook URLs that receive every repo's notifications (config notify.webhooks).
        self.webhooks: tuple[str, ...] = ()
        # Told, after each commit, of the bytes a hop moved (hop, bytes) and of each attempt parked
        # (hop, state, error_class): the daemon's metrics count them as they happen.
        self.on_moved: Callable[[str, int], None] | None = None
        self.on_deferred: Callable[[str, str, str], None] | None = None
        # Whose staging this daemon's staged copies land in (relayd.sites.staging_holder), on a catalogue
        # shared by several daemons: it claims only the transfers that read copies staged there. None:
        # the catalogue's one daemon (SQLite), or a store that stages nothing.
        self.staging_holder: str | None = None
        # The lease owner id of this process's engine: a job's writes to its transfer (plan, pieces,
        # progress, handles) apply only while that lease is still its own, else raise LeaseLost (a worker
        # whose lease ran out must not record into the transfer another one took over). None: unchecked,
        # for hops run by hand (tests, the conformance kit).
        self.lease_holder: str | None = None
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
