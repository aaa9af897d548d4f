"""The Open Platform's OAuth for relayd: the QR login a person scans with the Aliyun Drive app, and the
token pair kept fresh afterwards (docs/real-services.md, "Aliyun Drive Open Platform").

An app with a client secret gets a 2 h access token and a refresh token that is single-use and valid
90 days; a PKCE app (no secret: ``code_challenge`` S256 and its verifier) gets a 30-day access token
and no refresh token. The pair lives in ``<state_dir>/drive/open/token.json`` (0600, written
atomically) and every refresh runs under that file's lock (``relayd.drive.tokens``), across threads
and processes, so nobody refreshes with a token another refresh already spent.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from relayd.config import DriveConfig
from relayd.drive._redirect import proxy_session
from relayd.drive.answers import failure, throttled
from relayd.drive.base import TokenLifetime
from relayd.drive.multipart import retry_after_seconds
from relayd.drive.tokens import TokenStore, expiry_from, parse_time
from relayd.errors import ConfigError, ErrorClass, NeedsPerson, Permanent, Retryable
from relayd.logs import SCRUBBER

log = logging.getLogger(__name__)

#: What relayd asks the user to allow: read and write the drive's files, read the account.
SCOPES = ("user:base", "file:all:read", "file:all:write")
#: A refresh token lives 90 days from its issue (Duplicati, citing Aliyun's docs).
REFRESH_LIFETIME = timedelta(days=90)
#: Refresh ahead of expiry when the access token has less than this left.
REFRESH_MARGIN = 300.0
OPEN_LOGIN_HINT = "log relayd in again: `relayctl drive login` (scan the QR code), then `relayctl retry`"

Publish = Callable[[str, dict[str, Any]], None]


def open_tokens(state_dir: Path) -> TokenStore:
    """Return the Open Platform backend's saved login (apart from the web backend's)."""
    return TokenStore(state_dir / "drive" / "open")


def retry_after_ms(response: requests.Response) -> float | None:
    """Return the Open Platform's ``x-retry-after`` (milliseconds) in seconds, else ``Retry-After``."""
    raw = response.headers.get("x-retry-after")
    if raw:
        try:
            return max(0.0, float(raw) / 1000.0)
        except ValueError:
            pass
    return retry_after_seconds(response.headers.get("Retry-After"))


