"""`relayctl status`: where every repo and file stands, as text, JSON or a live view.

This is the command people run most and on the largest catalogues, so it imports neither SQLAlchemy
(for a SQLite catalogue), nor rich (except for --watch), nor any hop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from relayd.cli.app import App, complete_repo, echo_json, json_option, pass_app
from relayd.cli.repos import unknown_repo
from relayd.errors import UsageError

if TYPE_CHECKING:
    from relayd.catalogue.queries import Reader

BLOCKED_LIMIT = 50


def status_text(reader: Reader, repo: str | None, width: int | None, colour: bool) -> list[str]:
    """Return the text view, every line at most *width* wide (None: no limit), coloured when *colour*."""
    from relayd.catalogue import queries
    from relayd.cli import status_view

    now = datetime.now(UTC)
    if repo is None:
        summary = queries.summary(reader, blocked_limit=BLOCKED_LIMIT, now=now)
        return status_view.summary_lines(summary, now, width, colour)
    detail = queries.repo_detail(reader, repo, now=now)
    if detail is None:
        raise unknown_repo(repo)
    return status_view.detail_lines(detail, now, width)


def redraw(lines: Callable[[int, bool], list[str]], interval: float) -> None:
    """Redraw ``lines(width, colour)`` every *interval* seconds until Ctrl-C."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from relayd.cli.term import use_colour

    console = Console()
    colour = use_colour()

    def frame() -> Text:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        text = [f"relayctl status (every {interval:g}s, Ctrl-C to quit)  {stamp} UTC", ""]
        text += lines(console.width, colour)
        return Text.from_ansi("\n".join(text), no_wrap=True, overflow="ellipsis")

    try:
        with Live(frame(), console=console, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        return


@click.command("status")
@click.argument("repo", required=False, shell_complete=complete_repo)
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
    for longer than retry.surface_after), then one line per repo, fitted to the terminal: a progress bar
    over the whole snapshot, each hop's files done (dl download, up pan_upload, vm vm_pull, push lfs_push,
    copy local_copy), the rate and ETA, and what is blocked, waiting or paused; then what the daemon
    publishes. With REPO: each file of its current snapshot and each hop's state, rate, ETA, last error
    and hint. Colour on a terminal unless NO_COLOR is set. --json writes the documented document
    (docs/status-json.md).
    """
    if watch and as_json:
        raise UsageError("--watch and --json cannot be combined")
    reader = app.reader()
    if watch:
        redraw(lambda width, colour: status_text(reader, repo, width, colour), interval)
        return
    if not as_json:
        from relayd.cli.term import output_width, use_colour

        colour = use_colour()
        click.echo("\n".join(status_text(reader, repo, output_width(), colour)), color=colour)
        return
    echo_json(status_document(reader, repo))


def status_document(reader: Reader, repo: str | None) -> dict[str, Any]:
    """Return the document `relayctl status [REPO] --json` writes (docs/status-json.md): the summary of
    every repo, or every file of *repo*. Raise UsageError when there is no such repo."""
    from relayd.catalogue import queries
    from relayd.cli import status_json

    now = datetime.now(UTC)
    if repo is None:
        return status_json.summary_json(queries.summary(reader, blocked_limit=BLOCKED_LIMIT, now=now), now)
    detail = queries.repo_detail(reader, repo, now=now)
    if detail is None:
        raise unknown_repo(repo)
    return status_json.detail_json(detail, now)
