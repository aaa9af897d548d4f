"""The drive's health checks (`relayctl doctor`): relayd's login (read from its saved token, without a
network call or aligo) and whether the drive's API answers."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from relayd.drive.base import LOGIN_HINT
from relayd.errors import ConfigError
from relayd.health import FAIL, OK, Check, CheckScope, Finding, answered, failed

if TYPE_CHECKING:
    from relayd.config import DriveConfig

GROUP = "drive"


def drive_checks(config: DriveConfig, scope: CheckScope) -> list[Check]:
    """Return the drive login's check (no network: the saved token's lifetime) and the API's reach."""

    def login() -> list[Finding]:
        if config.backend != "aligo":
            raise ConfigError(f"drive.backend: unknown backend {config.backend!r} (known: 'aligo')")
        from relayd.drive.tokens import TokenStore
        from relayd.units import format_duration

        tokens = TokenStore(scope.state_dir / "drive")
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
            return [
                Finding(GROUP, "drive login", FAIL, "the drive refused relayd's refresh token", LOGIN_HINT)
            ]
        if lifetime.state == "missing":
            ref = config.refresh_token
            try:
                configured = ref.resolve()
            except ConfigError as exc:
                return [failed(GROUP, "drive login", exc, LOGIN_HINT)]
            if configured:
                detail = f"a refresh token {ref.describe()}, exchanged on first use (not yet)"
                return [Finding(GROUP, "drive login", OK, detail)]
            return [
                Finding(
                    GROUP,
                    "drive login",
                    FAIL,
                    f"relayd has no Aliyun Drive login ({ref.key}: {ref.describe()})",
                    LOGIN_HINT,
                )
            ]
        remaining = lifetime.remaining() or 0.0
        until = lifetime.expires_at.isoformat(timespec="seconds") if lifetime.expires_at else "?"
        if lifetime.state == "valid" and remaining > 0:
            detail = f"access token valid for {format_duration(remaining)} more (until {until})"
        else:
            detail = f"access token expired at {until}; relayd refreshes it on its next call"
        return [Finding(GROUP, "drive login", OK, detail)]

    def api() -> list[Finding]:
        import requests  # the drive's client library (aligo) speaks through requests

        with requests.get(url, timeout=scope.timeout, allow_redirects=False, stream=True) as response:
            status = response.status_code
        return [answered(GROUP, "drive api", url, status, reach)]

    url = config.api_url
    reach = f"check drive.api_url ({url}) and the network path"
    return [
        Check(GROUP, "drive login", login, label="the drive login"),
        Check(GROUP, "drive api", api, reach, url, "drive.api_url", "the drive API"),
    ]
