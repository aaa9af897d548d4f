"""Read-only queries behind `relayctl status`: aggregates, not rows loaded one by one.

``relayctl status`` must answer in a fraction of a second on a catalogue of 100,000 files, and on a
small machine importing SQLAlchemy alone takes most of that budget. So the queries are plain, portable
SQL (named ``:params``, standard GROUP BY, no dialect functions) run through a ``Reader``: the standard
library's sqlite3 for a SQLite catalogue, SQLAlchemy's ``text()`` for any other URL. Nothing here writes.

How a repo's progress is counted without a join over every file: transfers are created one hop at a
time (the *frontier*: a file has a transfer for hop *k* only once hops before *k* are done, and has at
most one transfer that is not done), and unstarted work on files that left the repo is deleted when a
new snapshot supersedes the old one. So for the current snapshot of N files and B bytes, a hop is done
for every file except those whose frontier is at this hop or an earlier one, and those are exactly the
repo's transfers that are not done, which the covering index ``ix_transfers_summary`` counts cheaply.
Done transfers (the bulk of a mature catalogue, including the history of older snapshots) are never
read.

Only ``:name`` placeholders (for IN lists) and fixed fragments are ever formatted into the SQL text,
never values, hence the ``noqa: S608`` markers.
"""

from __future__ import annotations

import fcntl
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from relayd.errors import ErrorClass
from relayd.units import format_duration

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

# The catalogue's state names (relayd.catalogue.schema holds the same constants; importing it would pull
# in SQLAlchemy, which the status path avoids).
PENDING = "pending"
RUNNING = "running"
WAITING = "waiting"
BLOCKED = "blocked"
DONE = "done"
OPEN_STATES = (PENDING, RUNNING, WAITING, BLOCKED)
POLL_BLOCKED = "blocked"
POLL_WAITING = "waiting"
# Not a catalogue state: how status shows a transfer left `running` by a daemon that is not running.
INTERRUPTED = "interrupted"
# The states a transfer may be stuck in: still retrying, not done, not blocked.
RETRYING_STATES = (PENDING, RUNNING, WAITING)

# What "blocked first" means when files or hops are sorted: the state that needs a person leads.
STATE_ORDER = {BLOCKED: 0, WAITING: 1, RUNNING: 2, INTERRUPTED: 2, PENDING: 3, DONE: 4}

BUSY_TIMEOUT_S = 30.0


class Reader(Protocol):
    """Runs SELECTs and returns their rows as tuples; inside ``consistent()`` they all see one snapshot."""

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]: ...

    def consistent(self) -> AbstractContextManager[None]: ...

    def has_table(self, name: str) -> bool: ...

    def close(self) -> None: ...


class SqliteReader:
    """A Reader over a SQLite file through the standard library (no SQLAlchemy import)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # isolation_level=None: we say when a transaction begins. Under WAL a reader never waits for the
        # daemon's writes, nor they for it.
        self._connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self._connection.execute(sql, dict(params or {})).fetchall()

    @contextmanager
    def consistent(self) -> Iterator[None]:
        """Run the reads inside one read transaction, so a summary's numbers agree with each other."""
        self._connection.execute("BEGIN")
        try:
            yield
        finally:
            self._connection.execute("COMMIT")

    def has_table(self, name: str) -> bool:
        found = self.rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name", {"name": name})
        return bool(found)

    def close(self) -> None:
        self._connection.close()


