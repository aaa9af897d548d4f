"""What needs a person and what keeps failing: blocked file transfers and surfaced (stuck) streaks.

Blocked transfers are read oldest first through the claim index before any file is joined, so a limit
bounds the paths looked up however many are blocked. Stuck items are the polls and transfers still
retrying whose streak of failures outlasted ``retry.surface_after`` (the engine surfaced them), longest
failing first, each with what to check (``rules.stuck_hint``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from relayd.catalogue.queries.reader import Reader, as_utc, in_list
from relayd.catalogue.rules import stuck_hint
from relayd.catalogue.states import INTERRUPTED, POLL_WAITING, RETRYING_STATES, RUNNING


class BlockedItem(NamedTuple):
    """Something that needs a person: a file's transfer, a snapshot's finishing transfer, or a repo's poll
    (gated, token refused, listing refused)."""

    kind: str  # "transfer" (one file's), "snapshot" (a transfer finishing a snapshot), "poll" (the repo's)
    repo: str
    hop: str | None
    path: str | None
    error: str | None
    error_class: str | None
    hint: str | None
    since: datetime | None


class StuckItem(NamedTuple):
    """A file's transfer, a snapshot's finishing transfer or a repo's poll that has kept failing for longer
    than ``retry.surface_after`` and still retries (the engine surfaced it and sent a "stuck" notice)."""

    kind: str  # "transfer", "snapshot" or "poll", as for BlockedItem
    repo: str
    hop: str | None
    path: str | None
    state: str  # pending, running, waiting (interrupted when the daemon is not running)
    error: str | None
    error_class: str | None
    attempts: int
    failing_since: datetime | None
    surfaced_at: datetime | None
    next_attempt_at: datetime | None
    hint: str  # what to check, by error class (stuck_hint)


# A lower bound for the failure streak columns: a range on them lets SQLite use ix_transfers_failing.
_LONG_AGO = "1970-01-01"


def blocked_transfers(
    reader: Reader, hops: Sequence[str], repo_id: int | None, limit: int | None
) -> list[tuple[Any, ...]]:
    """Return blocked file transfers, oldest first: repo_id, hop, path, error, class, hint, since.

    The inner query picks the transfers (through ``ix_transfers_claim``) before any file is joined,
    so with a *limit* only that many paths are looked up however many transfers are blocked.
    """
    if not hops:
        return []
    hop_list, params = in_list("h", hops)
    where = ""
    if repo_id is not None:
        where = " AND repo_id = :repo_id"
        params["repo_id"] = repo_id
    limit_sql = ""
    if limit is not None:
        limit_sql = " LIMIT :limit"
        params["limit"] = limit
    return reader.rows(
        "SELECT t.repo_id, t.hop, f.path, t.last_error, t.error_class, t.hint, t.updated_at "  # noqa: S608
        "FROM (SELECT id FROM transfers "
        f"WHERE hop IN ({hop_list}) AND state = 'blocked' AND file_id IS NOT NULL{where} "
        f"ORDER BY updated_at, id{limit_sql}) b "
        "JOIN transfers t ON t.id = b.id JOIN files f ON f.id = t.file_id "
        "ORDER BY t.updated_at, t.id",
        params,
    )


def _stuck_filter(repo_id: int | None) -> tuple[str, dict[str, Any]]:
    states, params = in_list("s", RETRYING_STATES)
    where = f"failing_since > :long_ago AND surfaced_at IS NOT NULL AND state IN ({states})"
    params["long_ago"] = _LONG_AGO
    if repo_id is not None:
        where += " AND repo_id = :repo_id"
        params["repo_id"] = repo_id
    return where, params


def stuck_items(
    reader: Reader,
    repo_rows: Sequence[tuple[Any, ...]],
    repo_id: int | None,
    limit: int | None,
    *,
    daemon_running: bool,
) -> tuple[list[StuckItem], int]:
    """Return the surfaced polls, then the surfaced transfers (at most *limit*), longest failing first,
    and how many there are in all. Only transfers failing now are in ix_transfers_failing's range."""
    names = {row[0]: str(row[1]) for row in repo_rows}
    items = [
        StuckItem(
            kind="poll",
            repo=str(row[1]),
            hop=None,
            path=None,
            state=POLL_WAITING,
            error=row[9],
            error_class=row[12],
            attempts=int(row[13] or 0),
            failing_since=as_utc(row[14]),
            surfaced_at=as_utc(row[15]),
            next_attempt_at=as_utc(row[11]),
            hint=stuck_hint(row[12]),
        )
        for row in repo_rows
        if row[8] == POLL_WAITING and row[15] is not None
    ]
    where, params = _stuck_filter(repo_id)
    total = len(items) + int(reader.rows(f"SELECT COUNT(*) FROM transfers WHERE {where}", params)[0][0])  # noqa: S608
    limit_sql = ""
    if limit is not None:
        limit_sql = " LIMIT :limit"
        params["limit"] = limit
    rows = reader.rows(
        "SELECT t.repo_id, t.hop, f.path, t.snapshot_id, t.state, t.last_error, t.error_class, "  # noqa: S608
        "t.attempts, t.failing_since, t.surfaced_at, t.next_attempt_at "
        f"FROM (SELECT id FROM transfers WHERE {where} ORDER BY failing_since, id{limit_sql}) s "
        "JOIN transfers t ON t.id = s.id LEFT JOIN files f ON f.id = t.file_id "
        "ORDER BY t.failing_since, t.id",
        params,
    )
    for rid, hop, path, snapshot_id, state, error, error_class, attempts, since, surfaced, next_at in rows:
        items.append(
            StuckItem(
                "snapshot" if snapshot_id is not None else "transfer",
                names.get(rid, str(rid)),
                str(hop),
                path,
                INTERRUPTED if state == RUNNING and not daemon_running else str(state),
                error,
                error_class,
                int(attempts or 0),
                as_utc(since),
                as_utc(surfaced),
                as_utc(next_at),
                stuck_hint(error_class),
            )
        )
    return items, total
