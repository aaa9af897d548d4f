"""relayctl: the control CLI of relayd (add, remove, pause, resume, retry, status, config, db).

Control is rows in the catalogue: relayctl writes them through the Store and the daemon notices. This
package imports only click and relayd's light modules at start; each command imports what it needs.
"""

from __future__ import annotations

from pathlib import Path

import click

from relayd import __version__
from relayd.cli import config_cmd, db, repos, status
from relayd.cli.app import DEFAULT_CONFIG, EPILOG, App, RelayctlGroup, setup_logging


@click.group(cls=RelayctlGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("-v", "--verbose", count=True, help="Log more to stderr (-v info, -vv debug).")
@click.version_option(__version__, prog_name="relayctl")
@click.pass_context
def cli(ctx: click.Context, config_path: Path, verbose: int) -> None:
    """Control relayd: watch repos, inspect and steer their transfers."""
    setup_logging(verbose)
    ctx.obj = App(config_path=config_path, verbose=verbose)


for command in (
    repos.add,
    repos.list_repos,
    repos.remove,
    repos.pause,
    repos.resume,
    repos.retry,
    status.status,
    config_cmd.config_group,
    db.db_group,
):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="relayctl")


__all__ = ["cli", "main"]
