"""The drive's upload, the same for every Aliyun backend: rapid upload first, else sequential multipart
PUTs that resume, then the size and content-hash check (reference/aliyun-drive.md §3-§4).

The web API (aligo) and the Open Platform differ only in how a call reaches the service: paths,
auth and answer shapes. ``MultipartUploads`` holds the rest: the pre-hash and the proof (v1, computed
with the backend's current access token), the rapid-upload decision, the resumable state saved before
the first byte, part URLs refreshed when they expire, PUTs from a separate HTTP session that never
carries the access token (with strict status checks), resume from the first part the drive lacks
(its list of uploaded parts, across restarts), complete, and verify. A backend implements the five
``_api_*`` hooks and the ``Drive`` lookups the flow needs.
"""

from __future__ import annotations

import abc
import email.utils
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from relayd.drive.base import (
    ContentMismatch,
    Drive,
    DriveFile,
    LocalFile,
    NameTaken,
    UploadCallbacks,
    UploadGone,
    UploadResult,
)
from relayd.drive.hashing import PRE_HASH_BYTES, part_count, part_size_for, pre_hash, proof_code
from relayd.errors import Cancelled, ErrorClass, NeedsPerson, Permanent, Retryable

log = logging.getLogger(__name__)

PUT_CHUNK = 1024 * 1024
#: Attempts at one part within one run (expired URL, dropped connection, lost answer).
PART_ATTEMPTS = 4
#: Part URLs requested at a time when they must be refreshed (each request voids the earlier ones).
URL_BATCH = 64
#: Most bytes of an error answer from the upload host relayd reads (OSS errors are < 1 KiB).
ERROR_BODY_LIMIT = 4096
#: Codes of a refused rapid-upload proof: aligo's, tickstep/aliyunpan-api's (``InvalidRapidProof``,
#: its code 22), and a bare ``InvalidParameter``.
PROOF_REFUSED = ("InvalidParameter.ProofCode", "InvalidRapidProof", "InvalidParameter")
#: Answers of ``complete`` the flow acts on (the rest are errors the backend raises).
COMPLETE_CODES = ("NotFound.UploadId", "AlreadyExist.File", "InvalidParameter.Size")


