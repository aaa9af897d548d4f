"""Whether a daemon serves the catalogue: the facts it publishes, its heartbeat and its instance lock.

The daemon publishes facts for relayctl (heartbeat, staging budget, token lifetime) in ``service_state``
and holds a lock file while it serves a SQLite catalogue. From both, ``daemon_status`` judges whether
one runs, stopped (it said so), died (its lock is free without its saying so, or it went silent) or
never ran, and says what to do.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from relayd.catalogue.queries.reader import EngineReader, Reader, SqliteReader, as_utc, from_json
from relayd.units import format_duration


class ServiceFact(NamedTuple):
    key: str
    value: dict[str, Any]
    updated_at: datetime | None


class DaemonStatus(NamedTuple):
    """Whether a daemon serves the catalogue, judged from its heartbeat and its instance lock."""

    state: str  # running, stopped (it said so), dead (gone without saying so, or silent), none (never ran)
    detail: str
    hint: str  # what to do ("" while it runs)
    pid: int | None
    version: str | None
    heartbeat_at: datetime | None


def service_facts(reader: Reader) -> list[ServiceFact]:
    """Return what the daemon publishes for relayctl (heartbeat, staging budget, token lifetime, …)."""
    rows = reader.rows("SELECT key, value, updated_at FROM service_state ORDER BY key")
    facts = []
    for key, value, updated_at in rows:
        data = from_json(value)
        facts.append(
            ServiceFact(str(key), data if isinstance(data, dict) else {"value": data}, as_utc(updated_at))
        )
    return facts


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
    (relayd.instance_lock), so looking never keeps one from starting.
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
