"""The daemons serving the catalogue, from their heartbeats (the ``workers`` table): `relayctl workers`
lists them, `relayctl status` reads which hops the running ones serve."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

from relayd.catalogue.queries.reader import Reader, as_utc, from_json

#: A daemon publishes its heartbeat every 10 s; one silent for longer than this is dead.
STALE_AFTER = 60.0
WORKER_RUNNING = "running"
WORKER_STOPPED = "stopped"
WORKER_DEAD = "dead"


class WorkerView(NamedTuple):
    """One daemon as its last heartbeat shows it, judged at the time of the look."""

    id: str
    site: str
    host: str
    pid: int
    hops: tuple[str, ...] | None  # None: every hop
    version: str
    state: str  # running, stopped (it said so) or dead (silent, or its process is gone from this host)
    started_at: datetime | None
    last_seen: datetime | None
    age: float | None  # seconds since the last heartbeat
    leased: int  # transfers it holds under a lease now

    def serves(self, hop: str) -> bool:
        return self.hops is None or hop in self.hops


def _gone_from_this_host(host: str, pid: int) -> bool:
    """Return whether *host* is this machine and no process *pid* runs on it."""
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it runs, as another user
    return False


def workers(reader: Reader, now: datetime) -> list[WorkerView]:
    """Return every daemon that published a heartbeat, by site, host and start. One that did not say
    it stopped is dead when it has been silent for longer than STALE_AFTER, or when it ran on this
    host and its process is gone (killed: its leases come back after daemon.lease)."""
    if not reader.has_table("workers"):
        return []
    rows = reader.rows(
        "SELECT w.id, w.site, w.host, w.pid, w.hops, w.version, w.state, w.started_at, w.last_seen, "
        "(SELECT COUNT(*) FROM transfers t WHERE t.lease_owner = w.id AND t.state = 'running') "
        "FROM workers w ORDER BY w.site, w.host, w.started_at"
    )
    found = []
    for worker_id, site, host, pid, hops, version, said, started_at, last_seen, leased in rows:
        seen = as_utc(last_seen)
        age = None if seen is None else max(0.0, (now - seen).total_seconds())
        silent = age is None or age > STALE_AFTER
        dead = said != WORKER_STOPPED and (silent or _gone_from_this_host(str(host), int(pid)))
        served = from_json(hops)
        found.append(
            WorkerView(
                str(worker_id),
                str(site),
                str(host),
                int(pid),
                None if served is None else tuple(str(hop) for hop in served),
                str(version),
                WORKER_DEAD if dead else str(said),
                as_utc(started_at),
                seen,
                age,
                int(leased),
            )
        )
    return found


class Unserved(NamedTuple):
    """A hop that work waits for and no running daemon serves, with what to do."""

    hop: str

    @property
    def problem(self) -> str:
        return f"no daemon serves {self.hop}"

    @property
    def fix(self) -> str:
        return f'start one with daemon.hops = ["{self.hop}"] (docs/sites.md)'

    @property
    def hint(self) -> str:
        """The problem and its fix in one line, as `relayctl status` says it."""
        return f"{self.problem}: {self.fix}"


def unserved_hops(wanted: Iterable[str], found: Iterable[WorkerView]) -> list[Unserved]:
    """Return the hops of *wanted* that no running daemon serves, when a daemon runs (with none running,
    status says the daemon is not running instead)."""
    running = [worker for worker in found if worker.state == WORKER_RUNNING]
    if not running:
        return []
    missing = sorted({hop for hop in wanted if not any(worker.serves(hop) for worker in running)})
    return [Unserved(hop) for hop in missing]
