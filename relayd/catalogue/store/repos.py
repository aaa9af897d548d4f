"""The store's repo layer: the watched repos and how their polls went.

Adding, replacing, pausing and removing a repo (with everything recorded for it), the repo rows the
daemon schedules polls from and a fingerprint that changes whenever they do, and the outcome of each
poll: a failed poll lengthens the repo's streak of failures and a blocked one queues a notification;
one that got an answer ends the streak.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update

from relayd.catalogue.schema import (
    POLL_BLOCKED,
    POLL_OK,
    File,
    Piece,
    Repo,
    Snapshot,
    SnapshotFile,
    Transfer,
)
from relayd.catalogue.store.base import StoreBase
from relayd.catalogue.store.records import RepoSpec, utcnow
from relayd.errors import ErrorClass
from relayd.text import safe_optional


class RepoStore(StoreBase):
    """Writes and reads of the repos and their poll state."""

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

    def repos_fingerprint(self) -> tuple[Any, ...]:
        """Return a value that changes whenever a repo is added, removed, changed or asks for a poll."""
        with self.read() as session:
            row = session.execute(
                select(func.count(Repo.id), func.max(Repo.updated_at), func.max(Repo.next_poll_at))
            ).one()
        return tuple(row)