class EngineReader:
    """A Reader over any SQLAlchemy engine (PostgreSQL, or SQLite when a test wants this path)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._connection: Connection | None = None

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        from sqlalchemy import text

        if self._connection is not None:
            return [tuple(row) for row in self._connection.execute(text(sql), dict(params or {}))]
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql), dict(params or {}))]

    @contextmanager
    def consistent(self) -> Iterator[None]:
        """Run the reads on one connection in one repeatable-read transaction (one snapshot)."""
        options: dict[str, Any] = {}
        if self.engine.dialect.name != "sqlite":
            options["isolation_level"] = "REPEATABLE READ"
        with self.engine.connect().execution_options(**options) as connection, connection.begin():
            self._connection = connection
            try:
                yield
            finally:
                self._connection = None

    def has_table(self, name: str) -> bool:
        from sqlalchemy import inspect

        return inspect(self.engine).has_table(name)

    def close(self) -> None:
        self.engine.dispose()


_SQLITE_URL = re.compile(r"sqlite(?:\+pysqlite)?:///(?P<path>[^?%\n]+)")


def sqlite_file(url: str) -> Path | None:
    """Return the file of a plain SQLite URL (``sqlite:///rel`` or ``sqlite:////abs``), else None.

    URLs with query options or escapes return None, so they go through SQLAlchemy, which reads them fully.
    """
    match = _SQLITE_URL.fullmatch(url)
    if match is None or match.group("path") == ":memory:":
        return None
    return Path(match.group("path"))


def open_reader(url: str) -> Reader:
    """Return a Reader for the catalogue at *url*: sqlite3 for a plain SQLite file, else SQLAlchemy."""
    path = sqlite_file(url)
    if path is not None:
        return SqliteReader(path)
    from relayd.catalogue.db import make_engine

    return EngineReader(make_engine(url, immediate=False))


# -- value conversion (SQLite hands back text for datetimes and JSON, other databases objects) ---------


def _when(value: Any) -> datetime | None:
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _params(prefix: str, values: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """Return ``:p0, :p1, …`` and their values, for an IN list (empty lists never reach SQL)."""
    names = {f"{prefix}{i}": value for i, value in enumerate(values)}
    return ", ".join(f":{name}" for name in names), names


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


class ServiceFact(NamedTuple):
    key: str
    value: dict[str, Any]
    updated_at: datetime | None


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


class DaemonStatus(NamedTuple):
    """Whether a daemon serves the catalogue, judged from its heartbeat and its instance lock."""

    state: str  # running, stopped (it said so), dead (gone without saying so, or silent), none (never ran)
    detail: str
    hint: str  # what to do ("" while it runs)
    pid: int | None
    version: str | None
    heartbeat_at: datetime | None


class Summary(NamedTuple):
    repos: list[RepoSummary]
    blocked: list[BlockedItem]
    blocked_total: int
    service: list[ServiceFact]
    stuck: list[StuckItem]
    stuck_total: int
    daemon: DaemonStatus


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
    # the drive's rapid upload, content already staged for another file).
    skipped: bool = False


SKIP_MARKERS = ("skipped", "rapid", "reused")


def _skipped(state: str, handles: Any) -> bool:
    """Return True when a done transfer's handles say nothing had to be moved."""
    if state != DONE or not handles:
        return False
    if isinstance(handles, str):
        try:
            handles = json.loads(handles)
        except ValueError:
            return False
    return isinstance(handles, dict) and any(handles.get(key) is True for key in SKIP_MARKERS)


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


# -- queries -------------------------------------------------------------------------------------------


def schema_revision(reader: Reader) -> str | None:
    """Return the catalogue's Alembic revision, or None when it has none (a new or foreign database)."""
    if not reader.has_table("alembic_version"):
        return None
    rows = reader.rows("SELECT version_num FROM alembic_version")
    return str(rows[0][0]) if len(rows) == 1 else None


def schema_at_head(reader: Reader) -> bool:
    """Return whether the catalogue is at the migrations' head, told without importing Alembic
    (False when unsure: then Alembic decides)."""
    from relayd.catalogue.revisions import fast_head_revision

    head = fast_head_revision()
    return head is not None and schema_revision(reader) == head


_REPOS = (
    "SELECT id, name, repo_type, revision, route, every, paused, head_commit, "
    "poll_state, poll_error, poll_hint, next_poll_at, "
    "poll_error_class, poll_attempts, poll_failing_since, poll_surfaced_at FROM repos"
)


def _repo_rows(reader: Reader, name: str | None) -> list[tuple[Any, ...]]:
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
        row[0]: SnapshotInfo(row[1], row[2], row[3], int(row[4]), int(row[5]), _when(row[6]), _when(row[7]))
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
    repo_list, params = _params("r", repo_ids)
    hop_list, hop_params = _params("h", hops)
    state_list, state_params = _params("s", OPEN_STATES)
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


def _snapshot_transfers(reader: Reader, repo_ids: Sequence[int]) -> list[tuple[Any, ...]]:
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
    hop_list, params = _params("h", hops)
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


def _blocked_transfers(
    reader: Reader, hops: Sequence[str], repo_id: int | None, limit: int | None
) -> list[tuple[Any, ...]]:
    """Return blocked file transfers, oldest first: repo_id, hop, path, error, class, hint, since.

    The inner query picks the transfers (through ``ix_transfers_claim``) before any file is joined,
    so with a *limit* only that many paths are looked up however many transfers are blocked.
    """
    if not hops:
        return []
    hop_list, params = _params("h", hops)
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


def service_facts(reader: Reader) -> list[ServiceFact]:
    """Return what the daemon publishes for relayctl (heartbeat, staging budget, token lifetime, …)."""
    rows = reader.rows("SELECT key, value, updated_at FROM service_state ORDER BY key")
    facts = []
    for key, value, updated_at in rows:
        data = _json(value)
        facts.append(
            ServiceFact(str(key), data if isinstance(data, dict) else {"value": data}, _when(updated_at))
        )
    return facts


# -- the daemon: running, stopped or dead ---------------------------------------------------------------

#: The daemon publishes its heartbeat every 10 s; one older than this means it is not running.
STALE_HEARTBEAT = 60.0
DAEMON_RUNNING = "running"
DAEMON_STOPPED = "stopped"
DAEMON_DEAD = "dead"
DAEMON_NONE = "none"


def instance_lock_path(database: Path) -> Path:
    """Return the lock file a daemon holds while it serves the SQLite catalogue *database*."""
    return database.with_name(database.name + ".lock")


def _instance_lock(reader: Reader) -> Path | None:
    """Return the instance lock of the reader's catalogue (SQLite only: a server database has none)."""
    if isinstance(reader, SqliteReader):
        return instance_lock_path(reader.path)
    if isinstance(reader, EngineReader) and reader.engine.dialect.name == "sqlite":
        database = reader.engine.url.database
        return instance_lock_path(Path(database)) if database and database != ":memory:" else None
    return None


def lock_held(lock: Path | None) -> bool | None:
    """Return whether some process holds the instance lock *lock*, or None when that cannot be told (no
    lock file, as before any daemon ran, or one this user cannot open).

    The probe takes a shared lock for an instant; a daemon starting at that very moment tries again
    (relayd.daemon.instance_lock), so looking never keeps one from starting.
    """
    if lock is None:
        return None
    try:
        handle = lock.open("rb")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


START_HINT = "start it: `systemctl start relayd` (or `relayd run -c CONFIG`)"


def daemon_status(facts: Iterable[ServiceFact], now: datetime, held: bool | None) -> DaemonStatus:
    """Judge whether a daemon serves the catalogue from its heartbeat (*facts*) and whether its instance
    lock is *held* (None: unknown). A daemon that stopped says so; one whose lock is free without having
    said so was killed or crashed; one whose heartbeat is stale is dead, or hung if it still holds the
    lock."""
    fact = next((item for item in facts if item.key == "daemon"), None)
    value = fact.value if fact is not None else {}
    if held and (fact is None or value.get("state") == DAEMON_STOPPED):
        return DaemonStatus(DAEMON_RUNNING, "starting: no heartbeat published yet", "", None, None, None)
    if fact is None:
        detail = "no relayd has published a heartbeat on this catalogue"
        return DaemonStatus(DAEMON_NONE, detail, START_HINT, None, None, None)
    raw_pid = value.get("pid")
    pid = raw_pid if isinstance(raw_pid, int) and not isinstance(raw_pid, bool) else None
    version = str(value["version"]) if value.get("version") is not None else None
    who = f"pid {pid if pid is not None else '?'}, relayd {version or '?'}"
    age = None if fact.updated_at is None else (now - fact.updated_at).total_seconds()
    beat = "never" if age is None else f"{format_duration(age)} ago"
    log_hint = f"its log says why (`journalctl -u relayd`); {START_HINT}"
    if value.get("state") == DAEMON_STOPPED:
        state, detail, hint = DAEMON_STOPPED, f"stopped ({who}) {beat}", START_HINT
    elif held is False:
        state, hint = DAEMON_DEAD, log_hint
        detail = (
            f"gone ({who}): its instance lock is free but it never said it stopped (killed or crashed); "
            f"last heartbeat {beat}"
        )
    elif age is None or age > STALE_HEARTBEAT:
        state, hint = DAEMON_DEAD, log_hint
        detail = f"silent ({who}): last heartbeat {beat}"
        if held:
            detail += "; it still holds its instance lock, so it may be hung"
            hint = f"check `systemctl status relayd` and its log; restart it if it is hung ({START_HINT})"
    else:
        state, detail, hint = DAEMON_RUNNING, f"running ({who}), heartbeat {beat}", ""
    return DaemonStatus(state, detail, hint, pid, version, fact.updated_at)


def daemon_of(reader: Reader, now: datetime, facts: Iterable[ServiceFact] | None = None) -> DaemonStatus:
    """Return whether a daemon serves the reader's catalogue now (its heartbeat and its instance lock)."""
    return daemon_status(
        service_facts(reader) if facts is None else facts, now, lock_held(_instance_lock(reader))
    )


# -- stuck: failing for longer than retry.surface_after, still retrying --------------------------------

#: What to check when a transfer or a poll keeps failing, by error class (shown under "stuck" and sent
#: with the "stuck" notification). Classes a hop raises only with NeedsPerson block instead, and come
#: with their own hint.
STUCK_HINTS = {
    ErrorClass.NETWORK: (
        "this host's network, DNS and proxy, and the service's endpoint in the config (`relayctl "
        "doctor` tries every service)"
    ),
    ErrorClass.TIMEOUT: (
        "the network path to the service, and its status page: it answers too slowly or not at "
        "all (`relayctl doctor`)"
    ),
    ErrorClass.STALL: ("the link and any proxy in between: connections keep stalling mid-transfer"),
    ErrorClass.SERVER: (
        "the service's status page: it keeps answering with server errors; relayd carries on by "
        "itself once it recovers"
    ),
    ErrorClass.RATE_LIMIT: (
        "the hop's connections and concurrency (lower them) or the token's rate limit: the "
        "service keeps rate-limiting relayd"
    ),
    ErrorClass.INTEGRITY: (
        "the link (a proxy that rewrites bodies?) and the destination's disk: copies keep "
        "arriving with the wrong hash"
    ),
    ErrorClass.IO: (
        "the disk and the permissions of the path in the error: a local file operation keeps failing"
    ),
    ErrorClass.INTERNAL: (
        "the traceback in the daemon log (`journalctl -u relayd`), and report it: an unexpected "
        "error inside relayd"
    ),
}
DEFAULT_STUCK_HINT = (
    "the last error and the daemon log (`journalctl -u relayd`); `relayctl doctor` checks every service"
)
# A lower bound for the failure streak columns: a range on them lets SQLite use ix_transfers_failing.
_LONG_AGO = "1970-01-01"


def stuck_hint(error_class: str | None) -> str:
    """Return what to check when failures of *error_class* keep coming."""
    return STUCK_HINTS.get(ErrorClass.parse(error_class), DEFAULT_STUCK_HINT)


def _stuck_filter(repo_id: int | None) -> tuple[str, dict[str, Any]]:
    states, params = _params("s", RETRYING_STATES)
    where = f"failing_since > :long_ago AND surfaced_at IS NOT NULL AND state IN ({states})"
    params["long_ago"] = _LONG_AGO
    if repo_id is not None:
        where += " AND repo_id = :repo_id"
        params["repo_id"] = repo_id
    return where, params


def _stuck_items(
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
            failing_since=_when(row[14]),
            surfaced_at=_when(row[15]),
            next_attempt_at=_when(row[11]),
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
                _when(since),
                _when(surfaced),
                _when(next_at),
                stuck_hint(error_class),
            )
        )
    return items, total


