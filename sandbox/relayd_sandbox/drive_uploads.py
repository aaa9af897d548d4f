"""Uploads to the fake drive: ``createWithFolders`` (a folder, or a file by pre-hash, by rapid upload
with its proof, or as a new multipart upload), signed part URLs that expire, sequential part PUTs
streamed by the HTTP side, the list of parts received, and complete."""

from __future__ import annotations

import hmac
import secrets
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from relayd_sandbox.drive_files import DriveFiles
from relayd_sandbox.drive_hashes import pre_hash, proof_code
from relayd_sandbox.drive_records import (
    DOMAIN_ID,
    JSON,
    MAX_PARTS,
    NAME_MODES,
    ROOT,
    UPLOAD_PREFIX,
    ApiError,
    CallContext,
    DriveSettings,
    Node,
    Part,
    PutTicket,
    StoredBlob,
    Upload,
    UploadInfo,
    as_int,
    bad_parameter,
    expired_url,
    no_upload,
    now_iso,
    signed_query,
)


class DriveUploads(DriveFiles):
    """Multipart uploads, rapid upload and the knobs that break them."""

    def __init__(self, root: Path, settings: DriveSettings, clock: Callable[[], float]) -> None:
        super().__init__(root, settings, clock)
        self._uploads: dict[str, Upload] = {}
        self._upload_url_floor = 0
        self._reject_proofs = 0
        self._corrupt_parts = 0
        self._put_by_upload: Counter[str] = Counter()

    def create(self, ctx: CallContext, body: JSON) -> tuple[int, JSON | None]:
        """createWithFolders: a folder, or a file by pre-hash / rapid upload / new multipart upload.

        A ``name`` with slashes creates the missing folders on the way (reusing existing ones).
        """
        with self.lock:
            drive_id = self._drive_id(ctx, body)
            kind = body.get("type") or "file"
            mode = body.get("check_name_mode") or "auto_rename"
            if mode not in NAME_MODES:
                raise bad_parameter("CheckNameMode")
            segments = str(body.get("name") or "").split("/")
            if any(not s or s in {".", ".."} for s in segments):
                raise bad_parameter("Name", "The input parameter name is not valid.")
            parent_id = self._folder(drive_id, str(body.get("parent_file_id") or ROOT)).file_id
            for segment in segments[:-1]:
                folder = self._find(drive_id, parent_id, segment, "folder")
                parent_id = (folder or self._new_node(drive_id, parent_id, segment, "folder")).file_id
            name = segments[-1]
            if kind == "folder":
                return 201, self._create_folder(drive_id, parent_id, name, mode)
            if kind != "file":
                raise bad_parameter("Type")
            return self._create_file(ctx, body, drive_id=drive_id, parent_id=parent_id, name=name, mode=mode)

    def _create_file(
        self, ctx: CallContext, body: JSON, *, drive_id: str, parent_id: str, name: str, mode: str
    ) -> tuple[int, JSON]:
        size = as_int(body.get("size"), "Size")
        if size < 0:
            raise bad_parameter("Size")
        existing = self._find(drive_id, parent_id, name, "file")
        if existing is not None and mode == "refuse":
            return 201, self._created_json(existing, exist=True, rapid_upload=False)
        parts = _part_numbers(body.get("part_info_list"))
        content_hash = body.get("content_hash")
        if content_hash:
            blob = self._rapid_hit(ctx, str(content_hash), size, body)
            if blob is not None:
                node = Node(secrets.token_hex(20), drive_id, parent_id, name, "file", self.now(), self.now())
                node.size, node.blob = size, blob
                self._place(node, mode)
                self._add_node(node)
                self._counts["rapid_upload_hits"] += 1
                upload_id = secrets.token_hex(16).upper()
                return 201, self._created_json(node, rapid_upload=True, upload_id=upload_id)
        elif body.get("pre_hash") and (str(body["pre_hash"]), size) in self._by_pre_hash:
            self._counts["pre_hash_matches"] += 1
            return 409, {
                "code": "PreHashMatched",
                "message": "Pre hash matched.",
                "file_name": name,
                "parent_file_id": parent_id,
                "pre_hash": body["pre_hash"],
                "type": "file",
                "drive_id": drive_id,
                "domain_id": DOMAIN_ID,
            }
        # The pending file stays invisible (no listing, no name clash) until complete, where the
        # create's check_name_mode is applied; the real service's choice here is undocumented.
        node = self._new_node(drive_id, parent_id, name, "file", size=size, status="uploading")
        upload = Upload(
            upload_id=secrets.token_hex(16).upper(),
            file_id=node.file_id,
            drive_id=drive_id,
            user_id=ctx.user.user_id,
            size=size,
            check_name_mode=mode,
            data_path=self.root / "uploads" / f"{node.file_id}.data",
            created_at=self.now(),
            expires_at=self.now() + self.settings.upload_id_ttl,
            declared_parts=parts,
        )
        upload.data_path.touch()
        node.upload_id = upload.upload_id
        self._uploads[upload.upload_id] = upload
        return 201, self._created_json(
            node,
            rapid_upload=False,
            upload_id=upload.upload_id,
            revision_id="",
            part_info_list=[self._part_json(upload, n) for n in parts],
        )

    def _rapid_hit(self, ctx: CallContext, content_hash: str, size: int, body: JSON) -> StoredBlob | None:
        blob = self._blobs.get(content_hash)
        proof = body.get("proof_code")
        if blob is None or blob.size != size or body.get("proof_version") != "v1" or proof is None:
            return None
        if self._reject_proofs > 0:
            self._reject_proofs -= 1
        elif proof == proof_code(ctx.access_token, blob.path):
            return blob
        self._counts["proofs_rejected"] += 1
        code = self.settings.proof_refusal_code
        raise ApiError(400, code, "The input parameter proof_code is not valid.")

    def _part_json(self, upload: Upload, part_number: int) -> JSON:
        self._url_seq += 1
        params = {
            "partNumber": str(part_number),
            "uploadId": upload.upload_id,
            "x-oss-expires": str(int(self.now() + self.settings.upload_url_ttl)),
            "x-relayd-gen": str(upload.generation),
            "x-relayd-seq": str(self._url_seq),
        }
        path = f"{UPLOAD_PREFIX}/{upload.drive_id}/{upload.file_id}"
        params["x-oss-signature"] = self._sign(path, params)
        url = f"{self.data_base_url}{path}?{urlencode(params)}"
        return {"part_number": part_number, "upload_url": url, "internal_upload_url": url, "content_type": ""}

    def _live_upload(self, ctx: CallContext, body: JSON) -> Upload:
        drive_id = self._drive_id(ctx, body)
        upload = self._uploads.get(str(body.get("upload_id") or ""))
        if upload is None or upload.drive_id != drive_id or upload.state != "open":
            raise no_upload()
        if body.get("file_id") not in (None, upload.file_id):
            raise no_upload()
        if upload.expires_at <= self.now():
            self._drop_upload(upload, "expired")
            raise no_upload()
        return upload

    def _drop_upload(self, upload: Upload, state: str) -> None:
        if upload.state != "open":
            return
        upload.state = state
        upload.data_path.unlink(missing_ok=True)
        node = self._nodes.get(upload.file_id)
        if node is not None and node.status == "uploading":
            self._remove_node(node)

    def get_upload_url(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """Issue fresh part URLs, by position; every URL issued before for this upload dies."""
        with self.lock:
            upload = self._live_upload(ctx, body)
            parts = (
                _part_numbers(body.get("part_info_list"))
                if body.get("part_info_list")
                else upload.declared_parts
            )
            upload.generation += 1
            return 200, {
                "domain_id": DOMAIN_ID,
                "drive_id": upload.drive_id,
                "file_id": upload.file_id,
                "upload_id": upload.upload_id,
                "create_at": now_iso(upload.created_at),
                "part_info_list": [self._part_json(upload, n) for n in parts],
            }

    def list_uploaded_parts(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """Return the parts received so far after ``part_number_marker``, one page at a time."""
        with self.lock:
            upload = self._live_upload(ctx, body)
            marker = body.get("part_number_marker") or 0
            after = as_int(marker, "PartNumberMarker")
            rest = [p for p in upload.parts if p.part_number > after]
            page = rest[: max(1, self.settings.parts_page_limit)]
            more = len(rest) > len(page)
            return 200, {
                "drive_id": upload.drive_id,
                "file_id": upload.file_id,
                "upload_id": upload.upload_id,
                "parallel_upload": False,
                "uploaded_parts": [
                    {"part_number": p.part_number, "part_size": p.size, "etag": p.etag} for p in page
                ],
                "next_part_number_marker": str(page[-1].part_number) if more else "",
            }

    def complete(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """Finish an upload: the parts must add up to the declared size; the SHA-1 is computed from
        the bytes received. The upload id is gone afterwards (a second complete is NotFound)."""
        with self.lock:
            upload = self._live_upload(ctx, body)
        if not upload.busy.acquire(timeout=self.settings.busy_part_wait):
            raise ApiError(409, "PartNotSequential", "A part of this upload is still being received.")
        try:
            with self.lock:
                upload = self._live_upload(ctx, body)
                if upload.committed != upload.size:
                    raise ApiError(
                        400,
                        "InvalidParameter.Size",
                        f"size not match: declared {upload.size}, received {upload.committed}",
                    )
                with upload.data_path.open("rb") as handle:
                    head = handle.read(1024)
                node = self._nodes[upload.file_id]
                self._place(node, upload.check_name_mode)
                content_hash = upload.sha1.hexdigest().upper()
                node.blob = self._adopt(upload.data_path, content_hash, upload.size, pre_hash(head))
                node.status = "available"
                node.updated_at = self.now()
                upload.state = "completed"
                return 200, self._file_json(node)
        finally:
            upload.busy.release()

    def begin_put(self, path: str, query: str) -> PutTicket:
        """Check a part PUT (signature, expiry, generation, upload, order) and reserve the upload.

        The caller streams the body into ``ticket.data_path`` at ``ticket.offset``, then calls
        commit_put, and end_put in all cases.
        """
        params = signed_query(query)
        signature = params.pop("x-oss-signature", "")
        if not hmac.compare_digest(signature, self._sign(path, params)):
            raise ApiError(
                403, "SignatureDoesNotMatch", "The request signature we calculated does not match."
            )
        with self.lock:
            upload = self._uploads.get(params.get("uploadId", ""))
            seq = int(params["x-relayd-seq"])
            if int(params["x-oss-expires"]) <= self.now() or seq < self._upload_url_floor:
                raise expired_url()
            if upload is None or upload.state != "open" or upload.expires_at <= self.now():
                raise ApiError(404, "NoSuchUpload", "The specified upload does not exist.")
            if seq < upload.url_floor or int(params["x-relayd-gen"]) != upload.generation:
                raise expired_url()
        if not upload.busy.acquire(timeout=self.settings.busy_part_wait):
            raise ApiError(409, "PartNotSequential", "Another part of this upload is being received.")
        try:
            with self.lock:
                if upload.state != "open":
                    raise ApiError(404, "NoSuchUpload", "The specified upload does not exist.")
                part_number = int(params["partNumber"])
                expected = len(upload.parts) + 1
                if part_number < expected:
                    raise ApiError(
                        409,
                        self.settings.repeat_part_code,
                        f"Part {part_number} was already uploaded; the next part is {expected}.",
                    )
                if part_number > expected:
                    raise ApiError(
                        400,
                        "PartNotSequential",
                        "For sequential multipart upload, you must upload or complete parts with "
                        f"sequential part number. Expected {expected}, got {part_number}.",
                    )
                return PutTicket(upload, part_number, upload.committed, upload.sha1.copy())
        except ApiError:
            upload.busy.release()
            raise

    def commit_put(self, ticket: PutTicket, received: int) -> str:
        """Record a fully received part and return its ETag (quoted uppercase MD5, as OSS does)."""
        with self.lock:
            upload = ticket.upload
            if upload.state != "open":
                raise ApiError(404, "NoSuchUpload", "The specified upload does not exist.")
            etag = f'"{ticket.md5.hexdigest().upper()}"'
            upload.parts.append(Part(ticket.part_number, received, etag))
            upload.committed += received
            upload.sha1 = ticket.sha1
            self._counts["parts_received"] += 1
            return etag

    def end_put(self, ticket: PutTicket) -> None:
        ticket.upload.busy.release()

    def count_put_bytes(self, upload_id: str, amount: int) -> None:
        with self.lock:
            self._counts["put_bytes"] += amount
            self._put_by_upload[upload_id] += amount

    def reject_next_proofs(self, count: int) -> None:
        with self.lock:
            self._reject_proofs += count

    def corrupt_next_parts(self, count: int) -> None:
        with self.lock:
            self._corrupt_parts += count

    def stop_corrupting_parts(self) -> None:
        with self.lock:
            self._corrupt_parts = 0

    def take_part_corruption(self) -> bool:
        """Return True (using up one count) if the part being received must be damaged in transit."""
        with self.lock:
            if self._corrupt_parts <= 0:
                return False
            self._corrupt_parts -= 1
            return True

    def expire_upload_urls(self, upload_id: str | None = None) -> None:
        with self.lock:
            if upload_id is None:
                self._upload_url_floor = self._url_seq + 1
            else:
                self._uploads[upload_id].url_floor = self._url_seq + 1

    def expire_upload_ids(self, upload_id: str | None = None) -> None:
        with self.lock:
            for upload in list(self._uploads.values()):
                if upload_id is None or upload.upload_id == upload_id:
                    self._drop_upload(upload, "expired")

    def upload_info(self, upload_id: str) -> UploadInfo | None:
        with self.lock:
            upload = self._uploads.get(upload_id)
            if upload is None:
                return None
            return UploadInfo(
                upload_id=upload.upload_id,
                file_id=upload.file_id,
                drive_id=upload.drive_id,
                size=upload.size,
                committed=upload.committed,
                parts=tuple(p.part_number for p in upload.parts),
                state=upload.state,
                generation=upload.generation,
            )

    def upload_ids(self) -> list[str]:
        with self.lock:
            return list(self._uploads)


def _part_numbers(raw: Any) -> list[int]:
    """Return the part numbers of a ``part_info_list`` (null fields tolerated); [1] when absent."""
    if not raw:
        return [1]
    if not isinstance(raw, list) or len(raw) > MAX_PARTS:
        raise bad_parameter("PartInfoList")
    numbers = []
    for item in raw:
        number = as_int(item.get("part_number") if isinstance(item, dict) else None, "PartNumber")
        if not 1 <= number <= MAX_PARTS:
            raise bad_parameter("PartNumber")
        numbers.append(number)
    return numbers
