"""The detail of one repo behind `relayctl status REPO`: every file of its current snapshot, by hop.

Each file's state on each hop of the route (with its rate and time left while running, its error and
hint when parked, and whether the hop was done without moving the payload), files with something
blocked first, along with the repo's summary and what of it is blocked or stuck.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

from relayd.catalogue.queries.daemon import (
    DAEMON_RUNNING,
    DaemonStatus,
    ServiceFact,
    daemon_of,
    service_facts,
)
from relayd.catalogue.queries.failures import BlockedItem, StuckItem, stuck_items
from relayd.catalogue.queries.reader import Reader, as_utc, from_json
from relayd.catalogue.queries.status import RepoSummary, blocked_items, repo_rows, summarise
from relayd.catalogue.queries.throughput import RepoAvoided, repo_avoided
from relayd.catalogue.rules import avoided_reason, skipped
from relayd.catalogue.states import DONE, INTERRUPTED, PENDING, RUNNING, STATE_ORDER


class FileHop(NamedTuple):
    """One hop of one file; ``state`` is None while the file has not reached the hop."""

    hop: str
    state: str | None
    bytes_done: int
    bytes_total: int
    rate: float | None
    eta_seconds: float | None
    attempts: int
    next_attempt_at: datetime | None
    error: str | None
    error_class: str | None
    hint: str | None
    # Done without moving the payload: the destination already had it (an LFS object on the server,
    # the drive's rapid upload, content already staged for another file), and why (rules.avoided_reason).
    skipped: bool = False
    skipped_reason: str | None = None


class FileStatus(NamedTuple):
    path: str
    size: int
    state: str
    hops: list[FileHop]


class RepoDetail(NamedTuple):
    repo: RepoSummary
    blocked: list[BlockedItem]
    files: list[FileStatus]
    service: list[ServiceFact]
    stuck: list[StuckItem]
    daemon: DaemonStatus
    avoided: RepoAvoided = RepoAvoided([], [])


def _eta(state: str | None, remaining: int, rate: float | None) -> float | None:
    if state != RUNNING or not rate or rate <= 0:
        return None
    return round(remaining / rate, 1)


def repo_detail(reader: Reader, name: str, *, now: datetime | None = None) -> RepoDetail | None:
    """Return the repo's summary, what of it is blocked or stuck, and every file of its current snapshot
    with each hop's state, files with something blocked first (then waiting, running, pending, done, by
    path), and whether the daemon runs (at *now*), read from one snapshot of the catalogue; None if no
    such repo."""
    with reader.consistent():
        return _repo_detail(reader, name, now or datetime.now(UTC))


def _repo_detail(reader: Reader, name: str, now: datetime) -> RepoDetail | None:
    rows = repo_rows(reader, name)
    if not rows:
        return None
    repo_id = rows[0][0]
    service = service_facts(reader)
    daemon = daemon_of(reader, now, service)
    daemon_running = daemon.state == DAEMON_RUNNING
    repos, extra_blocked = summarise(reader, rows, repo_id, daemon_running=daemon_running)
    repo = repos[0]
    blocked = extra_blocked + blocked_items(reader, repos, repo_id, None)
    files: list[FileStatus] = []
    if repo.snapshot is not None:
        params = {"snapshot_id": repo.snapshot.id}
        file_rows = reader.rows(
            "SELECT f.id, f.path, f.size FROM snapshot_files sf JOIN files f ON f.id = sf.file_id "
            "WHERE sf.snapshot_id = :snapshot_id",
            params,
        )
        transfers: dict[int, dict[str, tuple[Any, ...]]] = {}
        for row in reader.rows(
            "SELECT t.file_id, t.hop, t.state, t.bytes_done, t.bytes_total, t.rate, t.attempts, "
            "t.next_attempt_at, t.last_error, t.error_class, t.hint, t.handles "
            "FROM snapshot_files sf JOIN transfers t ON t.file_id = sf.file_id "
            "WHERE sf.snapshot_id = :snapshot_id",
            params,
        ):
            transfers.setdefault(row[0], {})[row[1]] = row
        route = repo.route
        for file_id, path, size in file_rows:
            by_hop = transfers.get(file_id, {})
            hops: list[FileHop] = []
            overall = DONE
            for hop in route:
                found = by_hop.get(hop)
                if found is None:
                    hops.append(FileHop(hop, None, 0, size, None, None, 0, None, None, None, None))
                    if overall == DONE:
                        overall = PENDING
                    continue
                _, _, state, done, total, rate, attempts, next_at, error, error_class, hint, handles = found
                if state == RUNNING and not daemon_running:
                    state = INTERRUPTED
                running = state == RUNNING
                hops.append(
                    FileHop(
                        hop,
                        state,
                        done,
                        total,
                        rate if running else None,
                        _eta(state, total - done, rate) if running else None,
                        attempts,
                        None if next_at is None else as_utc(next_at),
                        error,
                        error_class,
                        hint,
                        skipped(state, handles),
                        _reason(state, handles),
                    )
                )
                if state != overall and STATE_ORDER.get(state, 3) < STATE_ORDER[overall]:
                    overall = state
            files.append(FileStatus(path, size, overall, hops))
        files.sort(key=lambda item: (STATE_ORDER.get(item.state, 3), item.path))
    stuck, _ = stuck_items(reader, rows, repo_id, None, daemon_running=daemon_running)
    avoided = repo_avoided(reader, repo_id, repo.route, repo.snapshot.id if repo.snapshot else None)
    return RepoDetail(
        repo=repo, blocked=blocked, files=files, service=service, stuck=stuck, daemon=daemon, avoided=avoided
    )


def _reason(state: str, handles: Any) -> str | None:
    if not skipped(state, handles):
        return None
    parsed = from_json(handles) if isinstance(handles, str) else handles
    return avoided_reason(parsed) if isinstance(parsed, dict) else None