def _summarise(
    reader: Reader, repo_rows: list[tuple[Any, ...]], repo_id: int | None, *, daemon_running: bool = True
) -> tuple[list[RepoSummary], list[BlockedItem]]:
    """Build each repo's summary; return them with the non-transfer blocked items (polls, snapshots).

    Unless *daemon_running*, transfers left running count as interrupted, and nothing has a rate.
    """
    repo_ids = [row[0] for row in repo_rows]
    routes = {row[0]: [str(hop) for hop in (_json(row[4]) or [])] for row in repo_rows}
    all_hops = sorted({hop for route in routes.values() for hop in route})
    snapshots = _current_snapshots(reader, repo_id)
    rates = _running_rates(reader, all_hops, repo_id) if daemon_running else {}
    # Snapshot-level transfers are not per file: keep them out of the per-file arithmetic.
    finishes: dict[int, FinishInfo] = {}
    snapshot_level: dict[tuple[int, str, str], int] = {}
    for repo, snapshot_id, hop, state, error, error_class, hint, updated in _snapshot_transfers(
        reader, repo_ids
    ):
        if state != DONE:
            key = (repo, hop, state)
            snapshot_level[key] = snapshot_level.get(key, 0) + 1
        current = snapshots.get(repo)
        if current is not None and current.id == snapshot_id:
            shown = INTERRUPTED if state == RUNNING and not daemon_running else state
            finishes[repo] = FinishInfo(hop, shown, error, error_class, hint, _when(updated))
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
                next_poll_at=_when(row[11]),
                snapshot=snapshot,
                hops=hops,
                finish=finish,
                blocked=blocked,
                rate=sum(hop.rate for hop in hops),
            )
        )
    return summaries, extra_blocked


