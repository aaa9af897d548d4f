"""The fake drive's Open Platform login (阿里云盘开放平台, ``openapi.alipan.com``): registered apps (with a
client secret, or PKCE), the QR authorization a person scans in the Aliyun Drive app, and the OAuth
token endpoint. Tokens issued here belong to the app (``app_id`` = its client id): the Open Platform's
API takes them, the web API does not, and the other way round (docs/real-services.md §3).

Shapes follow Aliyun's Android SDK (``AliyunpanClient.kt``, ``AliyunpanQRCodeAuthTask.kt``,
``AuthModel.kt``) and Duplicati's ``AliyunDriveOAuthAccessToken.cs``: access tokens last 2 h, a refresh
token is single-use and valid 90 days, a PKCE app's token lasts 30 days with an empty refresh token.
The error codes of the OAuth endpoints are undocumented; the ones here are this fake's, in the
service's ``{code, message}`` shape.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from relayd_sandbox.drive_accounts import DriveAccounts
from relayd_sandbox.drive_records import JSON, ApiError, DriveSettings, DriveUser

#: QR statuses, in the order a scan moves them (plus the expiry).
QR_WAIT, QR_SCANNED, QR_DONE, QR_EXPIRED = "WaitLogin", "ScanSuccess", "LoginSuccess", "QRCodeExpired"
REFRESH_TTL = 90 * 86400.0
PKCE_TTL = 30 * 86400.0
CODE_TTL = 600.0


@dataclass(frozen=True)
class OpenApp:
    """An app registered on the Open Platform: its client id and secret ("" for a PKCE app)."""

    client_id: str
    client_secret: str

    @property
    def pkce(self) -> bool:
        return not self.client_secret


@dataclass
class QrSession:
    sid: str
    client_id: str
    expires_at: float
    challenge: str = ""
    status: str = QR_WAIT
    user_id: str = ""
    auth_code: str = ""
    polls: int = 0


@dataclass
class AuthCode:
    user_id: str
    client_id: str
    challenge: str
    expires_at: float


class DriveOAuth(DriveAccounts):
    """Open Platform apps, QR sessions, authorization codes and the OAuth token endpoint."""

    def __init__(self, root: Path, settings: DriveSettings, clock: Callable[[], float]) -> None:
        super().__init__(root, settings, clock)
        self._apps: dict[str, OpenApp] = {}
        self._qr: dict[str, QrSession] = {}
        self._codes: dict[str, AuthCode] = {}
        self._open_refresh: dict[str, tuple[str, str, float]] = {}  # token → (user, client, expiry)
        self.open_base_url = ""

    def register_app(self, *, pkce: bool = False) -> OpenApp:
        """Register an app (as a developer does on the Open Platform's console) and return it."""
        with self.lock:
            app = OpenApp(secrets.token_hex(11), "" if pkce else secrets.token_hex(16))
            self._apps[app.client_id] = app
            return app

    def is_open_app(self, app_id: str) -> bool:
        with self.lock:
            return app_id in self._apps

    def _app(self, body: JSON, *, need_secret: bool) -> OpenApp:
        app = self._apps.get(str(body.get("client_id") or ""))
        if app is None:
            raise ApiError(400, "InvalidParameter.ClientId", "The input parameter client_id is not valid.")
        if (
            need_secret
            and not app.pkce
            and not hmac.compare_digest(str(body.get("client_secret") or ""), app.client_secret)
        ):
            raise ApiError(401, "InvalidClient", "client_secret is not valid.")
        return app

    # -- QR authorization -----------------------------------------------------------------------

    def qr_authorize(self, body: JSON) -> JSON:
        """POST /oauth/authorize/qrcode: a QR session for the app; PKCE apps send their challenge."""
        with self.lock:
            app = self._app(body, need_secret=True)
            challenge = str(body.get("code_challenge") or "")
            if app.pkce and (not challenge or body.get("code_challenge_method") != "S256"):
                raise ApiError(400, "InvalidParameter.CodeChallenge", "code_challenge is required (S256).")
            if not isinstance(body.get("scopes"), list) or not body["scopes"]:
                raise ApiError(400, "InvalidParameter.Scopes", "The input parameter scopes is not valid.")
            sid = secrets.token_hex(16)
            self._qr[sid] = QrSession(sid, app.client_id, self.now() + self.settings.qr_ttl, challenge)
            return {"qrCodeUrl": f"{self.open_base_url}/oauth/qrcode/{sid}", "sid": sid}

    def qr_status(self, sid: str) -> JSON:
        """GET /oauth/qrcode/{sid}/status: WaitLogin → ScanSuccess → LoginSuccess (with the code),
        or QRCodeExpired once the QR code's time is up."""
        with self.lock:
            session = self._qr.get(sid)
            if session is None:
                raise ApiError(404, "NotFound.QRCode", "The resource qrcode cannot be found.")
            session.polls += 1
            auto = self.settings.qr_auto_login_polls
            if auto is not None and session.status in (QR_WAIT, QR_SCANNED) and session.polls >= auto:
                self._advance(session, self.user(next(iter(self._users))))
            if session.status != QR_DONE and session.expires_at <= self.now():
                session.status = QR_EXPIRED
            answer: JSON = {"status": session.status}
            if session.status == QR_DONE:
                answer["authCode"] = session.auth_code
            return answer

    def _advance(self, session: QrSession, user: DriveUser) -> None:
        if session.status == QR_WAIT:
            session.status, session.user_id = QR_SCANNED, user.user_id
            return
        if session.status == QR_SCANNED:
            code = secrets.token_hex(16)
            self._codes[code] = AuthCode(
                session.user_id, session.client_id, session.challenge, self.now() + CODE_TTL
            )
            session.status, session.auth_code = QR_DONE, code

    def scan_qr(self, user: DriveUser, sid: str | None = None, *, confirm: bool = True) -> str:
        """Play the person with the phone: scan the QR code *sid* (default: the newest), and confirm
        the login unless *confirm* is false. Return the sid."""
        with self.lock:
            if sid is None:
                if not self._qr:
                    raise KeyError("no QR code was requested")
                sid = next(reversed(self._qr))
            session = self._qr[sid]
            self._advance(session, user)
            if confirm:
                self._advance(session, user)
            return sid

    def qr_sids(self) -> list[str]:
        with self.lock:
            return list(self._qr)

    # -- tokens -----------------------------------------------------------------------------------

    def open_token(self, body: JSON) -> JSON:
        """POST /oauth/access_token: exchange an authorization code (with the secret, or the PKCE
        verifier) or a refresh token (single-use) for a token pair."""
        with self.lock:
            grant = body.get("grant_type")
            app = self._app(body, need_secret=True)
            if grant == "authorization_code":
                found = self._codes.pop(str(body.get("code") or ""), None)
                if found is None or found.client_id != app.client_id or found.expires_at <= self.now():
                    raise ApiError(400, "InvalidParameter.Code", "The input parameter code is not valid.")
                if app.pkce and not _verifier_matches(str(body.get("code_verifier") or ""), found.challenge):
                    raise ApiError(400, "InvalidParameter.CodeVerifier", "code_verifier does not match.")
                return self._pair(found.user_id, app)
            if grant == "refresh_token":
                token = str(body.get("refresh_token") or "")
                owner = self._open_refresh.pop(token, None)
                if owner is None or owner[1] != app.client_id or owner[2] <= self.now():
                    self._counts["refresh_failures"] += 1
                    raise ApiError(
                        400,
                        "InvalidParameter.RefreshToken",
                        "The input parameter refresh_token is not valid.",
                    )
                self._counts["refreshes"] += 1
                return self._pair(owner[0], app)
            raise ApiError(400, "InvalidParameter.GrantType", "The input parameter grant_type is not valid.")

    def _pair(self, user_id: str, app: OpenApp) -> JSON:
        ttl = PKCE_TTL if app.pkce else self.settings.access_token_ttl
        access = self.issue_access_token(self._users[user_id], app_id=app.client_id, ttl=ttl)
        refresh = ""
        if not app.pkce:
            refresh = secrets.token_hex(16)
            self._open_refresh[refresh] = (user_id, app.client_id, self.now() + REFRESH_TTL)
        return {
            "token_type": "Bearer",
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": int(ttl),
        }

    def revoke_refresh_tokens(self, user: DriveUser | None = None) -> None:
        """Invalidate live refresh tokens of both API families (of *user*, or of everyone)."""
        super().revoke_refresh_tokens(user)
        with self.lock:
            for token, (owner, _client, _expiry) in list(self._open_refresh.items()):
                if user is None or owner == user.user_id:
                    del self._open_refresh[token]

    def issue_open_refresh_token(self, user: DriveUser, app: OpenApp) -> str:
        """Return a live refresh token of *app* for *user* (as if it had logged in before)."""
        with self.lock:
            token = secrets.token_hex(16)
            self._open_refresh[token] = (user.user_id, app.client_id, self.now() + REFRESH_TTL)
            return token


def _verifier_matches(verifier: str, challenge: str) -> bool:
    """Return whether *verifier* is the PKCE S256 verifier of *challenge*; Aliyun's SDK keeps the
    base64 padding (unlike RFC 7636), so both forms are accepted (real-services.md §7.6)."""
    if not verifier or not challenge:
        return False
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode()
    return hmac.compare_digest(digest, challenge) or hmac.compare_digest(digest.rstrip("="), challenge)
