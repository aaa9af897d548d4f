"""Downloads from the fake drive: signed links that expire (or are all expired at once), checked on the
data host with the Referer they need, within the service's cap on concurrent downloads per user and
per app."""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlencode

from relayd_sandbox.drive_files import DriveFiles
from relayd_sandbox.drive_records import (
    DOMAIN_ID,
    DOWNLOAD_PREFIX,
    JSON,
    WEB_APP_ID,
    ApiError,
    CallContext,
    DownloadTicket,
    DriveSettings,
    as_int,
    expired_url,
    not_found_file,
    now_iso,
    over_cap,
    signed_query,
)


class DriveDownloads(DriveFiles):
    """Download links and the concurrency cap."""

    def __init__(self, root: Path, settings: DriveSettings, clock: Callable[[], float]) -> None:
        super().__init__(root, settings, clock)
        self._download_url_floor = 0
        self._inflight: Counter[str] = Counter()  # downloads running per user
        self._inflight_app: Counter[tuple[str, str]] = Counter()  # ... per (user, app)

    def get_download_url(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """Sign a download link valid for ``expire_sec`` (at most ``max_download_expire_sec``)."""
        with self.lock:
            drive_id = self._drive_id(ctx, body)
            node = self._node(drive_id, str(body.get("file_id") or ""))
            if node.type == "folder":
                raise ApiError(400, "InvalidResource.FileTypeFolder", "Folder has no download url.")
            if node.blob is None:
                raise not_found_file()
            expire = as_int(body.get("expire_sec") or 900, "ExpireSec")
            expires_at = int(self.now() + max(1, min(expire, self.settings.max_download_expire_sec)))
            self._url_seq += 1
            # The real link's signed callback names the user and app it was issued to, so the data
            # host can count downloads per user and per app; these two parameters stand for it.
            params = {
                "x-oss-expires": str(expires_at),
                "x-relayd-user": ctx.user.user_id,
                "x-relayd-app": ctx.app_id,
                "x-relayd-seq": str(self._url_seq),
            }
            path = f"{DOWNLOAD_PREFIX}/{drive_id}/{node.file_id}"
            params["x-oss-signature"] = self._sign(path, params)
            url = f"{self.data_base_url}{path}/{quote(node.name)}?{urlencode(params)}"
            return 200, {
                "domain_id": DOMAIN_ID,
                "drive_id": drive_id,
                "file_id": node.file_id,
                "revision_id": "",
                "method": "GET",
                "url": url,
                "internal_url": url,
                "expiration": now_iso(expires_at),
                "size": node.size,
                "content_hash": node.blob.content_hash,
                "content_hash_name": "sha1",
                "ratelimit": {"part_speed": -1, "part_size": -1},
            }

    def open_download(self, path: str, query: str, referer: str | None, counted: bool) -> DownloadTicket:
        """Check a download GET (signature, expiry, Referer, file, concurrency cap) and take a slot."""
        params = signed_query(query)
        signature = params.pop("x-oss-signature", "")
        parts = path.split("/")
        if len(parts) < 4:
            raise ApiError(
                403, "SignatureDoesNotMatch", "The request signature we calculated does not match."
            )
        signed_path = "/".join(parts[:4])
        if not hmac.compare_digest(signature, self._sign(signed_path, params)):
            raise ApiError(
                403, "SignatureDoesNotMatch", "The request signature we calculated does not match."
            )
        # Aliyun's Android SDK fetches Open Platform links with no Referer (real-services.md §7.10);
        # only the web client's links are checked against one.
        required = (
            None
            if self.is_open_app(params.get("x-relayd-app", WEB_APP_ID))
            else self.settings.download_referer
        )
        if required is not None and (referer or "").rstrip("/") != required.rstrip("/"):
            raise ApiError(403, "AccessDenied", "You are denied by bucket referer policy.")
        with self.lock:
            if (
                int(params["x-oss-expires"]) <= self.now()
                or int(params["x-relayd-seq"]) < self._download_url_floor
            ):
                raise expired_url()
            node = self._nodes.get(parts[3])
            if node is None or node.blob is None or node.drive_id != parts[2]:
                raise ApiError(404, "NoSuchKey", "The specified key does not exist.")
            user_id, app_id = params["x-relayd-user"], params.get("x-relayd-app", WEB_APP_ID)
            data = node.data_path
            if data is None:
                raise ApiError(404, "NoSuchKey", "The specified key does not exist.")
            if counted:
                per_app, per_user = self.settings.download_cap_per_app, self.settings.download_cap_per_user
                if (per_app is not None and self._inflight_app[(user_id, app_id)] >= per_app) or (
                    per_user is not None and self._inflight[user_id] >= per_user
                ):
                    self._counts["downloads_over_cap"] += 1
                    raise over_cap()
                self._inflight[user_id] += 1
                self._inflight_app[(user_id, app_id)] += 1
            content_hash = node.blob.content_hash
            return DownloadTicket(
                user_id, app_id, data, node.size, content_hash, f'"{content_hash}"', counted
            )

    def close_download(self, ticket: DownloadTicket, sent: int) -> None:
        with self.lock:
            if ticket.counted:
                self._inflight[ticket.user_id] -= 1
                self._inflight_app[(ticket.user_id, ticket.app_id)] -= 1
            self._counts["download_bytes"] += sent

    def expire_download_urls(self) -> None:
        with self.lock:
            self._download_url_floor = self._url_seq + 1
