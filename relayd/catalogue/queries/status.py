"""The numbers behind `relayctl status`: each repo's summary, computed from aggregates.

How a repo's progress is counted without a join over every file: transfers are created one hop at a
time (the *frontier*: a file has a transfer for hop *k* only once hops before *k* are done, and has at
most one transfer that is not done), and unstarted work on files that left the repo is deleted when a
new snapshot supersedes the old one. So for the current snapshot of N files and B bytes, a hop is done
for every file except those whose frontier is at this hop or an earlier one, and those are exactly the
repo's transfers that are not done, which the covering index ``ix_transfers_summary`` counts cheaply.
Done transfers (the bulk of a mature catalogue, including the history of older snapshots) are never
read. Also the repos as `relayctl doctor` sees them (``repo_targets``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from relayd.catalogue.queries.daemon import (
    DAEMON_RUNNING,
    DaemonStatus,
    ServiceFact,
    daemon_of,
    service_facts,
)
from relayd.catalogue.queries.failures import BlockedItem, StuckItem, blocked_transfers, stuck_items
from relayd.catalogue.queries.reader import Reader, as_utc, from_json, in_list
from relayd.catalogue.states import BLOCKED, DONE, INTERRUPTED, OPEN_STATES, POLL_BLOCKED, RUNNING

# -- results (named tuples: a repo's detail builds tens of thousands, and they are cheap to make) -------


class SnapshotInfo(NamedTuple):
    id: int
    commit: str
    state: str
    files: int
    bytes: int
    seen_at: datetime | None
    done_at: datetime | None


class HopSummary(NamedTuple):
    """One hop of a repo's current snapshot: files and bytes done, and files in each open state.

    ``not_reached`` counts files still at an earlier hop, so ``files_done`` + the open states +
    ``not_reached`` = ``files_total``.
    """

    hop: str
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    states: dict[str, int]
    not_reached: int
    rate: float


class FinishInfo(NamedTuple):
    """The transfer that finishes a whole snapshot (e.g. the commit naming all its files)."""

    hop: str
    state: str
    error: str | None
    error_class: str | None
    hint: str | None
    updated_at: datetime | None


class RepoSummary(NamedTuple):
    id: int
    name: str
    repo_type: str
    revision: str
    route: list[str]
    every: float
    paused: bool
    head_commit: str | None
    poll_state: str
    poll_error: str | None
    poll_hint: str | None
    next_poll_at: datetime | None
    snapshot: SnapshotInfo | None
    hops: list[HopSummary]
    finish: FinishInfo | None
    blocked: int
    rate: float


class Summary(NamedTuple):
    repos: list[RepoSummary]
    blocked: list[BlockedItem]
    blocked_total: int
    service: list[ServiceFact]
    stuck: list[StuckItem]
    stuck_total: int
    daemon: DaemonStatus


_REPOS = (
    "SELECT id, name, repo_type, revision, route, every, paused, head_commit, "
    "poll_state, poll_error, poll_hint, next_poll_at, "
    "poll_error_class, poll_attempts, poll_failing_since, poll_surfaced_at FROM repos"
)


def repo_rows(reader: Reader, name: str | None) -> list[tuple[Any, ...]]:
    if name is None:
        return reader.rows(_REPOS + " ORDER BY name")
    return reader.rows(_REPOS + " WHERE name = :name", {"name": name})


def _current_snapshots(reader: Reader, repo_id: int | None) -> dict[int, SnapshotInfo]:
    """Return each repo's newest snapshot that is active or done (what status reports on)."""
    where, params = ("", {}) if repo_id is None else (" AND repo_id = :repo_id", {"repo_id": repo_id})
    rows = reader.rows(
        'SELECT repo_id, id, "commit", state, file_count, total_bytes, seen_at, done_at FROM snapshots '  # noqa: S608
        "WHERE id IN (SELECT MAX(id) FROM snapshots WHERE state IN ('active', 'done')"
        f"{where} GROUP BY repo_id)",
        params,
    )
    return {
        row[0]: SnapshotInfo(row[1], row[2], row[3], int(row[4]), int(row[5]), as_utc(row[6]), as_utc(row[7]))
        for row in rows
    }


class _OpenWork(NamedTuple):
    """A (repo, hop)'s file transfers that are not done: count by state, their bytes, what is left."""

    states: dict[str, int]
    files: int
    size: int
    remaining: int


