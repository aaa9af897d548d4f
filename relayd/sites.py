"""Sites: several daemons, each serving some hops, sharing one catalogue (docs/sites.md).

A daemon names its site (``daemon.site``) and the hops it serves (``daemon.hops``, default every
hop). It claims only those hops' transfers, polls only the repos whose route starts with one of them,
and publishes a heartbeat of its own (the ``workers`` table), which ``relayctl workers`` lists and
``relayctl status`` reads to say which hop no live daemon serves.

A staged copy lives on one machine's staging disk: its *staging holder* (site, host and staging
directory) is recorded with it, and a transfer that reads it is claimed only by a daemon of that holder.

This module decides; it reads the catalogue through a ``Reader`` (no SQLAlchemy) and never writes it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from relayd.errors import ConfigError
from relayd.units import format_duration

if TYPE_CHECKING:
    from relayd.catalogue.queries import Reader
    from relayd.config import Config
    from relayd.hops.base import Hop

#: A daemon publishes its heartbeat every 10 s; one silent for longer than this is dead.
STALE_AFTER = 60.0
RUNNING = "running"
STOPPED = "stopped"
DEAD = "dead"


def staging_holder(config: Config) -> str:
    """Return who holds what this daemon stages: its site, host and staging directory."""
    return f"{config.daemon.site}:{socket.gethostname()}:{config.staging.dir}"


def serves(config: Config, hop: str) -> bool:
    """Return whether this daemon serves *hop* (``daemon.hops``; unset: every hop)."""
    return config.daemon.hops is None or hop in config.daemon.hops


def check_served_hops(config: Config, classes: Mapping[str, type[Hop]]) -> None:
    """Given the installed hop classes by name, raise ConfigError when ``daemon.hops`` can never make
    progress: a hop that is not installed, or one that reads each file only from this machine's
    staging without a served hop that fills it (a staged copy is read only where it was staged)."""
    hops = config.daemon.hops
    if hops is None:
        return
    where = f"{config.path}: daemon.hops"
    unknown = [name for name in hops if name not in classes]
    if unknown:
        raise ConfigError(
            f"{where}: {', '.join(unknown)} is not an installed hop (installed: {', '.join(sorted(classes))})"
        )
    fillers = [name for name in hops if classes[name].writes_staging]
    if fillers:
        return
    writers = sorted(name for name, hop in classes.items() if hop.writes_staging)
    for name in hops:
        hop = classes[name]
        if hop.source is None and hop.consumes == frozenset({"staging"}):
            raise ConfigError(
                f"{where}: {name} reads each file from the staging disk of the daemon that downloaded it, "
                f"and this daemon serves no hop that fills staging ({', '.join(writers) or 'none installed'})"
                f": add one to daemon.hops on this site, or serve {name} where the downloads are staged"
            )


def check_sites(config: Config) -> None:
    """Raise ConfigError when daemon.hops can never make progress, judged against the installed hops
    (a hop whose plugin cannot be imported counts as not installed)."""
    from relayd.hops import hop_names, load_hop_class

    if config.daemon.hops is None:
        return
    classes: dict[str, type[Hop]] = {}
    for name in hop_names():
        try:
            classes[name] = load_hop_class(name)
        except ImportError:
            continue
    check_served_hops(config, classes)


# -- heartbeats ---------------------------------------------------------------------------------------


class WorkerView(NamedTuple):
    """One daemon as its last heartbeat shows it, judged against the time of the look."""

    id: str
    site: str
    host: str
    pid: int
    hops: tuple[str, ...] | None
    version: str
    state: str  # running, stopped (it said so) or dead (silent for longer than STALE_AFTER)
    started_at: datetime | None
    last_seen: datetime | None
    age: float | None  # seconds since the last heartbeat
    leased: int  # transfers it holds under a lease now

    def serves(self, hop: str) -> bool:
        return self.hops is None or hop in self.hops


def read_workers(reader: Reader, now: datetime) -> list[WorkerView]:
    """Return every daemon that published a heartbeat, by site then host; a daemon silent for longer
    than STALE_AFTER without having said it stopped is dead."""
    from relayd.catalogue.queries import _json, _when

    if not reader.has_table("workers"):
        return []
    rows = reader.rows(
        "SELECT w.id, w.site, w.host, w.pid, w.hops, w.version, w.state, w.started_at, w.last_seen, "
        "(SELECT COUNT(*) FROM transfers t WHERE t.lease_owner = w.id AND t.state = 'running') "
        "FROM workers w ORDER BY w.site, w.host, w.started_at"
    )
    workers = []
    for worker_id, site, host, pid, hops, version, said, started_at, last_seen, leased in rows:
        seen = _when(last_seen)
        age = None if seen is None else max(0.0, (now - seen).total_seconds())
        state = DEAD if said != STOPPED and (age is None or age > STALE_AFTER) else said
        served = _json(hops)
        workers.append(
            WorkerView(
                str(worker_id),
                str(site),
                str(host),
                int(pid),
                None if served is None else tuple(str(hop) for hop in served),
                str(version),
                str(state),
                _when(started_at),
                seen,
                age,
                int(leased),
            )
        )
    return workers


def worker_json(worker: WorkerView) -> dict[str, Any]:
    """Return one worker as `relayctl workers --json` shows it."""
    from relayd.cli.status_view import iso

    return {
        "id": worker.id,
        "site": worker.site,
        "host": worker.host,
        "pid": worker.pid,
        "hops": None if worker.hops is None else list(worker.hops),
        "version": worker.version,
        "state": worker.state,
        "started_at": iso(worker.started_at),
        "last_seen": iso(worker.last_seen),
        "last_seen_age_seconds": None if worker.age is None else round(worker.age, 3),
        "leased": worker.leased,
    }


def worker_line(worker: WorkerView) -> str:
    """Return one worker as a line of `relayctl workers`."""
    hops = "every hop" if worker.hops is None else ", ".join(worker.hops)
    seen = "never" if worker.age is None else f"{format_duration(worker.age)} ago"
    line = (
        f"{worker.site:<12} {worker.host}  pid {worker.pid}  relayd {worker.version}  {worker.state:<7}  "
        f"last seen {seen}  hops: {hops}"
    )
    if worker.leased:
        line += f"  ({worker.leased} leased)"
    return line


def unserved_hops(needed: Iterable[str], workers: Iterable[WorkerView]) -> list[str]:
    """Return the hops of *needed* that no running daemon serves, when any daemon runs (with none
    running, status says the daemon is not running instead)."""
    live = [worker for worker in workers if worker.state == RUNNING]
    if not live:
        return []
    return sorted({hop for hop in needed if not any(worker.serves(hop) for worker in live)})


def unserved_hint(hop: str) -> str:
    """Return what `relayctl status` says of a hop no running daemon serves."""
    return f'no daemon serves {hop}: start one with daemon.hops = ["{hop}"] (docs/sites.md)'