def _blocked_items(
    reader: Reader, repos: Iterable[RepoSummary], repo_id: int | None, limit: int | None
) -> list[BlockedItem]:
    names = {repo.id: repo.name for repo in repos}
    hops = sorted({hop for repo in repos for hop in repo.route})
    return [
        BlockedItem("transfer", names.get(rid, str(rid)), hop, path, error, error_class, hint, _when(since))
        for rid, hop, path, error, error_class, hint, since in _blocked_transfers(
            reader, hops, repo_id, limit
        )
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
    rows = _repo_rows(reader, None)
    repos, extra_blocked = _summarise(reader, rows, None, daemon_running=running)
    transfers_blocked = _blocked_items(reader, repos, None, blocked_limit)
    stuck, stuck_total = _stuck_items(reader, rows, None, stuck_limit, daemon_running=running)
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
    rows = _repo_rows(reader, name)
    if not rows:
        return None
    repo_id = rows[0][0]
    service = service_facts(reader)
    daemon = daemon_of(reader, now, service)
    daemon_running = daemon.state == DAEMON_RUNNING
    repos, extra_blocked = _summarise(reader, rows, repo_id, daemon_running=daemon_running)
    repo = repos[0]
    blocked = extra_blocked + _blocked_items(reader, repos, repo_id, None)
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
                        None if next_at is None else _when(next_at),
                        error,
                        error_class,
                        hint,
                        _skipped(state, handles),
                    )
                )
                if state != overall and STATE_ORDER.get(state, 3) < STATE_ORDER[overall]:
                    overall = state
            files.append(FileStatus(path, size, overall, hops))
        files.sort(key=lambda item: (STATE_ORDER.get(item.state, 3), item.path))
    stuck, _ = _stuck_items(reader, rows, repo_id, None, daemon_running=daemon_running)
    return RepoDetail(repo=repo, blocked=blocked, files=files, service=service, stuck=stuck, daemon=daemon)


