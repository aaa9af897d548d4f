"""OpenDrive: the Drive interface on Aliyun Drive's Open Platform (``openapi.alipan.com``), on plain
``requests``: no aligo, no device signature, OAuth ``Bearer`` tokens of a registered app
(``relayd.drive.open_auth``). docs/drive.md says when to choose it; docs/real-services.md lists the
endpoints and what is known of them.

The upload is the flow every Aliyun backend shares (``relayd.drive.multipart``) over
``openFile/create``, ``getUploadUrl``, ``listUploadedParts`` and ``complete``; a file over the app's
per-file limit (``drive.max_file_size``, about 30 GB) is blocked before a byte is sent. Folders are
looked up with ``get_by_path``; download links come from ``getDownloadUrl`` (900 s unless the app
applied for more) and need no Referer. A 429 waits ``x-retry-after`` (milliseconds).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from relayd.config import DriveConfig
from relayd.drive.answers import failure, listed_items, throttled
from relayd.drive.base import (
    DownloadLink,
    DriveFile,
    LocalFile,
    TokenLifetime,
    UploadCallbacks,
    UploadResult,
)
from relayd.drive.hashing import PART_SIZE
from relayd.drive.multipart import (
    COMPLETE_CODES,
    PROOF_REFUSED,
    Created,
    MultipartUploads,
    segments,
)
from relayd.drive.open_auth import OPEN_LOGIN_HINT, OpenAuth, Publish, open_session, retry_after_ms
from relayd.drive.tokens import parse_time
from relayd.errors import ErrorClass, NeedsPerson, Permanent, Retryable
from relayd.units import format_size

log = logging.getLogger(__name__)

OPEN = "/adrive/v1.0/openFile"
LIST_LIMIT = 100
LIMIT_HINT = (
    "the Open Platform refuses single files over about 30 GB (tickstep/aliyunpan#483): split the file "
    "upstream, or route this repo through the web backend (drive.backend = 'aligo'); if your app may "
    "upload more, raise drive.max_file_size, then `relayctl retry`"
)


class OpenDrive(MultipartUploads):
    """Aliyun Drive through the Open Platform. Thread-safe; one instance per daemon (``make_drive``).

    *part_size* overrides the preferred part size (tests use small parts).
    """

    backend = "open"

    def __init__(
        self,
        config: DriveConfig,
        state_dir: Path,
        *,
        publish: Publish | None = None,
        part_size: int = PART_SIZE,
    ) -> None:
        self.config = config
        self._api = open_session(config)
        self.auth = OpenAuth(config, state_dir, self._api, publish)
        self.tokens = self.auth.tokens
        self.tokens.prepare()
        self._preferred_part = part_size
        self._timeout = (min(config.timeout, 30.0), config.timeout)
        # Part URLs are signed; the access token must never reach the upload or download hosts.
        self._data = open_session(config)
        self._drive_id: str | None = None
        self._folders: dict[str, str] = {}
        self._folders_lock = threading.Lock()
        # `relayctl status` shows the login's state from the start, before the first drive call.
        self.auth.publish()

    # -- calls ------------------------------------------------------------------------------------

    def call(
        self, what: str, path: str, body: dict[str, Any], *, accept: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """POST *body* to an API *path* with the access token and return the JSON answer of a 200.
        A 401 gets one new token and one more try. A code in *accept* comes back as ``{"code": ...,
        "status": ...}``; every other failure raises relayd's error for it."""
        stale: str | None = None
        for _attempt in range(2):
            token = self.auth.access_token(stale=stale)
            try:
                response = self._api.post(
                    self.config.api_url + path,
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=self._timeout,
                    allow_redirects=False,
                )
            except requests.Timeout:
                raise Retryable(
                    f"{what}: the drive did not answer in time", error_class=ErrorClass.TIMEOUT
                ) from None
            except requests.RequestException as exc:
                raise Retryable(
                    f"{what}: {type(exc).__name__} talking to the drive", error_class=ErrorClass.NETWORK
                ) from None
            status = response.status_code
            if status == 401 and stale is None:
                stale = token
                continue
            return self._answer(what, response, accept)
        raise failure(
            what, 401, "AccessTokenInvalid", "refused a fresh token too", login_hint=OPEN_LOGIN_HINT
        )

    def _answer(self, what: str, response: requests.Response, accept: tuple[str, ...]) -> dict[str, Any]:
        status = response.status_code
        if status == 429 or status >= 500:
            raise throttled(what, status, retry_after_ms(response))
        if status == 413:
            raise NeedsPerson(
                f"{what}: the drive refused the file as too large (413 {response.text[:40]!r})",
                hint=LIMIT_HINT,
                error_class=ErrorClass.QUOTA,
            )
        try:
            data = response.json() if response.content else {}
        except ValueError:
            data = None
        if not isinstance(data, dict):
            if 200 <= status < 300:
                raise Retryable(f"{what}: the drive's answer was not JSON", error_class=ErrorClass.SERVER)
            data = {}
        if 200 <= status < 300:
            return data
        code = str(data.get("code") or "")
        if code and code in accept:
            return {"code": code, "status": status}
        raise failure(what, status, code, str(data.get("message") or ""), login_hint=OPEN_LOGIN_HINT)

    def drive_id(self) -> str:
        """Return the id of the configured drive ("resource" or "backup"), looked up once."""
        if self._drive_id is not None:
            return self._drive_id
        info = self.call("looking up the drives", "/adrive/v1.0/user/getDriveInfo", {})
        wanted = "resource_drive_id" if self.config.drive == "resource" else "backup_drive_id"
        drive_id = str(info.get(wanted) or info.get("default_drive_id") or "")
        if not drive_id:
            raise Retryable("the drive did not say which drive id to use", error_class=ErrorClass.DRIVE)
        self._drive_id = drive_id
        return drive_id

    def vip_info(self) -> dict[str, Any]:
        """Return the account's membership and whether it holds the third-party rights package
        (``thirdPartyVip``: about 50 MB/s instead of about 1.5 MB/s)."""
        return self.call("reading the account's rights", "/business/v1.0/user/getVipInfo", {})

    @staticmethod
    def _file(item: dict[str, Any]) -> DriveFile:
        if not item.get("file_id"):
            raise Retryable("the drive answered without a file id", error_class=ErrorClass.DRIVE)
        content = item.get("content_hash")
        return DriveFile(
            file_id=str(item["file_id"]),
            name=str(item.get("name") or item.get("file_name") or ""),
            size=int(item.get("size") or 0),
            content_hash=str(content).upper() if content else None,
            drive_id=str(item.get("drive_id") or ""),
            parent_id=str(item.get("parent_file_id") or ""),
        )

    # -- folders and lookup -------------------------------------------------------------------------

    def _by_path(self, path: str) -> dict[str, Any] | None:
        found = self.call(
            "looking up a path",
            f"{OPEN}/get_by_path",
            {"drive_id": self.drive_id(), "file_path": path},
            accept=("NotFound.File",),
        )
        return None if found.get("code") or found.get("trashed") else found

    def ensure_folder(self, path: str) -> str:
        try:
            names = segments(path)
        except ValueError as exc:
            raise Permanent(str(exc), hint="fix drive.root or the repo's drive_folder") from None
        full = "/" + "/".join(names)
        with self._folders_lock:
            cached = self._folders.get(full)
        if cached is not None or not names:
            return cached or "root"
        found = self._by_path(full)
        if found is not None and found.get("type") == "folder":
            folder = str(found["file_id"])
        else:
            folder = "root"
            for name in names:
                created = self.call(
                    f"creating the folder {name}",
                    f"{OPEN}/create",
                    {
                        "drive_id": self.drive_id(),
                        "parent_file_id": folder,
                        "name": name,
                        "type": "folder",
                        "check_name_mode": "refuse",
                    },
                    accept=("NotFound.File",),
                )
                if created.get("code") or not created.get("file_id"):
                    self.forget_folders()
                    raise Retryable(
                        f"a folder above {full} vanished from the drive", error_class=ErrorClass.DRIVE
                    )
                folder = str(created["file_id"])
        with self._folders_lock:
            self._folders[full] = folder
        return folder

    def forget_folders(self) -> None:
        with self._folders_lock:
            self._folders.clear()

    def _children(self, parent_id: str, kind: str) -> Iterator[dict[str, Any]]:
        body: dict[str, Any] = {
            "drive_id": self.drive_id(),
            "parent_file_id": parent_id,
            "limit": LIST_LIMIT,
            "type": kind,
            "order_by": "name",
            "order_direction": "ASC",
        }
        yield from listed_items(
            lambda page: self.call("listing a folder", f"{OPEN}/list", page, accept=("NotFound.File",)), body
        )

    def find(self, parent_id: str, name: str) -> DriveFile | None:
        for item in self._children(parent_id, "file"):
            if item.get("name") == name and not item.get("trashed"):
                return self._file(item)
        return None

    def find_path(self, path: str) -> DriveFile | None:
        try:
            names = segments(path)
        except ValueError as exc:
            raise Permanent(str(exc)) from None
        found = self._by_path("/" + "/".join(names)) if names else None
        return self._file(found) if found is not None and found.get("type") == "file" else None

    def get(self, file_id: str) -> DriveFile | None:
        found = self.call(
            "looking up a file",
            f"{OPEN}/get",
            {"drive_id": self.drive_id(), "file_id": file_id},
            accept=("NotFound.File", "NotFound.FileId"),
        )
        if found.get("code") or found.get("trashed"):
            return None
        return self._file(found)

    def trash(self, file_id: str) -> None:
        self.call(
            "moving a file to the recycle bin",
            f"{OPEN}/recyclebin/trash",
            {"drive_id": self.drive_id(), "file_id": file_id},
            accept=("NotFound.File",),
        )

    def rename(self, file_id: str, name: str) -> DriveFile:
        body = {
            "drive_id": self.drive_id(),
            "file_id": file_id,
            "name": name,
            "check_name_mode": "auto_rename",
        }
        return self._file(self.call("renaming a file", f"{OPEN}/update", body))

    def download_url(self, file_id: str) -> DownloadLink:
        answer = self.call(
            "getting a download link",
            f"{OPEN}/getDownloadUrl",
            {"drive_id": self.drive_id(), "file_id": file_id, "expire_sec": int(self.config.url_lifetime)},
            accept=("NotFound.File", "InvalidResource.FileTypeFolder"),
        )
        if answer.get("code"):
            raise Permanent(
                f"the drive has no file {file_id} to download ({answer['code']})",
                hint="the drive copy is gone; upload it again",
            )
        if not answer.get("url"):
            raise Retryable("the drive answered without a download URL", error_class=ErrorClass.DRIVE)
        expires_at = parse_time(answer.get("expiration")) or datetime.now(UTC) + timedelta(seconds=900)
        # Aliyun's Android SDK fetches these links without a Referer (real-services.md §7.10).
        return DownloadLink(
            url=str(answer["url"]),
            headers={},
            expires_at=expires_at,
            size=int(answer.get("size") or 0),
            content_hash=str(answer.get("content_hash") or "").upper(),
        )

    def token_lifetime(self) -> TokenLifetime:
        return self.auth.lifetime()

    # -- upload -------------------------------------------------------------------------------------

    def upload(
        self,
        local: LocalFile,
        parent_id: str,
        name: str,
        state: dict[str, Any],
        *,
        callbacks: UploadCallbacks,
        cancel: threading.Event,
    ) -> UploadResult:
        """Block a file over the per-file limit before anything is sent, else upload it."""
        limit = self.config.max_file_size
        if local.size > limit:
            raise NeedsPerson(
                f"{name} has {format_size(local.size)}, over the Open Platform's per-file limit of "
                f"{format_size(limit)} (drive.max_file_size)",
                hint=LIMIT_HINT,
                error_class=ErrorClass.QUOTA,
            )
        return super().upload(local, parent_id, name, state, callbacks=callbacks, cancel=cancel)

    def _api_access_token(self) -> str:
        return self.auth.access_token()

    def _api_create(
        self, name: str, parent_id: str, local: LocalFile, count: int, extra: dict[str, Any]
    ) -> Created:
        body = {
            "drive_id": self.drive_id(),
            "parent_file_id": parent_id,
            "name": name,
            "type": "file",
            "check_name_mode": "refuse",
            "size": local.size,
            "part_info_list": [{"part_number": n} for n in range(1, count + 1)],
            **extra,
        }
        created = self.call(
            f"creating {name} on the drive",
            f"{OPEN}/create",
            body,
            accept=("PreHashMatched", "NotFound.File", *PROOF_REFUSED),
        )
        if created.get("code"):
            return Created(code=str(created["code"]))
        urls = {
            int(part["part_number"]): str(part["upload_url"])
            for part in created.get("part_info_list") or []
            if part.get("upload_url")
        }
        return Created(
            file_id=str(created.get("file_id") or ""),
            upload_id=str(created.get("upload_id") or ""),
            rapid=bool(created.get("rapid_upload")),
            exist=bool(created.get("exist")),
            urls=urls,
        )

    def _api_part_urls(self, state: dict[str, Any], numbers: list[int]) -> list[str] | None:
        answer = self.call(
            "refreshing part URLs",
            f"{OPEN}/getUploadUrl",
            {
                "drive_id": state["drive_id"],
                "file_id": state["file_id"],
                "upload_id": state["upload_id"],
                "part_info_list": [{"part_number": n} for n in numbers],
            },
            accept=("NotFound.UploadId",),
        )
        if answer.get("code"):
            return None
        return [str(part.get("upload_url") or "") for part in answer.get("part_info_list") or []]

    def _api_parts_page(self, state: dict[str, Any], marker: int) -> tuple[list[tuple[int, int]], str] | None:
        page = self.call(
            "listing uploaded parts",
            f"{OPEN}/listUploadedParts",
            {
                "drive_id": state["drive_id"],
                "file_id": state["file_id"],
                "upload_id": state["upload_id"],
                "part_number_marker": marker,
            },
            accept=("NotFound.UploadId",),
        )
        if page.get("code"):
            return None
        parts = [
            (int(part.get("part_number") or 0), int(part.get("part_size") or 0))
            for part in page.get("uploaded_parts") or []
        ]
        return parts, str(page.get("next_part_number_marker") or "")

    def _api_complete(self, state: dict[str, Any]) -> DriveFile | str:
        done = self.call(
            f"completing {state['name']}",
            f"{OPEN}/complete",
            {"drive_id": state["drive_id"], "file_id": state["file_id"], "upload_id": state["upload_id"]},
            accept=COMPLETE_CODES,
        )
        return str(done["code"]) if done.get("code") else self._file(done)

    def close(self) -> None:
        self._api.close()
        self._data.close()
