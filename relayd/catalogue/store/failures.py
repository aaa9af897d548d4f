"""The store's failure layer: parking failed attempts, surfacing long streaks, and retrying.

A failed attempt is parked as waiting (retried at a time) or blocked (a person must act; a
notification is queued); the first failure since the transfer last succeeded begins its streak. A
streak that outlasts ``retry.surface_after`` is surfaced once, as ``stuck``, with a hint of what to
check (``rules.stuck_hint``). `relayctl retry` and the daemon (once a full disk has room again) make
parked work runnable.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from relayd.catalogue.rules import stuck_hint
from relayd.catalogue.schema import (
    BLOCKED,
    PENDING,
    POLL_OK,
    POLL_WAITING,
    RUNNING,
    WAITING,
    File,
    Repo,
    Transfer,
)
from relayd.catalogue.store.progress import ProgressStore
from relayd.catalogue.store.records import StuckNotice, utcnow
from relayd.errors import ErrorClass, UsageError
from relayd.text import safe_optional, safe_text


class FailureStore(ProgressStore):
    """Deferring, surfacing and retrying failed work."""

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
    ) -> bool:
        """Park the transfer as waiting (retry at *next_attempt_at*) or blocked (needs a person); a first
        failure since it last succeeded begins its streak of failures. Return False when *owner* no
        longer held it (nothing changed)."""
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
        return parked is not None

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
