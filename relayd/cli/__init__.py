"""relayctl: the control CLI of relayd (add, remove, pause, resume, retry, status, config, db).

Control is rows in the catalogue: relayctl writes them through the Store and the daemon notices. This
package imports only click and relayd's light modules at start; a command's module is imported when
that command runs, and each command imports what it needs.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from relayd import __version__
from relayd.cli.app import DEFAULT_CONFIG, EPILOG, App, RelayctlGroup, setup_logging

COMMANDS = {
    "add": "relayd.cli.repos:add",
    "list": "relayd.cli.repos:list_repos",
    "remove": "relayd.cli.repos:remove",
    "pause": "relayd.cli.repos:pause",
    "resume": "relayd.cli.repos:resume",
    "retry": "relayd.cli.repos:retry",
    "status": "relayd.cli.status:status",
    "whereis": "relayd.cli.whereis:whereis",
    "workers": "relayd.cli.workers:workers",
    "doctor": "relayd.cli.doctor:doctor",
    "config": "relayd.cli.config_cmd:config_group",
    "db": "relayd.cli.db:db_group",
    "drive": "relayd.cli.drive:drive_group",
}
#: What `relayctl --url URL` runs instead: the same commands, through a daemon's web API.
REMOTE_COMMANDS = {
    "add": "relayd.cli.remote:add",
    "list": "relayd.cli.remote:list_repos",
    "remove": "relayd.cli.remote:remove",
    "pause": "relayd.cli.remote:pause",
    "resume": "relayd.cli.remote:resume",
    "retry": "relayd.cli.remote:retry",
    "status": "relayd.cli.remote:status",
}


@click.group(
    cls=RelayctlGroup,
    lazy_commands=COMMANDS,
    remote_commands=REMOTE_COMMANDS,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "-c",
    "--config",
    "config_path",
    envvar="RELAYD_CONFIG",
    default=DEFAULT_CONFIG,
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The relayd config file ($RELAYD_CONFIG).",
)
@click.option(
    "--url",
    envvar="RELAYD_URL",
    metavar="URL",
    help="Talk to the daemon at URL (its [web] listen address, or a proxy in front of it) instead of "
    "reading the catalogue: status, list, add, pause, resume, retry, remove ($RELAYD_URL). The token "
    "comes from $RELAYCTL_TOKEN or --token-file.",
)
@click.option(
    "--token-file",
    envvar="RELAYCTL_TOKEN_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the token for --url from this file ($RELAYCTL_TOKEN_FILE); never give the token itself.",
)
@click.option("-v", "--verbose", count=True, help="Log more to stderr (-v info, -vv debug).")
@click.version_option(__version__, prog_name="relayctl")
@click.pass_context
def cli(
    ctx: click.Context, config_path: Path, url: str | None, token_file: Path | None, verbose: int
) -> None:
    """Control relayd: watch repos, inspect and steer their transfers."""
    setup_logging(verbose)
    ctx.obj = App(config_path=config_path, verbose=verbose, url=url, token_file=token_file)


def main() -> None:
    """Console-script entry point: what relayctl creates (a new catalogue, a backup, drive tokens) is
    private to its user, as the daemon's files are."""
    os.umask(0o077)
    cli(prog_name="relayctl")


__all__ = ["cli", "main"]
