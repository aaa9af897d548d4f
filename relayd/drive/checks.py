"""The drive's health checks (`relayctl doctor`): relayd's login (read from its saved token, without a
network call or aligo), whether the drive's API answers, and on the Open Platform the account's
third-party rights (the rate to expect) and a warning 14 days before the refresh token ends."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from relayd.drive.base import LOGIN_HINT, TokenLifetime
from relayd.errors import ConfigError
from relayd.health import FAIL, OK, WARN, Check, CheckScope, Finding, answered, failed

if TYPE_CHECKING:
    from relayd.config import DriveConfig
    from relayd.drive.tokens import TokenStore

GROUP = "drive"
#: Warn this long before the Open Platform's refresh token (90 days) ends.
REFRESH_WARNING = timedelta(days=14)
#: What each account gets from the Open Platform, by its third-party rights (docs/drive.md).
RATE_WITH_RIGHTS = "about 50 MB/s (the third-party rights package)"
RATE_WITHOUT_RIGHTS = "about 1.5 MB/s per user (no third-party rights package)"
RIGHTS_HINT = (
    "third-party clients without Aliyun's 三方应用权益包 get about 1.5 MB/s (about 19 h for 100 GB); "
    "see docs/drive.md"
)


def login_store(config: DriveConfig, state_dir: Path) -> TokenStore:
    """Return where the configured backend keeps relayd's drive login."""
    from relayd.drive.open_auth import open_tokens
    from relayd.drive.tokens import TokenStore

    return open_tokens(state_dir) if config.backend == "open" else TokenStore(state_dir / "drive")


def login_hint(config: DriveConfig) -> str:
    """Return how a person logs relayd in for the configured backend."""
    from relayd.drive.open_auth import OPEN_LOGIN_HINT

    return OPEN_LOGIN_HINT if config.backend == "open" else LOGIN_HINT


def refresh_warning(lifetime: TokenLifetime, now: datetime | None = None) -> str | None:
    """Return a warning when the refresh token ends within REFRESH_WARNING, else None."""
    end = lifetime.refresh_expires_at
    if end is None or lifetime.state in ("missing", "refused"):
        return None
    left = end - (now or datetime.now(UTC))
    if left > REFRESH_WARNING:
        return None
    if left.total_seconds() <= 0:
        return f"the drive login's refresh token ended at {end.isoformat(timespec='seconds')}"
    return f"the drive login's refresh token ends in {left.days} days ({end.isoformat(timespec='seconds')})"


def expected_rate(third_party_vip: bool) -> str:
    return RATE_WITH_RIGHTS if third_party_vip else RATE_WITHOUT_RIGHTS


def drive_checks(config: DriveConfig, scope: CheckScope) -> list[Check]:
    """Return the drive login's check (no network: the saved token's lifetime), the API's reach and,
    on the Open Platform, the account's third-party rights."""
    hint = login_hint(config)

    def login() -> list[Finding]:
        if config.backend not in ("aligo", "open"):
            raise ConfigError(f"drive.backend: unknown backend {config.backend!r} (known: 'aligo', 'open')")
        from relayd.units import format_duration

        tokens = login_store(config, scope.state_dir)
        if tokens.directory.exists() and not os.access(tokens.directory, os.R_OK | os.X_OK):
            return [
                Finding(
                    GROUP,
                    "drive login",
                    FAIL,
                    f"cannot read {tokens.directory}",
                    "run doctor as the user relayd runs as",
                )
            ]
        lifetime = tokens.lifetime()
        if lifetime.state == "refused":
            return [Finding(GROUP, "drive login", FAIL, "the drive refused relayd's login", hint)]
        if lifetime.state == "missing":
            return [_missing(config)]
        remaining = lifetime.remaining() or 0.0
        until = lifetime.expires_at.isoformat(timespec="seconds") if lifetime.expires_at else "?"
        if lifetime.state == "valid" and remaining > 0:
            detail = f"access token valid for {format_duration(remaining)} more (until {until})"
        else:
            detail = f"access token expired at {until}; relayd refreshes it on its next call"
        warning = refresh_warning(lifetime)
        if warning is not None:
            return [Finding(GROUP, "drive login", WARN, f"{detail}; {warning}", hint)]
        return [Finding(GROUP, "drive login", OK, detail)]

    def api() -> list[Finding]:
        import requests  # both backends speak through requests

        with requests.get(url, timeout=scope.timeout, allow_redirects=False, stream=True) as response:
            status = response.status_code
        return [answered(GROUP, "drive api", url, status, reach)]

    def rights() -> list[Finding]:
        from relayd.drive.open_backend import OpenDrive

        drive = OpenDrive(config, scope.state_dir)
        try:
            vip = bool(drive.vip_info().get("thirdPartyVip"))
        finally:
            drive.close()
        status = OK if vip else WARN
        detail = f"third-party rights: {'yes' if vip else 'no'}; expect {expected_rate(vip)}"
        return [Finding(GROUP, "drive rights", status, detail, "" if vip else RIGHTS_HINT)]

    url = config.api_url
    reach = f"check drive.api_url ({url}) and the network path"
    checks = [
        Check(GROUP, "drive login", login, label="the drive login"),
        Check(GROUP, "drive api", api, reach, url, "drive.api_url", "the drive API"),
    ]
    if config.backend == "open":
        checks.append(
            Check(
                GROUP,
                "drive rights",
                rights,
                hint,
                url,
                "drive.api_url",
                "the account's rights",
                needs={"drive login": "the drive login", "drive api": "the drive API"},
            )
        )
    return checks


def _missing(config: DriveConfig) -> Finding:
    """The finding for a backend without a saved login (aligo: unless a bootstrap token is set)."""
    if config.backend == "open":
        return Finding(
            GROUP, "drive login", FAIL, "relayd has no Aliyun Drive Open Platform login", login_hint(config)
        )
    ref = config.refresh_token
    try:
        configured = ref.resolve()
    except ConfigError as exc:
        return failed(GROUP, "drive login", exc, LOGIN_HINT)
    if configured:
        return Finding(
            GROUP, "drive login", OK, f"a refresh token {ref.describe()}, exchanged on first use (not yet)"
        )
    return Finding(
        GROUP,
        "drive login",
        FAIL,
        f"relayd has no Aliyun Drive login ({ref.key}: {ref.describe()})",
        LOGIN_HINT,
    )
