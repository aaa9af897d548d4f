"""`relayctl doctor`'s daemon rows, from each daemon's own heartbeat (as `relayctl workers` lists them,
docs/sites.md): ok while a daemon runs; a warning for each dead one, unless a daemon runs again on its
site and host (a restart); and one for each hop of the watched routes that no running daemon serves,
in the words of `relayctl status`. With no daemon running, the row says what the catalogue's one
``daemon`` fact and the instance lock tell (never started, stopped, killed, hung), as status does."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from relayd.catalogue.queries import START_HINT
from relayd.cli.doctor import Row
from relayd.health import OK, WARN
from relayd.units import format_duration

if TYPE_CHECKING:
    from relayd.catalogue.queries import Reader, RepoTarget
    from relayd.catalogue.queries.workers import WorkerView

GROUP = "daemon"


def routed_hops(repos: Sequence[RepoTarget]) -> list[str]:
    """Return the hops the routes of the repos not paused use: each needs a daemon serving it."""
    return list(dict.fromkeys(hop for repo in repos if not repo.paused for hop in repo.route))


def daemon_rows(reader: Reader | None, now: datetime, hops: Iterable[str]) -> list[Row]:
    """Return the daemon rows: whether one runs, each dead one, and each of *hops* no running daemon
    serves."""
    from relayd.catalogue.queries.workers import WORKER_DEAD, WORKER_RUNNING, unserved_hops, workers

    if reader is None:
        return [Row(GROUP, GROUP, WARN, "no catalogue, so no daemon", START_HINT)]
    found = workers(reader, now)
    running = [worker for worker in found if worker.state == WORKER_RUNNING]
    rows = [_running_row(running) if running else _single_daemon_row(reader, now)]
    restarted = {(worker.site, worker.host) for worker in running}
    rows += [
        _dead_row(worker)
        for worker in found
        if worker.state == WORKER_DEAD and (worker.site, worker.host) not in restarted
    ]
    rows += [
        Row(GROUP, f"daemon for {item.hop}", WARN, item.problem, item.fix)
        for item in unserved_hops(hops, found)
    ]
    return rows


def _running_row(running: Sequence[WorkerView]) -> Row:
    where = ", ".join(f"{worker.site} on {worker.host}" for worker in running)
    leased = sum(worker.leased for worker in running)
    return Row(GROUP, GROUP, OK, f"{len(running)} running ({where}), {leased} transfer(s) leased")


def _dead_row(worker: WorkerView) -> Row:
    seen = "never" if worker.age is None else f"{format_duration(worker.age)} ago"
    detail = (
        f"{worker.site} on {worker.host} is dead (pid {worker.pid}, relayd {worker.version}): "
        f"last heartbeat {seen}"
    )
    if worker.leased:
        detail += (
            f"; the {worker.leased} transfer(s) it held go to a daemon serving their hop after daemon.lease"
        )
    hint = (
        f"start relayd again on {worker.host} (site {worker.site}); its log says why it stopped "
        "(`journalctl -u relayd`)"
    )
    return Row(GROUP, f"daemon {worker.site} on {worker.host}", WARN, detail, hint)


def _single_daemon_row(reader: Reader, now: datetime) -> Row:
    """Return the row of a catalogue on which no daemon beats in its own row: what the shared ``daemon``
    fact and the instance lock say, as `relayctl status` says it."""
    from relayd.catalogue.queries import DAEMON_RUNNING, daemon_of, service_facts

    facts = service_facts(reader)
    daemon = daemon_of(reader, now, facts)
    if daemon.state != DAEMON_RUNNING:
        return Row(GROUP, GROUP, WARN, daemon.detail, daemon.hint)
    fact = next((item for item in facts if item.key == "daemon"), None)
    running = fact.value.get("running") if fact is not None else None
    busy = f", {running} transfer(s) running" if running is not None else ""
    return Row(GROUP, GROUP, OK, f"{daemon.detail}{busy}")
