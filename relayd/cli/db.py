"""`relayctl db`: the catalogue's schema revision, and upgrading it (with a backup first)."""

from __future__ import annotations

import click

from relayd.cli.app import App, pass_app


@click.group("db")
def db_group() -> None:
    """Inspect or upgrade the catalogue's schema."""


@db_group.command("current")
@pass_app
def current(app: App) -> None:
    """Print the catalogue's schema revision and the one this relayd needs."""
    from relayd.catalogue import migrate
    from relayd.catalogue.db import sqlite_path

    url = app.config.catalogue.url
    head = migrate.head_revision()
    path = sqlite_path(url)
    if path is not None and not path.exists():
        # Looking must not create the file.
        click.echo(f"current: none (no catalogue at {path} yet)")
        click.echo(f"head: {head}")
        return
    from relayd.catalogue.db import make_engine

    engine = make_engine(url, immediate=False)
    try:
        revision = migrate.current_revision(engine)
    finally:
        engine.dispose()
    click.echo(f"current: {revision or 'none'}")
    click.echo(f"head: {head}")
    if revision != head:
        click.echo("run `relayctl db upgrade` to bring the catalogue to head", err=True)


@db_group.command("upgrade")
@pass_app
def upgrade(app: App) -> None:
    """Upgrade the catalogue to this relayd's schema, backing a SQLite file up first."""
    from relayd.catalogue import migrate
    from relayd.catalogue.db import make_engine

    engine = make_engine(app.config.catalogue.url)
    try:
        before = migrate.current_revision(engine)
        head = migrate.head_revision()
        if before == head:
            click.echo(f"already at {head}; nothing to do")
            return
        backup = migrate.upgrade(engine)
        after = migrate.current_revision(engine)
    finally:
        engine.dispose()
    if backup is not None:
        click.echo(f"backup: {backup}")
    click.echo(f"upgraded: {before or 'none'} -> {after}")