# -- whereis: the location log -------------------------------------------------------------------------


class TransferRecord(NamedTuple):
    """One file's transfer on one hop; ``handles`` only once it is done (they name the verified copy;
    an unfinished transfer's handles are work in progress such as upload ids, and are not returned)."""

    hop: str
    state: str
    handles: dict[str, Any] | None
    attempts: int
    error: str | None
    error_class: str | None
    hint: str | None
    next_attempt_at: datetime | None
    finished_at: datetime | None


class SnapshotTransfer(NamedTuple):
    """A transfer that finishes a whole snapshot (e.g. lfs_push's commit), with its handles when done."""

    snapshot_id: int
    commit: str
    hop: str
    state: str
    handles: dict[str, Any] | None
    error: str | None
    error_class: str | None
    hint: str | None
    updated_at: datetime | None


class FileLocations(NamedTuple):
    """Where one file (a path with one content) has verified copies."""

    path: str
    size: int
    sha256: str | None
    sha1: str | None
    staged_path: str | None
    commit: str  # the newest snapshot that lists the file: the Hub commit it is pinned to
    current: bool  # listed in the repo's current snapshot
    transfers: dict[str, TransferRecord]  # by hop
    pushed: SnapshotTransfer | None  # the newest done snapshot-level transfer of a snapshot listing it


