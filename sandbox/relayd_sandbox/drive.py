"""A fake Aliyun Drive web API on 127.0.0.1, faithful enough that the real ``aligo`` library and
relayd's own upload and download loops run against it unchanged (docs/real-services.md names the
sources).

Two loopback servers: the API host (what ``https://api.aliyundrive.com`` is rewritten to, see
``relayd.drive._redirect``) and a data host for the signed part-upload and download URLs the API
hands out, as OSS and the CDN would; ``drive_http`` answers both. Bytes are streamed to and from disk
under the given directory, so multi-GB files work with flat memory. State, knobs and counters live in
``drive_store``.

Typical use::

    with FakeDrive(tmp_path / "drive") as drive:
        token = drive.issue_refresh_token()
        drive.fail_next("/v2/file/complete", 429, retry_after=3)
        ...
        assert drive.lookup("/relayd/owner/name/x.bin").content_hash == sha1
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from relayd_sandbox._http import LoggedRequest, RequestLog
from relayd_sandbox.drive_hashes import pre_hash, proof_code, proof_offset
from relayd_sandbox.drive_http import DriveServer
from relayd_sandbox.drive_records import (
    DOWNLOAD_PREFIX,
    JSON,
    UPLOAD_PREFIX,
    WEB_APP_ID,
    DriveSettings,
    DriveStats,
    DriveUser,
    Injection,
    StoredFile,
    UploadInfo,
)
from relayd_sandbox.drive_store import DriveStore

__all__ = [
    "DOWNLOAD_PREFIX",
    "UPLOAD_PREFIX",
    "WEB_APP_ID",
    "DriveSettings",
    "DriveStats",
    "DriveUser",
    "FakeDrive",
    "StoredFile",
    "UploadInfo",
    "pre_hash",
    "proof_code",
    "proof_offset",
    "sha1_hex_upper",
]

_log = logging.getLogger(__name__)


class FakeDrive:
    """A fake Aliyun Drive: an API server plus a data server for part-upload and download URLs.

    *root* holds the stored bytes. One user exists from the start (``user``); add more with
    ``add_user``. Knobs that act on "the next N" requests are methods; standing behaviour is in
    ``settings`` (a DriveSettings), which may be changed at any time. With *data_tls* (a server
    context, ``relayd_sandbox.tls.ThrowawayCA.server_context``) the data host speaks HTTPS, as OSS and
    the CDN do; the API host stays plain HTTP.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        settings: DriveSettings | None = None,
        clock: Callable[[], float] = time.time,
        user_name: str = "relayd",
        api_port: int = 0,
        data_port: int = 0,
        data_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings = settings or DriveSettings()
        self.store = DriveStore(self.root, self.settings, clock)
        self.requests = RequestLog()
        self.user = self.store.add_user(user_name)
        self._api_port = api_port
        self._data_port = data_port
        self._data_tls = data_tls
        self._api: DriveServer | None = None
        self._data: DriveServer | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeDrive:
        """Bind both servers on 127.0.0.1 and serve in background threads.

        After a stop(), start() binds the same ports again with all state kept, so a test can
        take the service down and bring it back while URLs already handed out stay valid.
        """
        self._api = DriveServer(self, "api", self._api_port)
        self._data = DriveServer(self, "data", self._data_port, self._data_tls)
        self._api_port, self._data_port = self._api.port, self._data.port
        self.store.data_base_url = self._data.base_url
        self._api.start()
        self._data.start()
        _log.info("fake drive: api %s, data %s", self._api.base_url, self._data.base_url)
        return self

    def stop(self) -> None:
        """Stop both servers and cut every open connection."""
        for server in (self._api, self._data):
            if server is not None:
                server.stop()
        self._api = self._data = None

    def __enter__(self) -> FakeDrive:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        """The base that ``https://api.aliyundrive.com`` (and the user and auth hosts) map to."""
        if self._api is None:
            raise RuntimeError("FakeDrive is not started")
        return self._api.base_url

    @property
    def data_url(self) -> str:
        """The base of the part-upload and download URLs the API hands out."""
        if self._data is None:
            raise RuntimeError("FakeDrive is not started")
        return self._data.base_url

    @property
    def default_drive_id(self) -> str:
        return self.user.default_drive_id

    # -- accounts and tokens ----------------------------------------------------------------

    def add_user(self, user_name: str) -> DriveUser:
        """Create another account (its own drives; the content store is shared)."""
        return self.store.add_user(user_name)

    def issue_refresh_token(self, user: DriveUser | None = None, *, app_id: str = WEB_APP_ID) -> str:
        """Return a valid bootstrap refresh token of *app_id* (default: the web client's, as relayd
        uses); it dies at its first use (rotation)."""
        return self.store.issue_refresh_token(user or self.user, app_id=app_id)

    def issue_access_token(self, user: DriveUser | None = None, *, app_id: str = WEB_APP_ID) -> str:
        """Return a valid access token of *app_id*: the download links it gets count against that
        app's share of the user's concurrent downloads."""
        return self.store.issue_access_token(user or self.user, app_id=app_id)

    def token_payload(self, user: DriveUser | None = None, *, valid_access_token: bool = True) -> JSON:
        """Return a token answer as aligo stores it in ``<config>/<name>.json``: a live refresh
        token, and a live access token unless *valid_access_token* is false (then the first API
        call gets a 401 and drives a refresh)."""
        payload = self.store.token_response(user or self.user)
        if not valid_access_token:
            payload["access_token"] = "expired-" + payload["access_token"]
        return payload

    def expire_access_tokens(self, user: DriveUser | None = None) -> None:
        """Expire every current access token: the next API call answers 401 AccessTokenExpired."""
        self.store.expire_access_tokens(user)

    def revoke_refresh_tokens(self, user: DriveUser | None = None) -> None:
        """Invalidate live refresh tokens: the next refresh answers 400 InvalidParameter.RefreshToken."""
        self.store.revoke_refresh_tokens(user)

    def log_out_device(self, device_id: str, user: DriveUser | None = None) -> None:
        """Log a device (an ``x-device-id``) out of the account, as a person does in the app."""
        self.store.log_out_device(user or self.user, device_id)

    def advance_clock(self, seconds: float) -> None:
        """Move the fake's clock: tokens, URLs and upload ids expire as if time had passed."""
        self.store.advance_clock(seconds)

    # -- content ----------------------------------------------------------------------------

    def seed_content(self, source: bytes | Path | str) -> str:
        """Make content known (as if another user had uploaded it) and return its content_hash."""
        return self.store.seed_content(source if isinstance(source, bytes) else Path(source))

    # -- knobs: the next N requests ---------------------------------------------------------

    def fail_next(
        self,
        path: str,
        status: int,
        *,
        code: str | None = None,
        message: str = "",
        body: str | JSON | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
        count: int = 1,
    ) -> None:
        """Answer the next *count* requests on *path* with *status*.

        *path* is an API path ("/v2/file/complete") or a data prefix (UPLOAD_PREFIX,
        DOWNLOAD_PREFIX); it also matches everything below it. The body is the service's error
        for the role (JSON on the API host, XML on the data host) with *code* (default from the
        status, e.g. 429 → TooManyRequests), or *body* verbatim (a str, e.g. an HTML gateway page,
        or a dict sent as JSON).
        """
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = f"{retry_after:g}"
        self.store.inject(
            Injection(
                path=path,
                remaining=count,
                status=status,
                code=code or _DEFAULT_CODES.get(status, f"Status{status}"),
                message=message,
                body=body,
                headers=extra,
            )
        )

    def drop_next(self, path: str, *, after_bytes: int = 0, count: int = 1) -> None:
        """Drop the connection of the next *count* requests on *path*.

        On a part PUT: after *after_bytes* bytes of the body (nothing of the part is kept); when
        the whole body is shorter, the part IS kept and only the answer is lost. On a download
        GET: after *after_bytes* bytes of the answer body. On the API host: before any answer.
        """
        self.store.inject(Injection(path=path, remaining=count, drop_after=after_bytes))

    def reject_next_proofs(self, count: int = 1) -> None:
        """Refuse the next *count* rapid-upload proofs (400) even when they are right."""
        self.store.reject_next_proofs(count)

    def corrupt_next_parts(self, count: int = 1) -> None:
        """Flip the first byte of each of the next *count* part PUTs as they arrive (damage in
        transit): the part is acknowledged, and complete reports the content hash of what it got."""
        self.store.corrupt_next_parts(count)

    def expire_upload_urls(self, upload_id: str | None = None) -> None:
        """Make every part URL issued so far (for one upload, or all) answer 403 "expired"."""
        self.store.expire_upload_urls(upload_id)

    def expire_download_urls(self) -> None:
        """Make every download URL issued so far answer 403 "Request has expired."."""
        self.store.expire_download_urls()

    def expire_upload_ids(self, upload_id: str | None = None) -> None:
        """Forget open uploads (one, or all): their calls answer 404 NotFound.UploadId."""
        self.store.expire_upload_ids(upload_id)

    def corrupt_file(
        self, path_or_id: str, *, offset: int | None = None, drive_id: str | None = None
    ) -> None:
        """Flip one stored byte of a file (same size, same content_hash), so downloads are wrong."""
        found = self.lookup(path_or_id, drive_id=drive_id) if path_or_id.startswith("/") else None
        self.store.corrupt(found.file_id if found is not None else path_or_id, offset)

    # -- inspection -------------------------------------------------------------------------

    def stats(self) -> DriveStats:
        return self.store.stats()

    def lookup(self, path: str, *, drive_id: str | None = None) -> StoredFile | None:
        """Return the visible file or folder at *path* ("/relayd/owner/name/x.bin"), or None."""
        return self.store.lookup(path, drive_id or self.default_drive_id)

    def file(self, file_id: str) -> StoredFile | None:
        return self.store.view(file_id)

    def files(self, *, drive_id: str | None = None, include_hidden: bool = False) -> list[StoredFile]:
        """Return every file and folder (all drives unless *drive_id*), sorted by path; hidden ones
        (trashed, or still uploading) only with *include_hidden*."""
        return self.store.all_files(drive_id, include_hidden)

    def upload(self, upload_id: str) -> UploadInfo | None:
        return self.store.upload_info(upload_id)

    def uploads(self) -> list[UploadInfo]:
        return [info for uid in self.store.upload_ids() if (info := self.store.upload_info(uid))]

    def authorized_data_requests(self) -> list[LoggedRequest]:
        """Return the part PUTs and download GETs that carried an Authorization header (relayd
        must send none: the access token must not reach OSS or CDN hosts)."""
        return [
            entry
            for entry in self.requests.snapshot()
            if entry.path.startswith((UPLOAD_PREFIX + "/", DOWNLOAD_PREFIX + "/"))
            and entry.header("Authorization") is not None
        ]


_DEFAULT_CODES = {
    400: "InvalidParameter",
    401: "AccessTokenInvalid",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


def sha1_hex_upper(path: Path) -> str:
    """Return the uppercase SHA-1 of a file, streaming it (the drive's content_hash)."""
    digest = hashlib.sha1()
    with path.open("rb") as handle:
        while data := handle.read(1024 * 1024):
            digest.update(data)
    return digest.hexdigest().upper()