def retry_after_seconds(value: str | None) -> float | None:
    """Return a Retry-After header's delay in seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def path_of(url: str) -> str:
    """Return the host and path of *url* without its query (signed URLs must not reach logs)."""
    parts = urlsplit(url)
    return f"{parts.netloc}{parts.path}"


def segments(path: str) -> list[str]:
    """Return the names of an absolute drive path; raise ValueError for '.', '..' or empty names."""
    if not path.startswith("/"):
        raise ValueError(f"not an absolute drive path: {path!r}")
    names = [name for name in path.split("/") if name]
    for name in names:
        if name in (".", "..") or "\\" in name:
            raise ValueError(f"invalid name {name!r} in drive path {path!r}")
    return names


@dataclass(frozen=True)
class Created:
    """A create answer, the same for every backend. ``code`` is set when the service refused with a
    code the flow acts on (``PreHashMatched``, a proof refusal, ``NotFound.File``)."""

    code: str = ""
    file_id: str = ""
    upload_id: str = ""
    rapid: bool = False
    exist: bool = False
    urls: dict[int, str] = field(default_factory=dict)


class _PartBody:
    """One part of a file as a request body: read in 1 MiB chunks with pread, never held whole."""

    def __init__(self, fd: int, offset: int, length: int, progress: Callable[[int], None]) -> None:
        self._fd = fd
        self._offset = offset
        self._length = length
        self._progress = progress

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        position, end = self._offset, self._offset + self._length
        while position < end:
            data = os.pread(self._fd, min(PUT_CHUNK, end - position), position)
            if not data:
                raise OSError(f"the file ended at {position} bytes, expected {end}")
            position += len(data)
            self._progress(len(data))
            yield data


class _PutOutcome:
    OK = "ok"
    EXPIRED = "expired"
    GONE = "gone"
    CONFLICT = "conflict"
    BROKEN = "broken"
    THROTTLED = "throttled"
    REFUSED = "refused"


def _bounded_text(response: requests.Response) -> str:
    """Return at most ERROR_BODY_LIMIT bytes of a streamed answer's body as text. A short body is read
    to its end (the connection goes back to the pool); of a longer one the rest is never read, and
    closing the response drops its connection."""
    data = bytearray()
    for chunk in response.iter_content(ERROR_BODY_LIMIT):
        data += chunk
        if len(data) >= ERROR_BODY_LIMIT:
            break
    return bytes(data[:ERROR_BODY_LIMIT]).decode("utf-8", "replace")


def _xml_code(text: str) -> str:
    start = text.find("<Code>")
    end = text.find("</Code>")
    return text[start + 6 : end] if 0 <= start < end else ""


class _Completed(Exception):
    """The upload turned out to be complete already (its answer was lost); carries the file."""

    def __init__(self, file: DriveFile) -> None:
        super().__init__(file.file_id)
        self.file = file


class MultipartUploads(Drive):
    """A Drive whose upload is this module's flow over the backend's five API hooks (module doc)."""

    _data: requests.Session
    _timeout: tuple[float, float]
    _preferred_part: int

    # -- what a backend provides ------------------------------------------------------------------

    @abc.abstractmethod
    def drive_id(self) -> str:
        """Return the id of the drive uploads go to."""

    @abc.abstractmethod
    def forget_folders(self) -> None:
        """Drop cached folder ids (a folder was found missing)."""

    @abc.abstractmethod
    def _api_access_token(self) -> str:
        """Return the current access token (refreshed if about to expire): the proof is computed
        with it."""

    @abc.abstractmethod
    def _api_create(
        self, name: str, parent_id: str, local: LocalFile, count: int, extra: dict[str, Any]
    ) -> Created:
        """Create *name* in *parent_id* (``check_name_mode`` refuse, *count* parts, the *extra*
        fields). Return the answer; a refusal whose code is ``PreHashMatched``, ``NotFound.File`` or
        in PROOF_REFUSED comes back as ``Created(code=...)``, others raise."""

    @abc.abstractmethod
    def _api_part_urls(self, state: dict[str, Any], numbers: list[int]) -> list[str] | None:
        """Return fresh URLs for parts *numbers*, in order; None when the drive forgot the upload."""

    @abc.abstractmethod
    def _api_parts_page(self, state: dict[str, Any], marker: int) -> tuple[list[tuple[int, int]], str] | None:
        """Return one page of (part number, part size) the drive holds after *marker*, and the next
        marker ("" at the end); None when the drive forgot the upload."""

    @abc.abstractmethod
    def _api_complete(self, state: dict[str, Any]) -> DriveFile | str:
        """Complete the upload; return the file, or a code of COMPLETE_CODES."""

    # -- the flow ---------------------------------------------------------------------------------

    def part_size(self, size: int) -> int:
        return part_size_for(size, self._preferred_part)

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
        fits = (
            bool(state.get("upload_id"))
            and state.get("size") == local.size
            and str(state.get("sha1", "")).upper() == local.sha1.upper()
            and state.get("parent_id") == parent_id
            and state.get("name") == name
            and state.get("drive_id") == self.drive_id()
        )
        if state and not fits:
            log.info("%s: the saved upload does not match the file any more; starting again", name)
            callbacks.restarted()
        try:
            if fits:
                try:
                    return self._resume(local, state, callbacks, cancel)
                except UploadGone as exc:
                    log.info("%s: %s; starting the upload again", name, exc)
                    callbacks.restarted()
            try:
                return self._start(local, parent_id, name, callbacks, cancel)
            except UploadGone:
                callbacks.restarted()
                raise
        except _Completed as done:
            log.info("%s: the drive had completed the upload already (its answer was lost)", name)
            return UploadResult(done.file, rapid=False)

    def _start(
        self,
        local: LocalFile,
        parent_id: str,
        name: str,
        callbacks: UploadCallbacks,
        cancel: threading.Event,
    ) -> UploadResult:
        """Rapid upload first (pre-hash, then content hash + proof); else a new multipart upload."""
        size = self.part_size(local.size)
        count = part_count(local.size, size)
        callbacks.plan(size, count)
        created: Created | None = None
        if local.size > PRE_HASH_BYTES:
            created = self._api_create(name, parent_id, local, count, {"pre_hash": pre_hash(local.path)})
            self._check_created(created, name, allow=("PreHashMatched",))
        if created is None or created.code == "PreHashMatched":
            created = self._create_with_proof(name, parent_id, local, count)
        if created.rapid:
            log.info("%s: rapid upload: the drive already holds this content", name)
            return UploadResult(self.verify(created.file_id, local.size, local.sha1), rapid=True)
        if not created.upload_id or not created.file_id:
            raise Retryable(f"creating {name}: the drive gave no upload id", error_class=ErrorClass.DRIVE)
        state = {
            "upload_id": created.upload_id,
            "file_id": created.file_id,
            "drive_id": self.drive_id(),
            "parent_id": parent_id,
            "name": name,
            "size": local.size,
            "sha1": local.sha1.upper(),
            "part_size": size,
            "parts": count,
            "started_at": datetime.now(UTC).isoformat(),
        }
        callbacks.state(state)
        return self._send_parts(local, state, 1, dict(created.urls), callbacks=callbacks, cancel=cancel)

    def _check_created(self, created: Created, name: str, *, allow: tuple[str, ...] = ()) -> None:
        """Raise for a create answer relayd cannot continue from (name taken, folder gone)."""
        if created.code and created.code not in allow:
            if created.code == "NotFound.File":
                self.forget_folders()
                raise Retryable(
                    f"the destination folder of {name} vanished from the drive", error_class=ErrorClass.DRIVE
                )
            raise Retryable(
                f"creating {name}: the drive answered {created.code}", error_class=ErrorClass.DRIVE
            )
        if created.exist:
            existing = self.get(created.file_id) if created.file_id else None
            raise NameTaken(f"{name} already exists in the destination folder", existing)

    def _create_with_proof(self, name: str, parent_id: str, local: LocalFile, count: int) -> Created:
        """Offer the content hash with a proof; recompute the proof once if refused (the token may
        have been refreshed meanwhile); then fall back to a plain upload."""
        for _attempt in range(2):
            token = self._api_access_token()
            extra = {
                "content_hash": local.sha1.upper(),
                "content_hash_name": "sha1",
                "proof_code": proof_code(token, local.path, local.size),
                "proof_version": "v1",
            }
            created = self._api_create(name, parent_id, local, count, extra)
            if created.code not in PROOF_REFUSED:
                self._check_created(created, name)
                return created
            log.info("%s: the drive refused the rapid-upload proof; computing it again", name)
        log.warning("%s: rapid upload refused twice; uploading the bytes instead", name)
        created = self._api_create(name, parent_id, local, count, {})
        self._check_created(created, name)
        return created

    def _resume(
        self, local: LocalFile, state: dict[str, Any], callbacks: UploadCallbacks, cancel: threading.Event
    ) -> UploadResult:
        """Continue a saved upload from the first part the drive lacks."""
        count = int(state["parts"])
        callbacks.plan(int(state["part_size"]), count)
        held = self._confirmed_parts(local, state)
        callbacks.confirmed(held)
        log.info("%s: resuming the upload after part %d of %d", state["name"], held, count)
        if held >= count:
            return self._complete(local, state)
        return self._send_parts(local, state, held + 1, {}, callbacks=callbacks, cancel=cancel)

    def _confirmed_parts(self, local: LocalFile, state: dict[str, Any]) -> int:
        """Return k such that the drive holds exactly parts 1..k of the saved upload (with the planned
        sizes). Raise UploadGone if the drive forgot the upload or holds something else."""
        numbers: list[tuple[int, int]] = []
        seen: set[str] = set()
        marker = 0
        while True:
            page = self._api_parts_page(state, marker)
            if page is None:
                self._raise_gone_unless_done(local, state)
                raise AssertionError("unreachable")  # pragma: no cover
            parts, following = page
            numbers.extend(parts)
            if not following or following in seen:
                break
            seen.add(following)
            marker = int(following)
        numbers.sort()
        part_size, count = int(state["part_size"]), int(state["parts"])
        for expected, (number, size) in enumerate(numbers, start=1):
            wanted = min(part_size, local.size - (expected - 1) * part_size)
            if number != expected or (size and size != wanted) or number > count:
                raise UploadGone(f"the drive holds parts that do not fit the plan (part {number})")
        return len(numbers)

    def _raise_gone_unless_done(self, local: LocalFile, state: dict[str, Any]) -> None:
        """The drive forgot the upload id: it either expired or completed (an answer lost on the way).
        Raise _Completed with the file if it completed, else UploadGone."""
        found = self.get(str(state["file_id"]))
        if found is not None and found.matches(local.size, local.sha1):
            raise _Completed(found)
        raise UploadGone("the drive no longer knows the upload id (it expired)")

    def _fresh_urls(self, state: dict[str, Any], first: int) -> dict[int, str]:
        """Return new part URLs for a batch of parts starting at *first* (earlier URLs die)."""
        numbers = list(range(first, min(int(state["parts"]), first + URL_BATCH - 1) + 1))
        urls = self._api_part_urls(state, numbers)
        if urls is None:
            raise UploadGone("the drive no longer knows the upload id (it expired)")
        if len(urls) != len(numbers):
            raise Retryable("the drive returned the wrong number of part URLs", error_class=ErrorClass.DRIVE)
        # URLs come back by position, in request order (reference §4).
        return dict(zip(numbers, urls, strict=True))

    def _send_parts(
        self,
        local: LocalFile,
        state: dict[str, Any],
        first: int,
        urls: dict[int, str],
        *,
        callbacks: UploadCallbacks,
        cancel: threading.Event,
    ) -> UploadResult:
        """PUT parts *first*.. in order, then complete. Each part is acknowledged before the next."""
        part_size, count = int(state["part_size"]), int(state["parts"])
        name = str(state["name"])
        fd = os.open(local.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            part, failures = first, 0
            while part <= count:
                if cancel.is_set():
                    raise Cancelled("the daemon is stopping")
                if part not in urls:
                    urls = self._fresh_urls(state, part)
                offset = (part - 1) * part_size
                length = min(part_size, local.size - offset)
                callbacks.part_started(part)
                outcome, status, retry_after = self._put(fd, urls[part], offset, length, callbacks.progress)
                if outcome == _PutOutcome.OK:
                    callbacks.part_done(part)
                    part, failures = part + 1, 0
                    continue
                failures += 1
                log.info("%s: part %d of %d: %s (%s)", name, part, count, outcome, status or "no answer")
                self._raise_for_part(outcome, status, retry_after, part, local, state)
                if failures >= PART_ATTEMPTS:
                    raise Retryable(
                        f"part {part} of {name} failed {failures} times ({outcome})",
                        error_class=ErrorClass.NETWORK,
                    )
                if outcome == _PutOutcome.EXPIRED:
                    urls = self._fresh_urls(state, part)
                    continue
                # A dropped connection or a lost answer: ask the drive what it holds now.
                time.sleep(min(2.0, 0.25 * failures))
                held = self._confirmed_parts(local, state)
                callbacks.confirmed(held)
                if held >= part:
                    part, failures = held + 1, 0
                elif held < part - 1:
                    raise UploadGone(
                        f"the drive lost parts it had acknowledged (holds {held}, sent {part - 1})"
                    )
        finally:
            os.close(fd)
        return self._complete(local, state)

    def _raise_for_part(
        self,
        outcome: str,
        status: int,
        retry_after: float | None,
        part: int,
        local: LocalFile,
        state: dict[str, Any],
    ) -> None:
        """Raise for a part outcome that trying the part again cannot cure."""
        if outcome == _PutOutcome.THROTTLED:
            raise Retryable(
                f"the drive's upload host answered {status}",
                error_class=ErrorClass.RATE_LIMIT if status == 429 else ErrorClass.SERVER,
                retry_after=retry_after,
            )
        if outcome == _PutOutcome.GONE:
            self._raise_gone_unless_done(local, state)
        if outcome == _PutOutcome.REFUSED:
            raise Permanent(
                f"the drive's upload host refused part {part} ({status})",
                hint="this looks like a relayd bug or an API change; report it",
            )

    def _put(
        self, fd: int, url: str, offset: int, length: int, progress: Callable[[int], None]
    ) -> tuple[str, int, float | None]:
        """PUT one part from the separate data session (no Authorization); classify the answer."""
        body = _PartBody(fd, offset, length, progress)
        try:
            response = self._data.put(
                url, data=body, timeout=self._timeout, allow_redirects=False, stream=True
            )
            with response:
                status = response.status_code
                text = _bounded_text(response)
        except requests.exceptions.SSLError as exc:
            if "CERTIFICATE_VERIFY_FAILED" not in str(exc):
                raise Retryable(f"TLS with the drive's upload host failed: {exc}") from exc
            raise NeedsPerson(
                f"the TLS certificate of the drive's upload host {urlsplit(url).netloc} is not trusted",
                hint="if it is right (a private CA, or a TLS-inspecting proxy's), trust its CA with "
                "drive.ca_bundle (a PEM file) or the system's store; otherwise check drive.proxy and the "
                "network, then `relayctl retry`",
                error_class=ErrorClass.TLS,
            ) from exc
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            log.debug("PUT %s: %s", path_of(url), type(exc).__name__)
            return _PutOutcome.BROKEN, 0, None
        if 200 <= status < 300:
            return _PutOutcome.OK, status, None
        code = _xml_code(text)
        log.debug("PUT %s: %d %s", path_of(url), status, code)
        if status == 429 or status >= 500:
            return _PutOutcome.THROTTLED, status, retry_after_seconds(response.headers.get("Retry-After"))
        if status == 403:
            return _PutOutcome.EXPIRED, status, None
        if status == 404:
            return _PutOutcome.GONE, status, None
        if status == 409 or code in ("PartNotSequential", "PartAlreadyExist"):
            return _PutOutcome.CONFLICT, status, None
        return _PutOutcome.REFUSED, status, None

    def _complete(self, local: LocalFile, state: dict[str, Any]) -> UploadResult:
        """Complete the upload and check the drive's size and content hash against the local file."""
        name = str(state["name"])
        done = self._api_complete(state)
        if done == "NotFound.UploadId":
            self._raise_gone_unless_done(local, state)
        if done == "AlreadyExist.File":
            raise NameTaken(
                f"{name} appeared in the destination folder during the upload",
                self.find(str(state["parent_id"]), name),
            )
        if not isinstance(done, DriveFile):
            raise Retryable(
                f"completing {name}: the drive counts missing parts", error_class=ErrorClass.DRIVE
            )
        if not done.matches(local.size, local.sha1):
            raise ContentMismatch(
                f"the drive computed content hash {done.content_hash} over {done.size} bytes for {name}, "
                f"expected {local.sha1.upper()} over {local.size}",
                done,
            )
        log.info("%s: uploaded and verified (%d bytes)", name, done.size)
        return UploadResult(done, rapid=False)
