"""`relayctl workers`: the daemons serving the catalogue, one line (or JSON object) each, from their
heartbeats: site, host, pid, hops, version, last seen, and whether each is running, stopped or dead."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from relayd.cli.app import App, echo_json, json_option, pass_app
from relayd.units import format_duration

if TYPE_CHECKING:
    from relayd.catalogue.queries.workers import WorkerView


def worker_json(worker: WorkerView) -> dict[str, Any]:
    """Return one worker as `relayctl workers --json` shows it."""
    from relayd.cli.status_json import iso

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
    from relayd.text import safe_text

    hops = "every hop" if worker.hops is None else ", ".join(worker.hops)
    seen = "never" if worker.age is None else f"{format_duration(worker.age)} ago"
    line = (
        f"{worker.site:<10} {worker.state:<7} {worker.host} pid {worker.pid}  relayd {worker.version}  "
        f"last seen {seen}  hops: {hops}"
    )
    if worker.leased:
        line += f"  ({worker.leased} leased)"
    return safe_text(line)


@click.command("workers")
@json_option
@pass_app
def workers(app: App, as_json: bool) -> None:
    """List the daemons serving this catalogue (one per site and process), dead ones shown dead."""
    from relayd.catalogue.queries.workers import workers as read_workers

    found = read_workers(app.reader(), datetime.now(UTC))
    if as_json:
        echo_json({"workers": [worker_json(worker) for worker in found]})
        return
    if not found:
        click.echo("no daemon has published a heartbeat on this catalogue")
        return
    for worker in found:
        click.echo(worker_line(worker))
