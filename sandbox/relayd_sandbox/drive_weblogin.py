"""The web app's QR login on the fake drive, as aligo 6.2.8 drives it (``aligo/core/Auth.py``
``_login_by_qrcode`` and ``_login``): ``GET /v2/oauth/authorize`` on the auth host (a ``SESSIONID``
cookie), ``GET /newlogin/qrcode/generate.do`` on the passport host (``{content: {data: {t, ck,
codeContent, resultCode}}}``), then ``POST /newlogin/qrcode/query.do`` with that data as a form,
answered with ``qrCodeStatus`` ``NEW`` → ``SCANED`` → ``CONFIRMED`` (or ``EXPIRED``); the confirmed
answer's ``bizExt`` is base64 of GB18030 JSON whose ``pds_login_result.refreshToken`` is a web refresh
token. The statuses are also those itxve/aliyundriver-refresh-token's README lists (NEW, SCANED,
EXPIRED, CANCELED, CONFIRMED). The rest of the envelope is this fake's guess at the passport
service's; aligo reads only the fields named here.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from relayd_sandbox.drive_accounts import DriveAccounts
from relayd_sandbox.drive_records import JSON, ApiError, DriveSettings, DriveUser

AUTHORIZE_PATH = "/v2/oauth/authorize"
GENERATE_PATH = "/newlogin/qrcode/generate.do"
QUERY_PATH = "/newlogin/qrcode/query.do"
WEB_LOGIN_PATHS = frozenset({AUTHORIZE_PATH, GENERATE_PATH, QUERY_PATH})


@dataclass
class WebQr:
    t: str
    ck: str
    expires_at: float
    status: str = "NEW"
    user_id: str = ""
    polls: int = 0


class DriveWebLogin(DriveAccounts):
    """The passport service's QR login for the web client."""

    def __init__(self, root: Path, settings: DriveSettings, clock: Callable[[], float]) -> None:
        super().__init__(root, settings, clock)
        self._web_qr: dict[str, WebQr] = {}

    def handle_web_login(self, method: str, path: str, raw_body: bytes) -> tuple[JSON, dict[str, str]]:
        """Answer one call of the web QR login; return the JSON and extra headers."""
        if path == AUTHORIZE_PATH and method == "GET":
            return {}, {"Set-Cookie": f"SESSIONID={secrets.token_hex(16)}; Path=/; HttpOnly"}
        if path == GENERATE_PATH and method == "GET":
            with self.lock:
                qr = WebQr(
                    str(int(self.now() * 1000)), secrets.token_hex(24), self.now() + self.settings.qr_ttl
                )
                self._web_qr[qr.ck] = qr
            code = f"https://passport.aliyundrive.com/qrcodeCheck.htm?lgToken={qr.ck}&lg=1"
            return _envelope({"t": qr.t, "ck": qr.ck, "codeContent": code, "resultCode": 100}), {}
        if path == QUERY_PATH and method == "POST":
            form = {k: v[-1] for k, v in parse_qs(raw_body.decode("utf-8", "replace")).items()}
            return _envelope(self._query(form.get("ck", ""))), {}
        raise ApiError(404, "NotFound", "no such api")

    def _query(self, ck: str) -> JSON:
        with self.lock:
            qr = self._web_qr.get(ck)
            if qr is None:
                return {"qrCodeStatus": "EXPIRED", "resultCode": 100}
            qr.polls += 1
            auto = self.settings.qr_auto_login_polls
            if auto is not None and qr.status in ("NEW", "SCANED") and qr.polls >= auto:
                qr.user_id = next(iter(self._users))
                qr.status = "CONFIRMED"
            if qr.status != "CONFIRMED" and qr.expires_at <= self.now():
                qr.status = "EXPIRED"
            data: JSON = {"qrCodeStatus": qr.status, "resultCode": 100}
            if qr.status == "CONFIRMED":
                token = self.issue_refresh_token(self._users[qr.user_id])
                result = {"pds_login_result": {"refreshToken": token, "userId": qr.user_id, "role": "user"}}
                data["bizExt"] = base64.b64encode(json.dumps(result).encode("gb18030")).decode()
                del self._web_qr[ck]
            return data

    def scan_web_qr(self, user: DriveUser, *, confirm: bool = True) -> None:
        """Scan the newest web login QR code with the app (and confirm it unless *confirm* is false)."""
        with self.lock:
            if not self._web_qr:
                raise KeyError("no web QR code was requested")
            qr = next(reversed(self._web_qr.values()))
            qr.user_id, qr.status = user.user_id, "CONFIRMED" if confirm else "SCANED"

    def web_qr_count(self) -> int:
        with self.lock:
            return len(self._web_qr)


def _envelope(data: JSON) -> JSON:
    return {"content": {"data": data, "status": 0, "success": True}, "hasError": False}