class WhereIs(NamedTuple):
    repo: RepoSummary
    snapshot: SnapshotInfo | None
    finish: SnapshotTransfer | None  # the current snapshot's finishing transfer, if it has one yet
    files: list[FileLocations]


def _snapshot_level(reader: Reader, repo_id: int, commits: Mapping[int, str]) -> list[SnapshotTransfer]:
    """Return the repo's snapshot-level transfers, newest snapshot first (see _snapshot_transfers for
    why the filter on the repo is applied here)."""
    rows = reader.rows(
        "SELECT repo_id, snapshot_id, hop, state, handles, last_error, error_class, hint, updated_at "
        "FROM transfers WHERE snapshot_id > 0"
    )
    found = [
        SnapshotTransfer(
            snapshot_id=int(row[1]),
            commit=commits.get(int(row[1]), ""),
            hop=str(row[2]),
            state=str(row[3]),
            handles=(_json(row[4]) or {}) if row[3] == DONE else None,
            error=row[5],
            error_class=row[6],
            hint=row[7],
            updated_at=_when(row[8]),
        )
        for row in rows
        if row[0] == repo_id
    ]
    found.sort(key=lambda item: item.snapshot_id, reverse=True)
    return found


def whereis(
    reader: Reader, name: str, *, path: str | None = None, all_snapshots: bool = False
) -> WhereIs | None:
    """Return where each file of the repo *name* has verified copies: the files of its current snapshot
    (every file the repo ever had with *all_snapshots*), only those at *path* when given, by path.

    Return None if there is no such repo. Reads the transfers of the chosen files only, all from one
    snapshot of the catalogue.
    """
    with reader.consistent():
        return _whereis(reader, name, path, all_snapshots)


