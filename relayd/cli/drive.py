"""`relayctl drive`: give relayd its Aliyun Drive login, and show how long the access token has left
and how fast the drive moved bytes lately (the catalogue's record of the drive hops' pieces).

The daemon never logs in interactively. With the web backend (``drive.backend = "aligo"``) a person
copies a refresh token from the Aliyun Drive web app into a file readable only by them and runs
``relayctl drive login --refresh-token-file PATH``: relayd exchanges it at once (the drive rotates it)
and keeps the new pair in ``<daemon.state_dir>/drive/token.json`` (mode 0600), where the daemon picks
it up. With the Open Platform backend (``"open"``) ``relayctl drive login`` shows a QR code in the
terminal (and its URL) and waits for the person to scan it with the Aliyun Drive app; the pair goes
to ``<daemon.state_dir>/drive/open/token.json``. Tokens never appear on the command line, in the
catalogue or in logs.
"""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from relayd.cli.app import EXIT_RUNTIME, App, echo_json, json_option, pass_app
from relayd.errors import ConfigError, NeedsPerson, RelayError, UsageError

if TYPE_CHECKING:
    from relayd.catalogue.queries import HopRate

#: What a hop that moves bytes to (``produces``) or from (``consumes``) the drive measures.
UPLOAD, DOWNLOAD = "upload to the drive", "download from the drive"
#: Below this the drive is probably holding relayd to the third-party rate (about 1.5 MB/s per user
#: without Aliyun's paid 三方应用权益包; docs/drive.md).
THIRD_PARTY_RATE = 2_000_000
SLOW_HINT = (
    "third-party clients without Aliyun's paid 三方应用权益包 get about 1.5 MB/s per user (about 19 h "
    "for 100 GB); see docs/drive.md"
)

LOGIN_EPILOG = (
    "Run it without options, scan the QR code with the Aliyun Drive app and confirm (the Open Platform "
    "backend by its OAuth login, the web backend by the web app's own QR login, as aligo does it). Or, "
    "web backend only: get a refresh token from the Aliyun Drive web app (developer tools: "
    "localStorage 'token', field refresh_token), write it to a file only you can read (chmod 600), and "
    "pass that file. Then run `relayctl retry` so transfers blocked on the login continue."
)


@click.group("drive")
def drive_group() -> None:
    """Manage relayd's Aliyun Drive login (a QR code for the Open Platform, a refresh token for the web
    backend)."""


def _read_token(path: Path) -> str:
    """Return the refresh token in the file at *path*. Raise UsageError for an empty or odd file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    token = text.strip()
    if not token or any(char.isspace() for char in token):
        raise UsageError(f"{path} must hold exactly one refresh token (one word, no spaces)")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        click.echo(f"relayctl: warning: {path} is readable by others (mode {mode:o}); chmod 600 it", err=True)
    return token


def _configured_fingerprint(app: App) -> str | None:
    from relayd.drive.tokens import fingerprint

    try:
        configured = app.config.drive.refresh_token.resolve()
    except ConfigError:
        return None
    return fingerprint(configured) if configured else None


def _publish(app: App, fact: dict[str, Any]) -> None:
    """Show the new lifetime in `relayctl status` at once (best effort: the daemon republishes)."""
    try:
        app.store().publish("drive.token", fact)
    except (RelayError, OSError) as exc:
        click.echo(f"relayctl: note: the catalogue was not updated ({exc})", err=True)


def drive_hops() -> dict[str, str]:
    """Return the installed hops that move bytes to or from the drive (they declare that they leave
    their copy there, or read it from there), each with what it measures."""
    from relayd.hops import hop_names, loadable

    classes = loadable(hop_names())
    found = {name: UPLOAD for name, hop in classes.items() if hop.produces == "drive"}
    found.update({name: DOWNLOAD for name, hop in classes.items() if "drive" in hop.consumes})
    return found


def slow_downloads(rates: list[HopRate], hops: dict[str, str]) -> bool:
    """Return whether downloads from the drive ran below the third-party rate."""
    return any(
        hops.get(rate.hop) == DOWNLOAD and rate.rate is not None and rate.rate < THIRD_PARTY_RATE
        for rate in rates
    )


def drive_rates(app: App, hops: dict[str, str]) -> list[HopRate]:
    """Return the measured throughput of the drive hops over the last hour, from the catalogue ([]
    when there is no catalogue yet)."""
    from relayd.catalogue import queries

    path = queries.sqlite_file(app.config.catalogue.url)
    if path is not None and not path.exists():
        return []
    reader = queries.open_reader(app.config.catalogue.url)
    try:
        return queries.measured_rates(reader, list(hops))
    finally:
        reader.close()


def rate_text(rate: HopRate, hops: dict[str, str]) -> str:
    """Return one hop's measured rate as a line of text (*hops*: what each measures)."""
    from relayd.units import format_rate, format_size

    what = f"{hops.get(rate.hop, rate.hop)} ({rate.hop})"
    if rate.rate is None:
        text = f"{what}: nothing measured in the last hour"
    else:
        text = f"{what}: {format_rate(rate.rate)} over the last hour ({format_size(rate.bytes)} measured)"
    return text + (f", {format_rate(rate.running)} now" if rate.running else "")


def _describe(fact: dict[str, Any], now: datetime) -> str:
    expires = fact.get("expires_at")
    if not expires:
        return fact.get("state") or "unknown"
    remaining = (datetime.fromisoformat(expires) - now).total_seconds()
    when = "expired" if remaining <= 0 else f"valid for {remaining / 60:.0f} more minutes"
    return f"{fact.get('state')}: access token {when} (until {expires})"


