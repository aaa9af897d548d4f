"""`relayctl drive login` by QR code, and what `drive status` adds for the Open Platform backend: the QR
code drawn in the terminal (and its URL, for a terminal that cannot show it) and the wait for the scan
(the Open Platform's OAuth login, or the web app's own through aligo), the refresh token's end, the
account's third-party rights and the rate to expect."""

from __future__ import annotations

import io
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from relayd.cli.app import EXIT_RUNTIME
from relayd.errors import RelayError

if TYPE_CHECKING:
    from relayd.config import Config
    from relayd.drive.base import TokenLifetime

#: How often the QR code's status is asked (Aliyun's Android SDK polls every 1.5 s).
QR_POLL = 1.5


def qr_text(url: str) -> str:
    """Return *url* as a QR code of text blocks (two modules per character row) for a terminal."""
    import qrcode

    code = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_L)
    code.add_data(url)
    code.make(fit=True)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue()


def qr_login(config: Config, wait: float, poll: float = QR_POLL) -> dict[str, Any]:
    """Show a login QR code, wait up to *wait* seconds for its scan and confirmation, save the token
    pair and return the login's fact. Exit with status 1 when the code expires or the wait ends."""
    from relayd.drive.open_backend import OpenDrive

    drive = OpenDrive(config.drive, config.daemon.state_dir)
    try:
        qr = drive.auth.start_qr()
        click.echo(qr_text(qr.url))
        click.echo(f"Scan this QR code with the Aliyun Drive app and confirm, or open: {qr.url}")
        deadline = time.monotonic() + wait
        told = False
        while True:
            status, code = drive.auth.qr_status(qr.sid)
            if status == "LoginSuccess" and code:
                lifetime = drive.auth.finish(code, qr.verifier)
                break
            if status == "QRCodeExpired":
                click.echo("relayctl: error: the QR code expired; run `relayctl drive login` again", err=True)
                raise click.exceptions.Exit(EXIT_RUNTIME)
            if status == "ScanSuccess" and not told:
                click.echo("scanned: confirm the login in the Aliyun Drive app")
                told = True
            if time.monotonic() + poll > deadline:
                click.echo(f"relayctl: error: nobody scanned the QR code within {wait:g} s", err=True)
                raise click.exceptions.Exit(EXIT_RUNTIME)
            time.sleep(poll)
    finally:
        drive.close()
    click.echo(f"saved the drive login to {drive.tokens.path} (mode {drive.tokens.mode() or 0:o})")
    fact = lifetime.as_fact()
    click.echo(f"access token valid until {fact['expires_at']}")
    if fact.get("refresh_expires_at"):
        click.echo(f"refresh token valid until {fact['refresh_expires_at']} (relayd renews it by using it)")
    click.echo("run `relayctl retry` to continue transfers that waited for the login")
    return fact


def web_qr_login(config: Config, wait: float, bootstrap_sha256: str | None) -> dict[str, Any]:
    """The web backend's QR login (aligo's own flow): show the code, wait for the scan, save the
    rotated pair; return the login's fact. Exit with status 1 when the code expires or nobody scans."""
    from relayd.drive.aligo_backend import AligoDrive
    from relayd.errors import NeedsPerson

    def show(link: str) -> None:
        click.echo(qr_text(link))
        click.echo(f"Scan this QR code with the Aliyun Drive app and confirm, or open: {link}")

    drive = AligoDrive(config.drive, config.daemon.state_dir)
    try:
        lifetime = drive.qr_login(show, wait, bootstrap_sha256=bootstrap_sha256)
    except NeedsPerson as exc:
        click.echo(f"relayctl: error: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_RUNTIME) from exc
    finally:
        drive.close()
    click.echo(f"saved the drive login to {drive.tokens.path} (mode {drive.tokens.mode() or 0:o})")
    click.echo(f"access token valid until {lifetime.as_fact()['expires_at']}")
    click.echo("run `relayctl retry` to continue transfers that waited for the login")
    return lifetime.as_fact()


def open_status(config: Config, lifetime: TokenLifetime, now: datetime) -> dict[str, Any]:
    """Return what `drive status` adds on the Open Platform: the refresh token's remaining seconds, a
    warning when it ends within 14 days, and the account's rights with the rate to expect (asked of
    the drive; ``rights_error`` when that failed)."""
    from relayd.drive.checks import expected_rate, refresh_warning
    from relayd.drive.open_backend import OpenDrive

    end = lifetime.refresh_expires_at
    data: dict[str, Any] = {
        "refresh_remaining_seconds": None if end is None else round((end - now).total_seconds()),
        "refresh_warning": refresh_warning(lifetime, now),
        "third_party_vip": None,
        "expected_rate": None,
    }
    if lifetime.state in ("missing", "refused"):
        return data
    drive = OpenDrive(config.drive, config.daemon.state_dir)
    try:
        vip = bool(drive.vip_info().get("thirdPartyVip"))
    except RelayError as exc:
        data["rights_error"] = str(exc)
        return data
    finally:
        drive.close()
    data.update(third_party_vip=vip, expected_rate=expected_rate(vip))
    return data


def echo_open_status(data: dict[str, Any]) -> None:
    """Print what open_status found."""
    if data.get("refresh_expires_at"):
        days = (data.get("refresh_remaining_seconds") or 0) / 86400
        click.echo(f"refresh token: valid for {days:.0f} more days (until {data['refresh_expires_at']})")
    elif data.get("state") not in ("missing", "refused"):
        click.echo("refresh token: none (a PKCE app: log in again when the access token ends)")
    if data.get("refresh_warning"):
        click.echo(f"  warning: {data['refresh_warning']}: run `relayctl drive login` before then")
    if data.get("third_party_vip") is not None:
        rights = "yes" if data["third_party_vip"] else "no"
        click.echo(f"third-party rights (三方应用权益包): {rights}; expect {data['expected_rate']}")
    elif data.get("rights_error"):
        click.echo(f"third-party rights: unknown ({data['rights_error']})")