def _whereis(reader: Reader, name: str, path: str | None, all_snapshots: bool) -> WhereIs | None:
    rows = _repo_rows(reader, name)
    if not rows:
        return None
    repo_id = int(rows[0][0])
    repos, _ = _summarise(reader, rows, repo_id)
    repo = repos[0]
    snapshot = repo.snapshot
    commits = {
        int(row[0]): str(row[1])
        for row in reader.rows('SELECT id, "commit" FROM snapshots WHERE repo_id = :r', {"r": repo_id})
    }
    finishers = _snapshot_level(reader, repo_id, commits)
    finish = next((item for item in finishers if snapshot and item.snapshot_id == snapshot.id), None)

    columns = "f.id, f.path, f.size, COALESCE(f.sha256, b.sha256), COALESCE(f.sha1, b.sha1), b.staged_path"
    where_path = " AND f.path = :path" if path is not None else ""
    params: dict[str, Any] = {"r": repo_id, "path": path}
    if all_snapshots:
        file_rows = reader.rows(
            f"SELECT {columns} FROM files f JOIN blobs b ON b.id = f.blob_id "  # noqa: S608
            f"WHERE f.repo_id = :r{where_path}",
            params,
        )
    elif snapshot is not None:
        params["s"] = snapshot.id
        file_rows = reader.rows(
            f"SELECT {columns} FROM snapshot_files sf JOIN files f ON f.id = sf.file_id "  # noqa: S608
            f"JOIN blobs b ON b.id = f.blob_id WHERE sf.snapshot_id = :s{where_path}",
            params,
        )
    else:
        file_rows = []
    if not file_rows:
        return WhereIs(repo, snapshot, finish, [])
    file_ids = [int(row[0]) for row in file_rows]

    # Which snapshots list each file: the newest is its pin; the current one makes it current.
    newest: dict[int, int] = {}
    current: set[int] = set()
    if all_snapshots:
        for file_id, snapshot_id in reader.rows(
            "SELECT sf.file_id, MAX(sf.snapshot_id) FROM snapshot_files sf "
            "JOIN snapshots s ON s.id = sf.snapshot_id WHERE s.repo_id = :r GROUP BY sf.file_id",
            {"r": repo_id},
        ):
            newest[int(file_id)] = int(snapshot_id)
        if snapshot is not None:
            current = {
                int(row[0])
                for row in reader.rows(
                    "SELECT file_id FROM snapshot_files WHERE snapshot_id = :s", {"s": snapshot.id}
                )
            }
    else:
        assert snapshot is not None  # noqa: S101 - files were found in it
        newest = dict.fromkeys(file_ids, snapshot.id)
        current = set(file_ids)

    # The transfers of those files (one short IN list for a single path, else the snapshot's or repo's).
    columns = (
        "t.file_id, t.hop, t.state, t.handles, t.attempts, t.last_error, t.error_class, t.hint, "
        "t.next_attempt_at, t.finished_at"
    )
    if path is not None:
        id_list, id_params = _params("f", file_ids)
        transfer_rows = reader.rows(
            f"SELECT {columns} FROM transfers t WHERE t.file_id IN ({id_list})",  # noqa: S608
            id_params,
        )
    elif all_snapshots:
        transfer_rows = reader.rows(
            f"SELECT {columns} FROM transfers t WHERE t.repo_id = :r AND t.file_id IS NOT NULL",  # noqa: S608
            {"r": repo_id},
        )
    else:
        transfer_rows = reader.rows(
            f"SELECT {columns} FROM snapshot_files sf JOIN transfers t ON t.file_id = sf.file_id "  # noqa: S608
            "WHERE sf.snapshot_id = :s",
            {"s": params["s"]},
        )
    transfers: dict[int, dict[str, TransferRecord]] = {}
    for row in transfer_rows:
        state = str(row[2])
        transfers.setdefault(int(row[0]), {})[str(row[1])] = TransferRecord(
            hop=str(row[1]),
            state=state,
            handles=(_json(row[3]) or {}) if state == DONE else None,
            attempts=int(row[4] or 0),
            error=row[5],
            error_class=row[6],
            hint=row[7],
            next_attempt_at=_when(row[8]),
            finished_at=_when(row[9]),
        )

    # The newest finished snapshot commit holding each file: look through the done snapshot-level
    # transfers newest first, reading each one's members, until every file has one.
    pushed: dict[int, SnapshotTransfer] = {}
    wanted = set(file_ids)
    for item in finishers:
        if not wanted:
            break
        if item.state != DONE:
            continue
        members = reader.rows(
            "SELECT file_id FROM snapshot_files WHERE snapshot_id = :s", {"s": item.snapshot_id}
        )
        for (file_id,) in members:
            if int(file_id) in wanted:
                pushed[int(file_id)] = item
                wanted.discard(int(file_id))

    ordered: list[tuple[tuple[str, bool, int], FileLocations]] = []
    for row in file_rows:
        file_id = int(row[0])
        location = FileLocations(
            path=str(row[1]),
            size=int(row[2]),
            sha256=row[3],
            sha1=row[4],
            staged_path=row[5],
            commit=commits.get(newest.get(file_id, -1), ""),
            current=file_id in current,
            transfers=transfers.get(file_id, {}),
            pushed=pushed.get(file_id),
        )
        # By path; for one path, the current content first, then newer before older.
        ordered.append(((location.path, not location.current, -newest.get(file_id, 0)), location))
    ordered.sort(key=lambda pair: pair[0])
    return WhereIs(repo, snapshot, finish, [location for _, location in ordered])


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
            route=[str(hop) for hop in (_json(row[3]) or [])],
            destinations=dict(_json(row[4]) or {}),
            paused=bool(row[5]),
        )
        for row in rows
    ]


# -- measured throughput (`relayctl drive status`, `relayctl doctor`) -------------------------------------


class HopRate(NamedTuple):
    """What a hop moved lately: the bytes of the pieces that landed within the window, the time they
    took (gaps longer than the idle gap, and the first piece of each run, are left out), and the summed
    current rate of its running transfers (bytes/s)."""

    hop: str
    bytes: int
    seconds: float
    pieces: int
    running: float

    @property
    def rate(self) -> float | None:
        """Bytes per second over the measured time; None when too little landed to tell."""
        return self.bytes / self.seconds if self.seconds > 0 else None