@drive_group.command("login", epilog=LOGIN_EPILOG)
@click.option(
    "--refresh-token-file",
    "token_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Web backend: a file holding the refresh token (the token itself never goes on the command line).",
)
@click.option(
    "--no-check",
    is_flag=True,
    help="Web backend: only save the token; the daemon exchanges it on first use (default: now).",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="How many seconds to wait for the QR code's scan (a login without --refresh-token-file).",
)
@pass_app
def login(app: App, token_file: Path | None, no_check: bool, wait: float) -> None:
    """Log relayd in to Aliyun Drive (QR code, or a refresh token); saved atomically with mode 0600."""
    from relayd.drive.tokens import TokenStore, new_record

    config = app.config
    if config.drive.backend == "open":
        if token_file is not None or no_check:
            raise UsageError("the Open Platform backend logs in by QR code: run `relayctl drive login` alone")
        from relayd.cli.drive_login import qr_login

        _publish(app, qr_login(config, wait))
        return
    if token_file is None:
        if no_check:
            raise UsageError("--no-check needs --refresh-token-file PATH")
        from relayd.cli.drive_login import web_qr_login

        _publish(app, web_qr_login(config, wait, _configured_fingerprint(app)))
        return
    token = _read_token(token_file)
    tokens = TokenStore(config.daemon.state_dir / "drive")
    bootstrap = _configured_fingerprint(app)
    if no_check:
        with tokens.locked():
            previous = tokens.load()
            tokens.save(
                new_record(
                    token,
                    source="login",
                    previous=previous,
                    bootstrap_sha256=bootstrap or (previous or {}).get("bootstrap_sha256"),
                )
            )
        lifetime = tokens.lifetime()
    else:
        from relayd.drive import make_drive

        drive = make_drive(config.drive, config.daemon.state_dir)
        try:
            lifetime = drive.login(token, bootstrap_sha256=bootstrap)
        except NeedsPerson as exc:
            click.echo(
                "relayctl: error: the drive refused this refresh token (expired, revoked or already "
                "used); get a fresh one and try again",
                err=True,
            )
            raise click.exceptions.Exit(EXIT_RUNTIME) from exc
        finally:
            drive.close()
    _publish(app, lifetime.as_fact())
    click.echo(f"saved the drive login to {tokens.path} (mode {tokens.mode() or 0:o})")
    click.echo(_describe(lifetime.as_fact(), datetime.now(UTC)))
    click.echo("run `relayctl retry` to continue transfers that waited for the login")


@drive_group.command("status")
@json_option
@pass_app
def status(app: App, as_json: bool) -> None:
    """Show relayd's drive login: the access token's remaining lifetime and, on the Open Platform, the
    refresh token's, the account's third-party rights and the rate to expect (one API call).

    Exit status 1 when there is no login or the drive refused it.
    """
    from relayd.drive.checks import login_store

    config = app.config
    tokens = login_store(config.drive, config.daemon.state_dir)
    readable = not tokens.directory.exists() or os.access(tokens.directory, os.R_OK | os.X_OK)
    if not readable:
        raise UsageError(f"cannot read {tokens.directory}: run this as the user relayd runs as")
    lifetime = tokens.lifetime()
    now = datetime.now(UTC)
    remaining = lifetime.remaining(now)
    hops = drive_hops()
    try:
        rates = drive_rates(app, hops)
    except Exception as exc:  # noqa: BLE001 - the rate is a side note; the login's state still shows
        click.echo(f"relayctl: note: cannot read the drive's rate from the catalogue ({exc})", err=True)
        rates = []
    data = {
        **lifetime.as_fact(),
        "remaining_seconds": None if remaining is None else round(remaining),
        "token_file": str(tokens.path),
        "mode": None if tokens.mode() is None else f"{tokens.mode():o}",
        "backend": config.drive.backend,
        "drive": config.drive.drive,
        "api_url": config.drive.api_url,
        "rates": {
            rate.hop: {
                "bytes": rate.bytes,
                "seconds": round(rate.seconds, 1),
                "rate": rate.rate,
                "running": rate.running,
            }
            for rate in rates
        },
    }
    if config.drive.backend == "open":
        from relayd.cli.drive_login import open_status

        data.update(open_status(config, lifetime, now))
    if as_json:
        echo_json(data)
    else:
        click.echo(f"drive login: {_describe(lifetime.as_fact(), now)}")
        if lifetime.refreshed_at is not None:
            click.echo(f"last refreshed: {lifetime.refreshed_at.isoformat()}")
        if config.drive.backend == "open":
            from relayd.cli.drive_login import echo_open_status

            echo_open_status(data)
        click.echo(f"token file: {tokens.path} (mode {data['mode'] or '-'})")
        for rate in rates:
            click.echo(rate_text(rate, hops))
            if slow_downloads([rate], hops):
                click.echo(f"  note: {SLOW_HINT}")
        if lifetime.state in ("missing", "refused"):
            how = (
                "relayctl drive login"
                if config.drive.backend == "open"
                else ("relayctl drive login --refresh-token-file PATH")
            )
            click.echo(f"give relayd a login: {how}")
    if lifetime.state in ("missing", "refused"):
        raise click.exceptions.Exit(EXIT_RUNTIME)
