"""The Open Platform's file API on the fake drive (``/adrive/v1.0/openFile/*``, the user and VIP
endpoints), answered from the same folders, content store and uploads as the web API, so a file one
client uploads is what the other sees.

Fields follow tickstep/aliyunpan-api ``aliyunpan_open/openapi/file_upload_api.go`` and ``file_api.go``
and Aliyun's Android SDK (``AliyunpanFileScope.kt``): ``create`` answers ``{drive_id, file_id,
upload_id, file_name, status, available, exist, rapid_upload, part_info_list}``, ``listUploadedParts``
adds ``parallelUpload``, ``getDownloadUrl`` defaults to 900 s. A file over the per-file limit is refused
at ``create`` with 413 and the plain body ``Payload Too Large`` (tickstep/aliyunpan#460, #469).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from relayd_sandbox.drive_downloads import DriveDownloads
from relayd_sandbox.drive_records import (
    JSON,
    ROOT,
    ApiError,
    CallContext,
    as_int,
    bad_parameter,
    not_found_file,
)
from relayd_sandbox.drive_uploads import DriveUploads

OPEN_PREFIX = "/adrive/v1.0/"


class DriveOpen(DriveUploads, DriveDownloads):
    """The Open Platform's answers over the shared state."""

    def open_create(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """openFile/create: a folder, or a file by pre-hash / rapid upload / new multipart upload."""
        limit = self.settings.open_max_file_size
        too_big = limit is not None and as_int(body.get("size") or 0, "Size") > limit
        if body.get("type") != "folder" and too_big:
            raise ApiError(413, "PayloadTooLarge", plain="Payload Too Large")
        status, answer = self.create(ctx, body)
        if status == 409 or answer is None:
            return status, answer or {}
        out: JSON = {
            "drive_id": answer.get("drive_id"),
            "file_id": answer.get("file_id"),
            "parent_file_id": answer.get("parent_file_id"),
            "file_name": answer.get("file_name"),
            "type": answer.get("type"),
            "status": "available"
            if answer.get("rapid_upload") or answer.get("type") == "folder"
            else "uploading",
            "available": bool(answer.get("rapid_upload")) or answer.get("type") == "folder",
            "exist": bool(answer.get("exist")),
            "rapid_upload": bool(answer.get("rapid_upload")),
        }
        if answer.get("upload_id"):
            out["upload_id"] = answer["upload_id"]
        if answer.get("part_info_list"):
            out["part_info_list"] = [_open_part(p) for p in answer["part_info_list"]]
        return 200, out

    def open_upload_url(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """openFile/getUploadUrl: fresh part URLs (valid about 1 h), by position."""
        _, answer = self.get_upload_url(ctx, body)
        return 200, {
            "drive_id": answer["drive_id"],
            "file_id": answer["file_id"],
            "upload_id": answer["upload_id"],
            "created_at": answer["create_at"],
            "part_info_list": [_open_part(p) for p in answer["part_info_list"]],
        }

    def open_list_parts(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """openFile/listUploadedParts: the parts received, paged by ``part_number_marker``."""
        _, answer = self.list_uploaded_parts(ctx, body)
        return 200, {
            "drive_id": answer["drive_id"],
            "upload_id": answer["upload_id"],
            "parallelUpload": False,
            "uploaded_parts": answer["uploaded_parts"],
            "next_part_number_marker": answer["next_part_number_marker"],
        }

    def open_download_url(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """openFile/getDownloadUrl: 900 s by default, at most ``open_max_download_expire_sec``."""
        expire = as_int(body.get("expire_sec") or 900, "ExpireSec")
        limited = {**body, "expire_sec": max(1, min(expire, self.settings.open_max_download_expire_sec))}
        _, answer = self.get_download_url(ctx, limited)
        return 200, {
            "url": answer["url"],
            "expiration": answer["expiration"],
            "method": "GET",
            "size": answer["size"],
            "content_hash": answer["content_hash"],
            "content_hash_name": "sha1",
            "description": "",
            "status": "normal",
        }

    def open_get_by_path(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """openFile/get_by_path: the file or folder at ``file_path`` ("/a/b.bin") in the drive."""
        path = str(body.get("file_path") or "")
        if not path.startswith("/"):
            raise bad_parameter("FilePath")
        with self.lock:
            drive_id = self._drive_id(ctx, body)
            found = self.lookup(path, drive_id) if PurePosixPath(path).parts[1:] else None
            if path.rstrip("/") == "":
                return 200, self._file_json(self._node(drive_id, ROOT))
            if found is None:
                raise not_found_file()
            return 200, self._file_json(self._nodes[found.file_id])

    def open_trash(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """openFile/recyclebin/trash: 200 with the file id (an async task id for a folder)."""
        _, answer = self.trash(ctx, body)
        return 200, {
            "drive_id": body.get("drive_id"),
            "file_id": body.get("file_id"),
            "async_task_id": (answer or {}).get("async_task_id", ""),
        }

    def open_delete(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        self.delete(ctx, body)
        return 200, {"drive_id": body.get("drive_id"), "file_id": body.get("file_id"), "async_task_id": ""}

    def drive_info(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """/adrive/v1.0/user/getDriveInfo (tickstep ``user_api.go``)."""
        user = ctx.user
        return 200, {
            "user_id": user.user_id,
            "name": user.user_name,
            "avatar": "",
            "default_drive_id": user.default_drive_id,
            "resource_drive_id": user.resource_drive_id,
            "backup_drive_id": user.default_drive_id,
        }

    def space_info(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        with self.lock:
            used = sum(
                n.size for n in self._nodes.values() if self._drive_owner.get(n.drive_id) == ctx.user.user_id
            )
        return 200, {"personal_space_info": {"used_size": used, "total_size": 100 * 1024**4}}

    def vip_info(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """/business/v1.0/user/getVipInfo: the membership and the third-party rights (``thirdPartyVip``)."""
        vip = self.settings.third_party_vip
        return 200, {
            "identity": "member",
            "level": "",
            "expire": 0,
            "thirdPartyVip": vip,
            "thirdPartyVipExpire": int(self.now() + 30 * 86400) if vip else 0,
        }

    def users_info(self, ctx: CallContext) -> JSON:
        """GET /oauth/users/info."""
        return {"id": ctx.user.user_id, "name": ctx.user.user_name, "avatar": "", "phone": None}


def _open_part(part: JSON) -> JSON:
    return {"part_number": part["part_number"], "upload_url": part["upload_url"], "part_size": 0}
