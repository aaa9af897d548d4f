"""`relayctl status`: where every repo and file stands, as text, JSON or a live view.

This is the command people run most and on the largest catalogues, so it imports neither SQLAlchemy
(for a SQLite catalogue), nor rich (except for --watch), nor any hop.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from relayd.cli.app import App, echo_json, json_option, pass_app
from relayd.errors import UsageError

if TYPE_CHECKING:
    from relayd.catalogue.queries import Reader

BLOCKED_LIMIT = 50


def _missing(name: str) -> UsageError:
    return UsageError(f"no repo named {name!r} (see `relayctl list`)")


def _text(reader: Reader, repo: str | None) -> list[str]:
    from relayd.catalogue import queries
    from relayd.cli import status_view

    now = datetime.now(UTC)
    if repo is None:
        return status_view.summary_lines(queries.summary(reader, blocked_limit=BLOCKED_LIMIT, now=now), now)
    detail = queries.repo_detail(reader, repo, now=now)
    if detail is None:
        raise _missing(repo)
    return status_view.detail_lines(detail, now)


def _watch(reader: Reader, repo: str | None, interval: float) -> None:
    """Redraw the text view every *interval* seconds until Ctrl-C."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    def frame() -> Text:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        lines = [
            f"relayctl status (every {interval:g}s, Ctrl-C to quit)  {stamp} UTC",
            "",
            *_text(reader, repo),
        ]
        return Text("\n".join(lines), no_wrap=True, overflow="ellipsis")

    try:
        with Live(frame(), console=Console(), auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        return


@click.command("status")
@click.argument("repo", required=False)
@json_option
@click.option("--watch", is_flag=True, help="A live view, redrawn every --interval (Ctrl-C quits).")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="How often --watch redraws.",
)
@pass_app
def status(app: App, repo: str | None, as_json: bool, watch: bool, interval: float) -> None:
    """Show every repo (blocked items first), or every file of REPO.

    Without REPO: whether the daemon runs (when it does not), what is blocked and what is stuck (failing
    for longer than retry.surface_after), one line per repo with files and bytes done per hop, counts by
    state, the poll and the current rate, then what the daemon publishes. With REPO: each file of its
    current snapshot and each hop's state, rate, ETA, last error and hint. --json writes the documented
    document (docs/status-json.md).
    """
    if watch and as_json:
        raise UsageError("--watch and --json cannot be combined")
    reader = app.reader()
    if watch:
        _watch(reader, repo, interval)
        return
    if not as_json:
        click.echo("\n".join(_text(reader, repo)))
        return
    from relayd.catalogue import queries
    from relayd.cli import status_view

    now = datetime.now(UTC)
    if repo is None:
        echo_json(
            status_view.summary_json(queries.summary(reader, blocked_limit=BLOCKED_LIMIT, now=now), now)
        )
        return
    detail = queries.repo_detail(reader, repo, now=now)
    if detail is None:
        raise _missing(repo)
    echo_json(status_view.detail_json(detail, now))
