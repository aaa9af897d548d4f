"""The state behind the fake Aliyun Drive, and the router of its JSON API.

``DriveStore`` stacks one layer per job, each in its own module and each keeping its own state:
``drive_state`` (the lock, the clock, signing, counters, injected failures), ``drive_accounts`` (users,
rotating tokens, devices), ``drive_files`` (a global SHA-1 content store, so rapid upload hits across
users, and the folders and files of each drive), ``drive_uploads`` (rapid upload and multipart uploads
with signed part URLs) and ``drive_downloads`` (signed download links and the concurrency cap); the
records they share are ``drive_records``.

Nothing here speaks HTTP; ``relayd_sandbox.drive_http`` serves it. Every public method is thread-safe.
The semantics follow the real service (docs/real-services.md names the sources); where it is
undocumented, the choice made here is written next to the code.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from relayd_sandbox.drive_open import OPEN_PREFIX, DriveOpen
from relayd_sandbox.drive_records import (
    CREATE_SESSION_PATH,
    JSON,
    REFRESH_PATH,
    ApiError,
    CallContext,
    DriveSettings,
    DriveStats,
)
from relayd_sandbox.drive_weblogin import DriveWebLogin

Route = Callable[["DriveStore", CallContext, JSON], tuple[int, JSON | None]]


class DriveStore(DriveOpen, DriveWebLogin):
    """All state of one fake drive service, and the router of its JSON API. Methods raise ApiError for
    error answers."""

    def __init__(self, root: Path, settings: DriveSettings, clock: Callable[[], float]) -> None:
        super().__init__(root, settings, clock)
        self._calls: Counter[str] = Counter()

    def handle_api(
        self, path: str, authorization: str | None, raw_body: bytes, device_id: str | None = None
    ) -> tuple[int, JSON | None]:
        """Answer one POST on the API host: parse the body, authenticate, check the device, route."""
        with self.lock:
            self._calls[path] += 1
        body = _parse_body(raw_body)
        known = path in _ROUTES or path in _OPEN_ROUTES or path in (REFRESH_PATH, CREATE_SESSION_PATH)
        if not known or path in self.settings.removed_endpoints:
            # Every web-API error is {code, message}; the message for an unknown path is this fake's.
            raise ApiError(404, "NotFound", "no such api")
        if path == REFRESH_PATH:
            return 200, self.refresh(body)
        ctx = self.authenticate(authorization)
        # The two API families take only their own tokens (an app's OAuth token, the web client's).
        if self.is_open_app(ctx.app_id) != (path in _OPEN_ROUTES):
            raise ApiError(401, "AccessTokenInvalid", "AccessToken is invalid. ErrValidateTokenFailed")
        if path in _OPEN_ROUTES:
            return _OPEN_ROUTES[path](self, ctx, body)
        if path == CREATE_SESSION_PATH:
            return self.create_session(ctx, device_id or "")
        self._check_device(ctx, device_id or "")
        return _ROUTES[path](self, ctx, body)

    def handle_oauth(self, method: str, path: str, authorization: str | None, raw_body: bytes) -> JSON:
        """Answer one call of the Open Platform's ``/oauth/*`` endpoints."""
        with self.lock:
            self._calls[path if "/qrcode/" not in path else "/oauth/qrcode/{sid}/status"] += 1
        if method == "POST" and path == "/oauth/authorize/qrcode":
            return self.qr_authorize(_parse_body(raw_body))
        if method == "POST" and path == "/oauth/access_token":
            return self.open_token(_parse_body(raw_body))
        if method == "GET" and path.startswith("/oauth/qrcode/") and path.endswith("/status"):
            return self.qr_status(path.split("/")[3])
        if method == "GET" and path == "/oauth/users/info":
            ctx = self.authenticate(authorization)
            if not self.is_open_app(ctx.app_id):
                raise ApiError(401, "AccessTokenInvalid", "AccessToken is invalid. ErrValidateTokenFailed")
            return self.users_info(ctx)
        raise ApiError(404, "NotFound", "no such api")

    def batch(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """/v3/batch: run each sub-request (``url`` like "/file/get") and collect the answers."""
        responses = []
        for request in body.get("requests") or []:
            route = _BATCH_ROUTES.get(str(request.get("url")))
            try:
                if route is None:
                    raise ApiError(404, "NotFound", f"unknown batch url {request.get('url')}")
                status, answer = route(self, ctx, dict(request.get("body") or {}))
            except ApiError as exc:
                status, answer = exc.status, {"code": exc.code, "message": exc.message}
            entry: JSON = {"id": request.get("id"), "status": status}
            if answer is not None:
                entry["body"] = answer
            responses.append(entry)
        return 200, {"responses": responses}

    def stats(self) -> DriveStats:
        with self.lock:
            counts = self._counts
            return DriveStats(
                refreshes=counts["refreshes"],
                refresh_failures=counts["refresh_failures"],
                put_bytes=counts["put_bytes"],
                put_bytes_by_upload=dict(self._put_by_upload),
                parts_received=counts["parts_received"],
                rapid_upload_hits=counts["rapid_upload_hits"],
                pre_hash_matches=counts["pre_hash_matches"],
                proofs_rejected=counts["proofs_rejected"],
                download_bytes=counts["download_bytes"],
                downloads=counts["downloads"],
                downloads_over_cap=counts["downloads_over_cap"],
                injected_bytes_sent=counts["injected_bytes_sent"],
                calls=dict(self._calls),
            )


def _parse_body(raw: bytes) -> JSON:
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "InvalidParameter", "The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "InvalidParameter", "The request body must be a JSON object.")
    return body


_ROUTES: dict[str, Route] = {
    "/adrive/v2/file/createWithFolders": DriveStore.create,
    "/adrive/v2/file/create": DriveStore.create,
    "/v2/file/create": DriveStore.create,
    "/v2/file/get_upload_url": DriveStore.get_upload_url,
    "/v2/file/list_uploaded_parts": DriveStore.list_uploaded_parts,
    "/v2/file/complete": DriveStore.complete,
    "/adrive/v3/file/list": DriveStore.list_files,
    "/v2/file/list": DriveStore.list_files,
    "/v2/file/get": DriveStore.get_file,
    "/v2/file/get_download_url": DriveStore.get_download_url,
    "/v3/file/update": DriveStore.update_file,
    "/v2/file/update": DriveStore.update_file,
    "/v2/file/move": DriveStore.move_file,
    "/v2/file/delete": DriveStore.delete,
    "/v2/recyclebin/trash": DriveStore.trash,
    "/v2/recyclebin/restore": DriveStore.restore,
    "/v2/recyclebin/list": DriveStore.list_trash,
    "/v3/batch": DriveStore.batch,
    "/adrive/v2/batch": DriveStore.batch,
    "/v2/user/get": DriveStore.get_user,
    "/users/v1/users/device/renew_session": DriveStore.renew_session,
}

_OPEN_ROUTES: dict[str, Route] = {
    OPEN_PREFIX + "openFile/create": DriveStore.open_create,
    OPEN_PREFIX + "openFile/getUploadUrl": DriveStore.open_upload_url,
    OPEN_PREFIX + "openFile/listUploadedParts": DriveStore.open_list_parts,
    OPEN_PREFIX + "openFile/complete": DriveStore.complete,
    OPEN_PREFIX + "openFile/getDownloadUrl": DriveStore.open_download_url,
    OPEN_PREFIX + "openFile/list": DriveStore.list_files,
    OPEN_PREFIX + "openFile/get": DriveStore.get_file,
    OPEN_PREFIX + "openFile/get_by_path": DriveStore.open_get_by_path,
    OPEN_PREFIX + "openFile/update": DriveStore.update_file,
    OPEN_PREFIX + "openFile/recyclebin/trash": DriveStore.open_trash,
    OPEN_PREFIX + "openFile/delete": DriveStore.open_delete,
    OPEN_PREFIX + "user/getDriveInfo": DriveStore.drive_info,
    OPEN_PREFIX + "user/getSpaceInfo": DriveStore.space_info,
    "/business/v1.0/user/getVipInfo": DriveStore.vip_info,
}

_BATCH_ROUTES: dict[str, Route] = {
    "/file/get": DriveStore.get_file,
    "/file/update": DriveStore.update_file,
    "/file/move": DriveStore.move_file,
    "/file/delete": DriveStore.delete,
    "/file/get_download_url": DriveStore.get_download_url,
    "/recyclebin/trash": DriveStore.trash,
    "/recyclebin/restore": DriveStore.restore,
}
