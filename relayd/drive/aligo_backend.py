"""AligoDrive: the Drive interface for Aliyun Drive's web API, on aligo 6.2.8 for auth and low-level
API calls (``relayd.drive.aligo_session``).

aligo does the token refresh and the JSON calls (``create_file``, ``get_upload_url``, ``complete_file``,
``get_file``, ``get_download_url``, folder creation, ``post`` for what it does not wrap). relayd does the
rest (reference/aliyun-drive.md §3-§10): the upload flow shared with the Open Platform backend
(``relayd.drive.multipart``: rapid upload, sequential PUTs without the access token, resume, verify),
folders and listings, and download links. aligo's own upload and download are never called (no
resume, unchecked statuses).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from relayd.drive.aligo_session import AligoSession
from relayd.drive.answers import listed_items
from relayd.drive.base import LOGIN_HINT, DownloadLink, DriveFile, LocalFile, TokenLifetime
from relayd.drive.multipart import (
    COMPLETE_CODES,
    PROOF_REFUSED,
    Created,
    MultipartUploads,
    segments,
)
from relayd.drive.tokens import new_record, parse_time
from relayd.errors import ErrorClass, NeedsPerson, Permanent, Retryable

LIST_LIMIT = 200
#: The web origins whose Referer the drive's download links accept: the configured one is sent, the
#: other is offered to vm_pull for when the data host refuses it (syhyz1990/baiduyun#333).
REFERERS = ("https://www.aliyundrive.com/", "https://www.alipan.com/")


class AligoDrive(AligoSession, MultipartUploads):
    """Aliyun Drive through aligo. Thread-safe; one instance per daemon (``make_drive``)."""

    backend = "aligo"

    # -- folders and lookup -------------------------------------------------------------------

    def ensure_folder(self, path: str) -> str:
        try:
            names = segments(path)
        except ValueError as exc:
            raise Permanent(str(exc), hint="fix drive.root or the repo's drive_folder") from None
        from aligo.request import CreateFileRequest

        parent = "root"
        walked = ""
        for name in names:
            walked += "/" + name
            with self._folders_lock:
                cached = self._folders.get(walked)
            if cached is not None:
                parent = cached
                continue
            created = self._call(
                f"creating the folder {walked}",
                "create_file",
                CreateFileRequest(
                    name=name,
                    type="folder",
                    parent_file_id=parent,
                    drive_id=self.drive_id(),
                    check_name_mode="refuse",
                ),
                accept=("NotFound.File",),
            )
            if not created:
                self.forget_folders()
                raise Retryable(
                    f"a folder above {walked} vanished from the drive", error_class=ErrorClass.DRIVE
                )
            if not created.file_id:
                raise Retryable(
                    f"creating the folder {walked}: no folder id in the answer", error_class=ErrorClass.DRIVE
                )
            parent = str(created.file_id)
            with self._folders_lock:
                self._folders[walked] = parent
        return parent

    def forget_folders(self) -> None:
        """Drop the folder-id cache (after a folder was found missing)."""
        with self._folders_lock:
            self._folders.clear()

    def _children(self, parent_id: str, kind: str) -> Iterator[Any]:
        """Yield the items of a folder of type *kind*, page by page (a repeated marker ends the loop:
        aligo's own listing spins forever on a null marker, reference §6)."""
        from aligo.request import GetFileListRequest

        body = GetFileListRequest(
            parent_file_id=parent_id, drive_id=self.drive_id(), type=kind, limit=LIST_LIMIT
        ).to_dict()
        body.update(order_by="name", order_direction="ASC", marker=None)
        yield from listed_items(
            lambda page: self._post(
                "listing a folder", "/adrive/v3/file/list", page, accept=("NotFound.File",)
            ),
            body,
        )

    def find(self, parent_id: str, name: str) -> DriveFile | None:
        for item in self._children(parent_id, "file"):
            if item.get("name") == name and not item.get("trashed"):
                return DriveFile(
                    file_id=str(item["file_id"]),
                    name=name,
                    size=int(item.get("size") or 0),
                    content_hash=str(item["content_hash"]).upper() if item.get("content_hash") else None,
                    drive_id=str(item.get("drive_id") or ""),
                    parent_id=str(item.get("parent_file_id") or parent_id),
                )
        return None

    def find_path(self, path: str) -> DriveFile | None:
        try:
            names = segments(path)
        except ValueError as exc:
            raise Permanent(str(exc)) from None
        if not names:
            return None
        parent = "root"
        for name in names[:-1]:
            folder = next(
                (item for item in self._children(parent, "folder") if item.get("name") == name), None
            )
            if folder is None:
                return None
            parent = str(folder["file_id"])
        return self.find(parent, names[-1])

    def get(self, file_id: str) -> DriveFile | None:
        found = self._call(
            "looking up a file",
            "get_file",
            file_id=file_id,
            drive_id=self.drive_id(),
            accept=("NotFound.File",),
        )
        if not found:
            return None
        if getattr(found, "trashed", False):
            return None
        return self._file(found)

    def trash(self, file_id: str) -> None:
        self._call(
            "moving a file to the recycle bin",
            "move_file_to_trash",
            file_id=file_id,
            drive_id=self.drive_id(),
            accept=("NotFound.File",),
        )

    def rename(self, file_id: str, name: str) -> DriveFile:
        renamed = self._call(
            "renaming a file",
            "rename_file",
            file_id=file_id,
            name=name,
            check_name_mode="auto_rename",
            drive_id=self.drive_id(),
        )
        return self._file(renamed)

    def download_url(self, file_id: str) -> DownloadLink:
        answer = self._call(
            "getting a download link",
            "get_download_url",
            file_id=file_id,
            expire_sec=int(self.config.url_lifetime),
            drive_id=self.drive_id(),
            accept=("NotFound.File", "InvalidResource.FileTypeFolder"),
        )
        if not answer:
            raise Permanent(
                f"the drive has no file {file_id} to download ({answer.code})",
                hint="the drive copy is gone; upload it again",
            )
        if not answer.url:
            raise Retryable("the drive answered without a download URL", error_class=ErrorClass.DRIVE)
        expires_at = parse_time(answer.expiration) or datetime.now(UTC) + timedelta(
            seconds=self.config.url_lifetime
        )
        others = tuple({"Referer": referer} for referer in REFERERS if referer != self.config.referer)
        return DownloadLink(
            url=str(answer.url),
            headers={"Referer": self.config.referer},
            expires_at=expires_at,
            size=int(answer.size or 0),
            content_hash=str(answer.content_hash or "").upper(),
            alternatives=others,
        )

    # -- QR login ----------------------------------------------------------------------------------

    def qr_login(
        self, show: Callable[[str], None], wait: float, *, bootstrap_sha256: str | None = None
    ) -> TokenLifetime:
        """Log relayd in by aligo's own QR flow (the web app's passport login): *show* receives the
        link to draw as a QR code; wait up to *wait* seconds for the scan and the confirmation, then
        exchange the refresh token it yields as ``login`` does. Raise NeedsPerson when the code
        expired or nobody scanned it in time, Retryable for network trouble."""
        from aligo.utils.LoginTimout import LoginTimeout

        with self._client_lock:
            # A client without a token: aligo's QR flow needs only its session (and the redirect).
            ali = self._build(new_record("qr-login", source="login", previous=self.tokens.load()))
        auth = ali._auth
        auth._show = show
        auth._login_timeout = LoginTimeout(wait)
        try:
            response = auth._login_by_qrcode()
            biz = response.json()["content"]["data"]["bizExt"]
            token = str(
                json.loads(base64.b64decode(biz).decode("gb18030"))["pds_login_result"]["refreshToken"]
            )
        except TimeoutError:
            raise NeedsPerson(
                f"nobody scanned the QR code within {wait:g} s", hint=LOGIN_HINT, error_class=ErrorClass.AUTH
            ) from None
        except self._errors.AligoFatalError:
            raise NeedsPerson(
                "the QR code expired (or the login was cancelled) before it was confirmed",
                hint="run `relayctl drive login` again and scan the new code",
                error_class=ErrorClass.AUTH,
            ) from None
        except requests.RequestException as exc:
            raise Retryable(
                f"the QR login failed: {type(exc).__name__} talking to the drive",
                error_class=ErrorClass.NETWORK,
            ) from None
        except (KeyError, TypeError, ValueError, UnicodeDecodeError):
            raise Retryable(
                "the drive's QR login answer held no refresh token", error_class=ErrorClass.DRIVE
            ) from None
        finally:
            ali._session.close()
        return self.login(token, bootstrap_sha256=bootstrap_sha256)

    # -- the upload flow's hooks (relayd.drive.multipart) -----------------------------------------

    def _api_access_token(self) -> str:
        return str(self._ensure_token()._auth.token.access_token or "")

    def _api_create(
        self, name: str, parent_id: str, local: LocalFile, count: int, extra: dict[str, Any]
    ) -> Created:
        from aligo.request import CreateFileRequest
        from aligo.types import UploadPartInfo

        created = self._call(
            f"creating {name} on the drive",
            "create_file",
            CreateFileRequest(
                name=name,
                type="file",
                parent_file_id=parent_id,
                drive_id=self.drive_id(),
                size=local.size,
                check_name_mode="refuse",
                part_info_list=[UploadPartInfo(part_number=n) for n in range(1, count + 1)],
                **extra,
            ),
            accept=("PreHashMatched", "NotFound.File", *PROOF_REFUSED),
        )
        if not created:
            return Created(code=str(created.code))
        urls = {int(p.part_number): str(p.upload_url) for p in created.part_info_list or [] if p.upload_url}
        return Created(
            file_id=str(created.file_id or ""),
            upload_id=str(created.upload_id or ""),
            rapid=bool(created.rapid_upload),
            exist=bool(getattr(created, "exist", False)),
            urls=urls,
        )

    def _api_part_urls(self, state: dict[str, Any], numbers: list[int]) -> list[str] | None:
        from aligo.request import GetUploadUrlRequest
        from aligo.types import UploadPartInfo

        answer = self._call(
            "refreshing part URLs",
            "get_upload_url",
            GetUploadUrlRequest(
                drive_id=state["drive_id"],
                file_id=state["file_id"],
                upload_id=state["upload_id"],
                part_info_list=[UploadPartInfo(part_number=n) for n in numbers],
            ),
            accept=("NotFound.UploadId",),
        )
        if not answer:
            return None
        return [str(info.upload_url) for info in answer.part_info_list or []]

    def _api_parts_page(self, state: dict[str, Any], marker: int) -> tuple[list[tuple[int, int]], str] | None:
        body = {
            "drive_id": state["drive_id"],
            "file_id": state["file_id"],
            "upload_id": state["upload_id"],
            "part_number_marker": marker,
        }
        page = self._post(
            "listing uploaded parts", "/v2/file/list_uploaded_parts", body, accept=("NotFound.UploadId",)
        )
        if page.get("code"):
            return None
        parts = [
            (int(part.get("part_number") or 0), int(part.get("part_size") or 0))
            for part in page.get("uploaded_parts") or []
        ]
        return parts, str(page.get("next_part_number_marker") or "")

    def _api_complete(self, state: dict[str, Any]) -> DriveFile | str:
        from aligo.request import CompleteFileRequest

        done = self._call(
            f"completing {state['name']}",
            "complete_file",
            CompleteFileRequest(
                drive_id=state["drive_id"], file_id=state["file_id"], upload_id=state["upload_id"]
            ),
            accept=COMPLETE_CODES,
        )
        return self._file(done) if done else str(done.code)

    def close(self) -> None:
        self._data.close()
        ali = self._ali
        if ali is not None:
            ali._session.close()