def _open_work(
    reader: Reader,
    repo_ids: Sequence[int],
    hops: Sequence[str],
    snapshot_level: Mapping[tuple[int, str, str], int],
) -> dict[tuple[int, str], _OpenWork]:
    """Return (repo, hop) → its open file transfers, from transfers that are not done (less the
    snapshot-level ones counted in *snapshot_level*, which are not per file).

    The IN lists on the leading columns of ``ix_transfers_summary`` let the database seek to each
    (repo, hop, open state) range of the covering index and never visit done transfers.
    """
    if not repo_ids or not hops:
        return {}
    repo_list, params = in_list("r", repo_ids)
    hop_list, hop_params = in_list("h", hops)
    state_list, state_params = in_list("s", OPEN_STATES)
    rows = reader.rows(
        "SELECT repo_id, hop, state, COUNT(*), SUM(bytes_total), SUM(bytes_done) FROM transfers "  # noqa: S608
        f"WHERE repo_id IN ({repo_list}) AND hop IN ({hop_list}) AND state IN ({state_list}) "
        "GROUP BY repo_id, hop, state",
        {**params, **hop_params, **state_params},
    )
    work: dict[tuple[int, str], _OpenWork] = {}
    for repo_id, hop, state, count, size_sum, done_sum in rows:
        entry = work.get((repo_id, hop))
        if entry is None:
            entry = _OpenWork(dict.fromkeys(OPEN_STATES, 0), 0, 0, 0)
        files = max(int(count) - snapshot_level.get((repo_id, hop, state), 0), 0)
        size, done = int(size_sum or 0), int(done_sum or 0)
        entry.states[state] = files
        work[(repo_id, hop)] = _OpenWork(
            entry.states, entry.files + files, entry.size + size, entry.remaining + max(size - done, 0)
        )
    return work


def snapshot_transfers(reader: Reader, repo_ids: Sequence[int]) -> list[tuple[Any, ...]]:
    """Return the snapshot-level transfers (few: one per finished snapshot and hop) of the repos.

    The repos are filtered here, not in SQL: given an IN list on ``repo_id`` SQLite would walk every
    transfer of those repos instead of the few rows the (snapshot_id, hop) index holds. And the range
    is "> 0", not "IS NOT NULL", because SQLite uses that index only for a range.
    """
    wanted = set(repo_ids)
    rows = reader.rows(
        "SELECT repo_id, snapshot_id, hop, state, last_error, error_class, hint, updated_at "
        "FROM transfers WHERE snapshot_id > 0"
    )
    return [row for row in rows if row[0] in wanted]


def _running_rates(reader: Reader, hops: Sequence[str], repo_id: int | None) -> dict[tuple[int, str], float]:
    """Return (repo, hop) → the summed current rate of its running transfers (few rows: the workers')."""
    if not hops:
        return {}
    hop_list, params = in_list("h", hops)
    where = ""
    if repo_id is not None:
        where = " AND repo_id = :repo_id"
        params["repo_id"] = repo_id
    rows = reader.rows(
        "SELECT repo_id, hop, SUM(rate) FROM transfers "  # noqa: S608
        f"WHERE hop IN ({hop_list}) AND state = 'running'{where} GROUP BY repo_id, hop",
        params,
    )
    return {(row[0], row[1]): float(row[2] or 0.0) for row in rows}


