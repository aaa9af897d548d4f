"""`relayctl workers`: the daemons serving the catalogue, one line (or JSON object) each, from their
heartbeats: site, host, pid, hops, version, last seen, and whether each is running, stopped or dead."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from relayd.cli.app import App, echo_json, json_option, pass_app


@click.command("workers")
@json_option
@pass_app
def workers(app: App, as_json: bool) -> None:
    """List the daemons serving this catalogue (one per site and process), dead ones shown dead."""
    from relayd.sites import read_workers, worker_json, worker_line

    found = read_workers(app.reader(), datetime.now(UTC))
    if as_json:
        echo_json({"workers": [worker_json(worker) for worker in found]})
        return
    if not found:
        click.echo("no daemon has published a heartbeat on this catalogue")
        return
    for worker in found:
        click.echo(worker_line(worker))