def pkce_pair() -> tuple[str, str]:
    """Return a PKCE verifier and its S256 challenge (padded, as Aliyun's SDK sends it)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode()
    return verifier, challenge


@dataclass(frozen=True)
class QrLogin:
    """A login QR code: its session id, the URL it encodes, and the PKCE verifier ("" with a secret)."""

    sid: str
    url: str
    verifier: str


class OpenAuth:
    """relayd's Open Platform login: the QR flow, the saved pair, and refreshes under the token lock."""

    def __init__(
        self, config: DriveConfig, state_dir: Path, session: requests.Session, publish: Publish | None = None
    ) -> None:
        self.config = config
        self.tokens = open_tokens(state_dir)
        self._http = session
        self._publish_fact = publish
        self._lock = threading.Lock()
        self._access = ""
        self._expires_at: datetime | None = None
        self._stamp: tuple[int, int] | None = None

    # -- calls to /oauth --------------------------------------------------------------------------

    def secret(self) -> str:
        """Return the app's client secret, "" for a PKCE app."""
        try:
            secret = (self.config.client_secret.resolve() or "").strip()
        except ConfigError as exc:
            raise NeedsPerson(
                str(exc), hint="fix drive.client_secret", error_class=ErrorClass.CONFIG
            ) from None
        if secret:
            SCRUBBER.add(secret)
        return secret

    def _oauth(self, what: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.config.api_url + path
        try:
            response = self._http.request(method, url, json=body, timeout=(10.0, self.config.timeout))
        except requests.RequestException as exc:
            raise Retryable(
                f"{what}: {type(exc).__name__} talking to the drive", error_class=ErrorClass.NETWORK
            ) from None
        if response.status_code == 429 or response.status_code >= 500:
            raise throttled(what, response.status_code, retry_after_ms(response))
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code != 200 or not isinstance(data, dict):
            data = data if isinstance(data, dict) else {}
            raise failure(
                what,
                response.status_code,
                str(data.get("code") or ""),
                str(data.get("message") or ""),
                login_hint=OPEN_LOGIN_HINT,
            )
        return data

    def start_qr(self) -> QrLogin:
        """Ask for a login QR code for the app (a PKCE app sends its challenge)."""
        secret = self.secret()
        body: dict[str, Any] = {
            "client_id": self.config.client_id,
            "scopes": list(SCOPES),
            "width": 430,
            "height": 430,
        }
        verifier = ""
        if secret:
            body["client_secret"] = secret
        else:
            verifier, challenge = pkce_pair()
            body.update(code_challenge=challenge, code_challenge_method="S256", source="app")
        answer = self._oauth("asking for a login QR code", "POST", "/oauth/authorize/qrcode", body)
        return QrLogin(str(answer.get("sid") or ""), str(answer.get("qrCodeUrl") or ""), verifier)

    def qr_status(self, sid: str) -> tuple[str, str]:
        """Return the QR code's status (WaitLogin, ScanSuccess, LoginSuccess, QRCodeExpired) and the
        authorization code once logged in."""
        answer = self._oauth("waiting for the QR code's scan", "GET", f"/oauth/qrcode/{sid}/status")
        return str(answer.get("status") or ""), str(answer.get("authCode") or "")

    def finish(self, code: str, verifier: str) -> TokenLifetime:
        """Exchange the authorization code for a token pair and save it (under the token lock)."""
        body: dict[str, Any] = {
            "client_id": self.config.client_id,
            "grant_type": "authorization_code",
            "code": code,
        }
        secret = self.secret()
        if secret:
            body["client_secret"] = secret
        else:
            body["code_verifier"] = verifier
        with self.tokens.locked():
            answer = self._oauth("exchanging the login code", "POST", "/oauth/access_token", body)
            self._save(answer, source="login", pkce=not secret)
        return self.tokens.lifetime()

    # -- the saved pair ---------------------------------------------------------------------------

    def _save(self, answer: dict[str, Any], *, source: str, pkce: bool) -> None:
        """Save a token answer atomically (0600). Call with the token lock held."""
        access, refresh = str(answer.get("access_token") or ""), str(answer.get("refresh_token") or "")
        if not access:
            raise Retryable("the drive's token answer holds no access token", error_class=ErrorClass.DRIVE)
        now = datetime.now(UTC)
        expires_at = expiry_from(answer.get("expires_in"), now)
        record = {
            "version": 1,
            "source": source,
            "client_id": self.config.client_id,
            "pkce": pkce,
            "refresh_token": refresh,
            "access_token": access,
            "expires_at": expires_at.isoformat(),
            "refreshed_at": now.isoformat(),
            "refresh_expires_at": (now + REFRESH_LIFETIME).isoformat() if refresh else None,
            "refused": False,
        }
        for secret in (access, refresh):
            if secret:
                SCRUBBER.add(secret)
        self.tokens.save(record)
        self._access, self._expires_at, self._stamp = access, expires_at, self.tokens.stamp()
        self.publish()

    def publish(self) -> None:
        """Publish the login's state as ``drive.token`` (read from the token file)."""
        if self._publish_fact is None:
            return
        try:
            self._publish_fact("drive.token", self.tokens.lifetime().as_fact())
        except Exception:
            log.warning("could not publish the drive token's lifetime", exc_info=True)

    def lifetime(self) -> TokenLifetime:
        return self.tokens.lifetime()

    def access_token(self, *, stale: str | None = None) -> str:
        """Return a live access token: the one in memory while it has time left and the file did not
        change, else the saved one, else a refreshed one. *stale* is a token the drive just refused
        (401): never returned again. Raise NeedsPerson without a login, or once refused."""
        with self._lock:
            now = datetime.now(UTC)
            fresh = self._expires_at is not None and (self._expires_at - now).total_seconds() > REFRESH_MARGIN
            if fresh and self._access != stale and self.tokens.stamp() == self._stamp:
                return self._access
            with self.tokens.locked():
                record = self.tokens.load()
                if record is None:
                    raise NeedsPerson(
                        "relayd has no Aliyun Drive Open Platform login",
                        hint=OPEN_LOGIN_HINT,
                        error_class=ErrorClass.AUTH,
                    )
                if record.get("refused"):
                    raise self.refused()
                access = str(record.get("access_token") or "")
                expires_at = parse_time(record.get("expires_at"))
                left = (expires_at - now).total_seconds() if expires_at else 0.0
                if access and access != stale and left > REFRESH_MARGIN:
                    SCRUBBER.add(access)
                    self._access, self._expires_at, self._stamp = access, expires_at, self.tokens.stamp()
                    return access
                self._refresh(record)
                return self._access

    def refused(self) -> NeedsPerson:
        return NeedsPerson(
            "Aliyun Drive refused relayd's Open Platform login (the refresh token expired, was revoked, "
            "or was used elsewhere)",
            hint=OPEN_LOGIN_HINT,
            error_class=ErrorClass.AUTH,
        )

    def _refresh(self, record: dict[str, Any]) -> None:
        """Refresh with the saved refresh token and save the new pair. Call with the token lock held."""
        refresh = str(record.get("refresh_token") or "")
        if not refresh:
            # A PKCE app's token cannot be refreshed: 30 days, then a new QR login.
            raise NeedsPerson(
                "relayd's Open Platform login expired (a PKCE app's token lasts 30 days)",
                hint=OPEN_LOGIN_HINT,
                error_class=ErrorClass.AUTH,
            )
        SCRUBBER.add(refresh)
        body = {
            "client_id": self.config.client_id,
            "client_secret": self.secret(),
            "grant_type": "refresh_token",
            "refresh_token": refresh,
        }
        try:
            answer = self._oauth("refreshing the access token", "POST", "/oauth/access_token", body)
        except Permanent:
            # A 400 on a refresh: the drive refused this refresh token; never send it again.
            record["refused"] = True
            self.tokens.save(record)
            self.publish()
            raise self.refused() from None
        self._save(answer, source="refresh", pkce=False)
        log.info("refreshed the Open Platform access token (valid until %s)", self._expires_at)


def open_session(config: DriveConfig) -> requests.Session:
    """Return an HTTP session for the Open Platform's API host (no proxy variables unless the rules
    say so, no ~/.netrc)."""
    session = requests.Session()
    session.trust_env = False
    proxy_session(session, config.proxy, config.ca_bundle)
    return session