def summarise(
    reader: Reader, repo_rows: list[tuple[Any, ...]], repo_id: int | None, *, daemon_running: bool = True
) -> tuple[list[RepoSummary], list[BlockedItem]]:
    """Build each repo's summary; return them with the non-transfer blocked items (polls, snapshots).

    Unless *daemon_running*, transfers left running count as interrupted, and nothing has a rate.
    """
    repo_ids = [row[0] for row in repo_rows]
    routes = {row[0]: [str(hop) for hop in (from_json(row[4]) or [])] for row in repo_rows}
    all_hops = sorted({hop for route in routes.values() for hop in route})
    snapshots = _current_snapshots(reader, repo_id)
    rates = _running_rates(reader, all_hops, repo_id) if daemon_running else {}
    # Snapshot-level transfers are not per file: keep them out of the per-file arithmetic.
    finishes: dict[int, FinishInfo] = {}
    snapshot_level: dict[tuple[int, str, str], int] = {}
    for repo, snapshot_id, hop, state, error, error_class, hint, updated in snapshot_transfers(
        reader, repo_ids
    ):
        if state != DONE:
            key = (repo, hop, state)
            snapshot_level[key] = snapshot_level.get(key, 0) + 1
        current = snapshots.get(repo)
        if current is not None and current.id == snapshot_id:
            shown = INTERRUPTED if state == RUNNING and not daemon_running else state
            finishes[repo] = FinishInfo(hop, shown, error, error_class, hint, as_utc(updated))
    open_work = _open_work(reader, repo_ids, all_hops, snapshot_level)

    summaries: list[RepoSummary] = []
    extra_blocked: list[BlockedItem] = []
    for row in repo_rows:
        rid, name = row[0], str(row[1])
        route = routes[rid]
        snapshot = snapshots.get(rid)
        files_total = snapshot.files if snapshot else 0
        bytes_total = snapshot.bytes if snapshot else 0
        hops: list[HopSummary] = []
        earlier_files = 0  # files whose frontier is at an earlier hop
        earlier_bytes = 0
        blocked = 0
        for hop in route:
            here = open_work.get((rid, hop))
            if here is None:
                here = _OpenWork(dict.fromkeys(OPEN_STATES, 0), 0, 0, 0)
            blocked += here.states[BLOCKED]
            moving = here.states[RUNNING]
            states = {**here.states, RUNNING: moving, INTERRUPTED: 0}
            if not daemon_running:
                states[RUNNING], states[INTERRUPTED] = 0, moving
            hops.append(
                HopSummary(
                    hop=hop,
                    files_done=max(files_total - earlier_files - here.files, 0),
                    files_total=files_total,
                    bytes_done=max(bytes_total - earlier_bytes - here.remaining, 0),
                    bytes_total=bytes_total,
                    states=states,
                    not_reached=min(earlier_files, files_total),
                    rate=rates.get((rid, hop), 0.0),
                )
            )
            earlier_files += here.files
            earlier_bytes += here.size
        finish = finishes.get(rid)
        if finish is not None and finish.state == BLOCKED:
            blocked += 1
            extra_blocked.append(
                BlockedItem(
                    "snapshot",
                    name,
                    finish.hop,
                    None,
                    finish.error,
                    finish.error_class,
                    finish.hint,
                    finish.updated_at,
                )
            )
        if row[8] == POLL_BLOCKED:
            blocked += 1
            extra_blocked.append(BlockedItem("poll", name, None, None, row[9], row[12], row[10], None))
        summaries.append(
            RepoSummary(
                id=rid,
                name=name,
                repo_type=str(row[2]),
                revision=str(row[3]),
                route=route,
                every=float(row[5]),
                paused=bool(row[6]),
                head_commit=row[7],
                poll_state=str(row[8]),
                poll_error=row[9],
                poll_hint=row[10],
                next_poll_at=as_utc(row[11]),
                snapshot=snapshot,
                hops=hops,
                finish=finish,
                blocked=blocked,
                rate=sum(hop.rate for hop in hops),
            )
        )
    return summaries, extra_blocked


def blocked_items(
    reader: Reader, repos: Iterable[RepoSummary], repo_id: int | None, limit: int | None
) -> list[BlockedItem]:
    names = {repo.id: repo.name for repo in repos}
    hops = sorted({hop for repo in repos for hop in repo.route})
    return [
        BlockedItem("transfer", names.get(rid, str(rid)), hop, path, error, error_class, hint, as_utc(since))
        for rid, hop, path, error, error_class, hint, since in blocked_transfers(reader, hops, repo_id, limit)
    ]


def summary(
    reader: Reader, *, blocked_limit: int = 50, stuck_limit: int = 50, now: datetime | None = None
) -> Summary:
    """Return every repo's summary, blocked items (at most *blocked_limit* file transfers), stuck items (at
    most *stuck_limit* transfers), service facts and whether the daemon runs (at *now*), all read from one
    snapshot of the catalogue. Repos with something blocked come first, then by name.
    """
    with reader.consistent():
        return _summary(reader, blocked_limit, stuck_limit, now or datetime.now(UTC))


def _summary(reader: Reader, blocked_limit: int, stuck_limit: int, now: datetime) -> Summary:
    service = service_facts(reader)
    daemon = daemon_of(reader, now, service)
    running = daemon.state == DAEMON_RUNNING
    rows = repo_rows(reader, None)
    repos, extra_blocked = summarise(reader, rows, None, daemon_running=running)
    transfers_blocked = blocked_items(reader, repos, None, blocked_limit)
    stuck, stuck_total = stuck_items(reader, rows, None, stuck_limit, daemon_running=running)
    repos.sort(key=lambda repo: (repo.blocked == 0, repo.name))
    return Summary(
        repos=repos,
        blocked=extra_blocked + transfers_blocked,
        blocked_total=sum(repo.blocked for repo in repos),
        service=service,
        stuck=stuck,
        stuck_total=stuck_total,
        daemon=daemon,
    )


# -- doctor: what the repos need -----------------------------------------------------------------------


class RepoTarget(NamedTuple):
    """A repo as `relayctl doctor` sees it: where it comes from and where its route takes it."""

    name: str
    repo_type: str
    revision: str
    route: list[str]
    destinations: dict[str, Any]
    paused: bool


def repo_targets(reader: Reader) -> list[RepoTarget]:
    """Return every watched repo's source, route and destinations, by name."""
    rows = reader.rows(
        "SELECT name, repo_type, revision, route, destinations, paused FROM repos ORDER BY name"
    )
    return [
        RepoTarget(
            name=str(row[0]),
            repo_type=str(row[1]),
            revision=str(row[2]),
            route=[str(hop) for hop in (from_json(row[3]) or [])],
            destinations=dict(from_json(row[4]) or {}),
            paused=bool(row[5]),
        )
        for row in rows
    ]