def measured_rates(
    reader: Reader,
    hops: Sequence[str],
    *,
    window: float = 3600.0,
    idle_gap: float = 300.0,
    now: datetime | None = None,
) -> list[HopRate]:
    """Return each hop's measured throughput over the last *window* seconds, from the times its pieces
    were recorded durable. Transfers that moved nothing (rapid upload, a copy taken from staging) are
    left out: their pieces are all recorded at one moment."""
    moment = now or datetime.now(UTC)
    rates = []
    for hop in hops:
        recent: list[int] = []
        running = 0.0
        for tid, state, rate, handles, updated in reader.rows(
            "SELECT id, state, rate, handles, updated_at FROM transfers WHERE hop = :hop", {"hop": hop}
        ):
            when = _when(updated)
            if state == RUNNING:
                running += float(rate or 0.0)
            moved = not any((_json(handles) or {}).get(key) for key in ("rapid", "via"))
            if when is not None and (moment - when).total_seconds() <= window and moved:
                recent.append(int(tid))
        landed: list[tuple[datetime, int]] = []
        for start in range(0, len(recent), 500):
            names, params = _params("t", recent[start : start + 500])
            for length, done_at in reader.rows(
                f"SELECT length, done_at FROM pieces WHERE transfer_id IN ({names}) "  # noqa: S608
                "AND done_at IS NOT NULL",
                params,
            ):
                when = _when(done_at)
                if when is not None and (moment - when).total_seconds() <= window:
                    landed.append((when, int(length)))
        landed.sort()
        moved_bytes, seconds = 0, 0.0
        for (before, _), (when, length) in pairwise(landed):
            gap = (when - before).total_seconds()
            if gap <= idle_gap:
                moved_bytes += length
                seconds += gap
        rates.append(HopRate(hop, moved_bytes, seconds, len(landed), running))
    return rates


# -- bytes avoided (the web page) ----------------------------------------------------------------------

#: Why a hop moved no payload for a file it is done with, as its handles record it.
RAPID_UPLOAD = "rapid_upload"  # the drive had the content (秒传): pan_upload's ``"rapid": true``
SERVER_HAD_IT = "server_had_it"  # the LFS server already stored the object: lfs_push's ``"skipped": true``
STAGED_ALREADY = "staged_already"  # download found the content staged for another file
DRIVE_COPY_REUSED = "drive_copy_reused"  # a verified drive copy of the content made for another file


class Avoided(NamedTuple):
    """Payload a hop did not move, for one reason: how many files, how many bytes."""

    hop: str
    reason: str
    files: int
    bytes: int


def _avoided_reason(handles: Mapping[str, Any]) -> str | None:
    if handles.get("rapid") is True:
        return RAPID_UPLOAD
    if handles.get("reused") is True:
        return (
            DRIVE_COPY_REUSED if str(handles.get("reason", "")).startswith("reused drive") else STAGED_ALREADY
        )
    if handles.get("skipped") is True:
        return SERVER_HAD_IT
    return None


def bytes_avoided(reader: Reader) -> list[Avoided]:
    """Return, by hop and reason, the files that hops are done with without moving their payload, and
    their bytes, over the done transfers the catalogue holds (a removed repo's are gone with it).

    Only handles that hold a ``true`` are parsed: the markers are booleans, and most handles have none.
    """
    totals: dict[tuple[str, str], list[int]] = {}
    for hop, handles, size in reader.rows(
        "SELECT t.hop, t.handles, f.size FROM transfers t JOIN files f ON f.id = t.file_id "
        "WHERE t.state = 'done' AND CAST(t.handles AS TEXT) LIKE '%true%'"
    ):
        parsed = _json(handles)
        reason = _avoided_reason(parsed) if isinstance(parsed, dict) else None
        if reason is not None:
            total = totals.setdefault((hop, reason), [0, 0])
            total[0] += 1
            total[1] += int(size or 0)
    return [Avoided(hop, reason, files, size) for (hop, reason), (files, size) in sorted(totals.items())]
