"""The state behind the fake Aliyun Drive: users and rotating tokens, folders and files, a global
SHA-1 content store (so rapid upload hits across users), multipart uploads with signed part URLs,
and signed download links.

Nothing here speaks HTTP; ``relayd_sandbox.drive`` serves it. Every public method is thread-safe.
The semantics follow reference/aliyun-drive.md §8; where the real service is undocumented the choice
made here is written next to the code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

_log = logging.getLogger(__name__)

JSON = dict[str, Any]

DOMAIN_ID = "bj29"
ROOT = "root"
EMPTY_SHA1 = "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709"
UPLOAD_PREFIX = "/upload"
DOWNLOAD_PREFIX = "/download"
MAX_PARTS = 10_000
MAX_LIST_LIMIT = 200
#: The app the web client's tokens belong to (aligo's ``Config.CLIENT_ID``): relayd's tokens, unless a
#: test issues some for another app (the user's phone, another tool).
WEB_APP_ID = "25dzX3vbYqktVxyX"
#: The OSS data host's error code for a refused callback (AlistGo/alist#7258).
CAP_EC = "0007-00000209"
DEVICE_POLICIES = frozenset({"lax", "require_session", "reject"})
REFRESH_PATH = "/v2/account/token"
CREATE_SESSION_PATH = "/users/v1/users/device/create_session"
NAME_MODES = frozenset({"auto_rename", "refuse", "overwrite", "ignore"})
_COPY_CHUNK = 1024 * 1024


# -- hashes --------------------------------------------------------------------------------------


def pre_hash(head: bytes) -> str:
    """Given the start of a file, return its pre-hash: lowercase SHA-1 of the first 1024 bytes."""
    return hashlib.sha1(head[:1024]).hexdigest()


def proof_offset(access_token: str, size: int) -> int:
    """Given an access token and a file size, return where the 8 proof bytes start (§3.1)."""
    if size <= 0:
        return 0
    md5_prefix = hashlib.md5(access_token.encode()).hexdigest()[:16]
    return int(md5_prefix, 16) % size


def proof_code(access_token: str, source: bytes | Path) -> str:
    """Given the caller's access token and the content (bytes or a path), return the v1 proof code:
    padded base64 of up to 8 bytes at ``proof_offset``; "" for empty content."""
    if isinstance(source, bytes):
        size = len(source)
        offset = proof_offset(access_token, size)
        window = source[offset : offset + 8]
    else:
        size = source.stat().st_size
        offset = proof_offset(access_token, size)
        with source.open("rb") as handle:
            handle.seek(offset)
            window = handle.read(min(8, size - offset))
    return base64.b64encode(window).decode() if size else ""


def _now_iso(ts: float) -> str:
    moment = datetime.fromtimestamp(ts, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# -- errors --------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer: HTTP status, the service's error code and message, extra headers.

    The API server renders it as compact JSON, the data server as OSS-style XML.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str = "",
        headers: dict[str, str] | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message or code
        self.headers = headers or {}
        #: More elements of the data host's XML error (``EC``, ``RecommendDoc``), after ``HostId``.
        self.extra = extra or {}


def _bad(field_name: str, message: str = "") -> ApiError:
    return ApiError(
        400, f"InvalidParameter.{field_name}", message or f"The input parameter {field_name} is not valid."
    )


def _not_found_file() -> ApiError:
    return ApiError(404, "NotFound.File", "The resource file cannot be found. file not exist")


def _no_upload() -> ApiError:
    return ApiError(404, "NotFound.UploadId", "The resource upload_id cannot be found.")


def _expired_url() -> ApiError:
    return ApiError(403, "AccessDenied", "Request has expired.")


def _over_cap() -> ApiError:
    """The data host's answer past the concurrent-download cap: Aliyun's callback refuses the GET
    (AlistGo/alist#7258; the limits are Aliyun's 2024-04 notice, gaozhangmin/boxplayer#422)."""
    return ApiError(
        403,
        "AccessDenied",
        "Callback deny this request reason: ExceedMaxConcurrency",
        extra={"EC": CAP_EC, "RecommendDoc": f"https://api.aliyun.com/troubleshoot?q={CAP_EC}"},
    )


def _device_offline() -> ApiError:
    # The code is the service's (tickstep/aliyunpan-api apierror code 31); the message follows what
    # tickstep/aliyunpan's README tells users it means.
    return ApiError(
        401,
        "UserDeviceOffline",
        "the client is offline: one account may be logged in on at most 10 devices at once",
    )


# -- settings and public views --------------------------------------------------------------------


@dataclass
class DriveSettings:
    """Behaviour knobs, read on every request, so tests may change them while the fake runs."""

    access_token_ttl: float = 7200.0
    upload_url_ttl: float = 3600.0
    upload_id_ttl: float = 7 * 86400.0
    max_download_expire_sec: int = 14400
    #: Referer a download GET must carry (None: not checked); since 2024 some links want
    #: "https://www.alipan.com/" (syhyz1990/baiduyun#333).
    download_referer: str | None = "https://www.aliyundrive.com/"
    #: Concurrent download GETs allowed per user and app, and per user over all apps (None: no
    #: limit); 403 ExceedMaxConcurrency beyond (Aliyun's 2024-04 notice in boxplayer#422).
    download_cap_per_app: int | None = 2
    download_cap_per_user: int | None = 3
    #: Device sessions: "lax" (never checked), "require_session" (401 UserDeviceOffline until
    #: create_session for the call's x-device-id), "reject" (400 DeviceSessionSignatureInvalid on
    #: every call but create_session).
    device_policy: str = "lax"
    #: Distinct x-device-id values one user may use (None: no limit); 401 UserDeviceOffline beyond.
    max_devices: int | None = 10
    #: Code of the 400 for a refused rapid-upload proof (aligo: InvalidParameter.ProofCode;
    #: tickstep/aliyunpan-api also knows InvalidRapidProof).
    proof_refusal_code: str = "InvalidParameter.ProofCode"
    #: API paths the service does not have (any more): they answer like an unknown path.
    removed_endpoints: frozenset[str] = frozenset()
    #: Answer every download GET with 200 and the whole body, Accept-Ranges still set (§5 trap).
    ignore_range: bool = False
    upload_bandwidth: float | None = None
    download_bandwidth: float | None = None
    #: Most items on one /adrive/v3/file/list page, whatever ``limit`` the client asks for.
    page_limit: int = MAX_LIST_LIMIT
    #: Most parts on one list_uploaded_parts page.
    parts_page_limit: int = 1000
    #: Code of the 409 for a part that was already received (§8 #5; some clients see PartAlreadyExist).
    repeat_part_code: str = "PartNotSequential"
    #: How long a PUT waits for a previous PUT of the same upload before it is refused.
    busy_part_wait: float = 2.0


@dataclass(frozen=True)
class DriveUser:
    """One account: its id, name and its two drives (backup = default, resource)."""

    user_id: str
    user_name: str
    default_drive_id: str
    resource_drive_id: str


@dataclass(frozen=True)
class StoredFile:
    """What the fake holds for one file or folder, for tests to assert on."""

    file_id: str
    drive_id: str
    parent_file_id: str
    path: str
    name: str
    type: str
    size: int
    content_hash: str | None
    data_path: Path | None
    status: str
    trashed: bool

    def read_bytes(self) -> bytes:
        """Return the stored bytes (small files only)."""
        if self.data_path is None:
            raise ValueError(f"{self.path} has no stored bytes")
        return self.data_path.read_bytes()


@dataclass(frozen=True)
class UploadInfo:
    """One multipart upload as the fake sees it."""

    upload_id: str
    file_id: str
    drive_id: str
    size: int
    committed: int
    parts: tuple[int, ...]
    state: str
    generation: int


@dataclass(frozen=True)
class DriveStats:
    """Counters since start (a snapshot)."""

    refreshes: int
    refresh_failures: int
    put_bytes: int
    put_bytes_by_upload: dict[str, int]
    parts_received: int
    rapid_upload_hits: int
    pre_hash_matches: int
    proofs_rejected: int
    download_bytes: int
    downloads: int
    #: Download GETs refused past the concurrency cap.
    downloads_over_cap: int
    #: Bytes of injected (``fail_next(body=...)``) answers the clients took.
    injected_bytes_sent: int
    calls: dict[str, int]


# -- internal records ----------------------------------------------------------------------------


@dataclass
class _Blob:
    content_hash: str
    size: int
    pre_hash: str
    path: Path


@dataclass
class _Node:
    file_id: str
    drive_id: str
    parent_file_id: str
    name: str
    type: str
    created_at: float
    updated_at: float
    size: int = 0
    blob: _Blob | None = None
    corrupt_path: Path | None = None
    status: str = "available"
    trashed: bool = False
    upload_id: str | None = None

    @property
    def data_path(self) -> Path | None:
        if self.corrupt_path is not None:
            return self.corrupt_path
        return self.blob.path if self.blob else None


@dataclass
class _Part:
    part_number: int
    size: int
    etag: str


@dataclass
class _Upload:
    upload_id: str
    file_id: str
    drive_id: str
    user_id: str
    size: int
    check_name_mode: str
    data_path: Path
    created_at: float
    expires_at: float
    declared_parts: list[int]
    sha1: Any = field(default_factory=hashlib.sha1)
    parts: list[_Part] = field(default_factory=list)
    committed: int = 0
    generation: int = 1
    url_floor: int = 0
    state: str = "open"
    busy: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _AccessToken:
    user_id: str
    app_id: str
    expires_at: float


@dataclass
class Injection:
    path: str
    remaining: int
    status: int = 0
    code: str = ""
    message: str = ""
    body: str | JSON | None = None
    headers: dict[str, str] = field(default_factory=dict)
    drop_after: int | None = None

    def matches(self, path: str) -> bool:
        return path == self.path or path.startswith(self.path.rstrip("/") + "/")


@dataclass(frozen=True)
class CallContext:
    """Who is calling an API endpoint: the user, the app its token belongs to, and the exact access
    token they sent."""

    user: DriveUser
    access_token: str
    app_id: str = WEB_APP_ID


@dataclass
class PutTicket:
    """A PUT of one part that passed the checks; the HTTP layer streams the body, then commits."""

    upload: _Upload
    part_number: int
    offset: int
    sha1: Any
    md5: Any = field(default_factory=hashlib.md5)

    @property
    def data_path(self) -> Path:
        return self.upload.data_path

    @property
    def upload_id(self) -> str:
        return self.upload.upload_id


@dataclass
class DownloadTicket:
    """A download GET that passed the checks; holds one slot of the user's (and app's) cap."""

    user_id: str
    app_id: str
    path: Path
    size: int
    content_hash: str
    etag: str
    counted: bool = True


Route = Callable[["DriveStore", CallContext, JSON], tuple[int, JSON | None]]


class DriveStore:
    """All state of one fake drive service. Methods raise ApiError for error answers."""

    def __init__(self, root: Path, settings: DriveSettings, clock: Callable[[], float]) -> None:
        self.root = root
        self.settings = settings
        self._clock = clock
        self._skew = 0.0
        self.lock = threading.RLock()
        self.data_base_url = ""
        self._secret = secrets.token_bytes(32)
        for sub in ("blobs", "uploads", "tmp", "corrupt"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._users: dict[str, DriveUser] = {}
        self._drive_owner: dict[str, str] = {}
        self._access: dict[str, _AccessToken] = {}
        self._refresh: dict[str, tuple[str, str]] = {}  # token → (user id, app id)
        self._blobs: dict[str, _Blob] = {}
        self._by_pre_hash: dict[tuple[str, int], _Blob] = {}
        self._nodes: dict[str, _Node] = {}
        self._children: dict[tuple[str, str], dict[str, _Node]] = {}
        self._uploads: dict[str, _Upload] = {}
        self._url_seq = 0
        self._upload_url_floor = 0
        self._download_url_floor = 0
        self._injections: list[Injection] = []
        self._reject_proofs = 0
        self._corrupt_parts = 0
        self._inflight: Counter[str] = Counter()  # downloads running per user
        self._inflight_app: Counter[tuple[str, str]] = Counter()  # ... per (user, app)
        self._devices: dict[str, list[str]] = {}  # user → x-device-ids in the order first seen
        self._sessions: set[tuple[str, str]] = set()  # (user, x-device-id) with a created session
        self._counts: Counter[str] = Counter()
        self._put_by_upload: Counter[str] = Counter()
        self._calls: Counter[str] = Counter()
        self._next_drive = 10_000
        self.seed_content(b"")

    # -- clock --------------------------------------------------------------------------------

    def now(self) -> float:
        """Return the fake's time: the injected clock plus any advance_clock()."""
        return self._clock() + self._skew

    def advance_clock(self, seconds: float) -> None:
        """Move the fake's time forward, so tokens, URLs and upload ids expire without sleeping."""
        with self.lock:
            self._skew += seconds

    # -- users and tokens -------------------------------------------------------------------

    def add_user(self, user_name: str) -> DriveUser:
        """Create an account with a backup (default) drive and a resource drive."""
        with self.lock:
            user = DriveUser(
                user_id=secrets.token_hex(16),
                user_name=user_name,
                default_drive_id=str(self._next_drive),
                resource_drive_id=str(self._next_drive + 1),
            )
            self._next_drive += 2
            self._users[user.user_id] = user
            self._drive_owner[user.default_drive_id] = user.user_id
            self._drive_owner[user.resource_drive_id] = user.user_id
            return user

    def issue_refresh_token(self, user: DriveUser, app_id: str = WEB_APP_ID) -> str:
        """Return a new, valid refresh token of *app_id* for *user* (a bootstrap token)."""
        with self.lock:
            token = secrets.token_hex(16)
            self._refresh[token] = (user.user_id, app_id)
            return token

    def issue_access_token(self, user: DriveUser, app_id: str = WEB_APP_ID) -> str:
        """Return a new access token of *app_id* for *user*, valid for ``access_token_ttl``."""
        with self.lock:
            token = "at." + secrets.token_urlsafe(32)
            expires_at = self.now() + self.settings.access_token_ttl
            self._access[token] = _AccessToken(user.user_id, app_id, expires_at)
            return token

    def token_response(self, user: DriveUser, app_id: str = WEB_APP_ID) -> JSON:
        """Return a /v2/account/token answer for *user* with a fresh token pair of *app_id*."""
        access = self.issue_access_token(user, app_id=app_id)
        refresh = self.issue_refresh_token(user, app_id=app_id)
        ttl = self.settings.access_token_ttl
        return {
            "default_sbox_drive_id": "",
            "role": "user",
            "device_id": hashlib.md5(user.user_id.encode()).hexdigest(),
            "user_name": user.user_name,
            "need_link": False,
            "expire_time": _now_iso(self.now() + ttl),
            "pin_setup": True,
            "need_rp_verify": False,
            "avatar": "",
            "user_data": {},
            "token_type": "Bearer",
            "access_token": access,
            "default_drive_id": user.default_drive_id,
            "domain_id": DOMAIN_ID,
            "refresh_token": refresh,
            "is_first_login": False,
            "user_id": user.user_id,
            "nick_name": user.user_name,
            "exist_link": [],
            "state": "",
            "expires_in": int(ttl),
            "status": "enabled",
        }

    def refresh(self, body: JSON) -> JSON:
        """Exchange a refresh token for a new pair; the old refresh token dies at once (rotation)."""
        with self.lock:
            if body.get("grant_type") != "refresh_token":
                raise _bad("GrantType")
            owner = self._refresh.pop(str(body.get("refresh_token") or ""), None)
            if owner is None:
                self._counts["refresh_failures"] += 1
                raise ApiError(
                    400, "InvalidParameter.RefreshToken", "The input parameter refresh_token is not valid. "
                )
            self._counts["refreshes"] += 1
            user_id, app_id = owner
            return self.token_response(self._users[user_id], app_id=app_id)

    def authenticate(self, authorization: str | None) -> CallContext:
        """Given the Authorization header (with or without "Bearer "), return the caller; 401 else."""
        token = (authorization or "").strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        with self.lock:
            record = self._access.get(token)
            if record is None:
                raise ApiError(401, "AccessTokenInvalid", "AccessToken is invalid. ErrValidateTokenFailed")
            if record.expires_at <= self.now():
                raise ApiError(401, "AccessTokenExpired", "AccessToken is expired. ErrValidateTokenFailed")
            return CallContext(self._users[record.user_id], token, record.app_id)

    def expire_access_tokens(self, user: DriveUser | None = None) -> None:
        """Make every access token (of *user*, or of everyone) expired: the next call gets a 401."""
        with self.lock:
            for record in self._access.values():
                if user is None or record.user_id == user.user_id:
                    record.expires_at = min(record.expires_at, self.now())

    def revoke_refresh_tokens(self, user: DriveUser | None = None) -> None:
        """Invalidate every live refresh token (of *user*, or of everyone), as a logout would."""
        with self.lock:
            for token, (owner, _app) in list(self._refresh.items()):
                if user is None or owner == user.user_id:
                    del self._refresh[token]

    # -- content store ----------------------------------------------------------------------

    def seed_content(self, source: bytes | Path) -> str:
        """Make *source* known to the global content store, as if another user had uploaded it, and
        return its content_hash. Streams files; never holds them in memory."""
        tmp = self.root / "tmp" / f"seed-{secrets.token_hex(8)}"
        sha1 = hashlib.sha1()
        head = b""
        size = 0
        with tmp.open("wb") as out:
            for chunk in _chunks(source):
                if len(head) < 1024:
                    head += chunk[: 1024 - len(head)]
                sha1.update(chunk)
                out.write(chunk)
                size += len(chunk)
        return self._adopt(tmp, sha1.hexdigest().upper(), size, pre_hash(head)).content_hash

    def _adopt(self, data: Path, content_hash: str, size: int, head_hash: str) -> _Blob:
        with self.lock:
            blob = self._blobs.get(content_hash)
            if blob is not None:
                data.unlink(missing_ok=True)
                return blob
            target = self.root / "blobs" / content_hash[:2] / content_hash
            target.parent.mkdir(exist_ok=True)
            os.replace(data, target)
            blob = _Blob(content_hash, size, head_hash, target)
            self._blobs[content_hash] = blob
            self._by_pre_hash.setdefault((head_hash, size), blob)
            return blob

    # -- failure injection ------------------------------------------------------------------

    def inject(self, injection: Injection) -> None:
        with self.lock:
            self._injections.append(injection)

    def take_injection(self, path: str) -> Injection | None:
        """Return (and use up one count of) the first injection that matches *path*, if any."""
        with self.lock:
            for injection in self._injections:
                if injection.matches(path):
                    injection.remaining -= 1
                    if injection.remaining <= 0:
                        self._injections.remove(injection)
                    return injection
        return None

    def reject_next_proofs(self, count: int) -> None:
        with self.lock:
            self._reject_proofs += count

    def corrupt_next_parts(self, count: int) -> None:
        with self.lock:
            self._corrupt_parts += count

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

    def expire_download_urls(self) -> None:
        with self.lock:
            self._download_url_floor = self._url_seq + 1

    def expire_upload_ids(self, upload_id: str | None = None) -> None:
        with self.lock:
            for upload in list(self._uploads.values()):
                if upload_id is None or upload.upload_id == upload_id:
                    self._drop_upload(upload, "expired")

    def corrupt(self, file_id: str, offset: int | None = None) -> None:
        """Flip one byte of a file's stored bytes (same size), leaving its content_hash as it was.

        The file gets a private copy, so other files and rapid-upload proofs still see good bytes.
        """
        with self.lock:
            node = self._nodes[file_id]
            source = node.data_path
            if source is None or node.size == 0:
                raise ValueError(f"file {file_id} has no bytes to corrupt")
            target = self.root / "corrupt" / f"{file_id}-{secrets.token_hex(4)}"
            shutil.copyfile(source, target)
            where = node.size // 2 if offset is None else offset
            with target.open("r+b") as handle:
                handle.seek(where)
                byte = handle.read(1)
                handle.seek(where)
                handle.write(bytes([byte[0] ^ 0xFF]))
            node.corrupt_path = target

    # -- counters ---------------------------------------------------------------------------

    def count(self, name: str, amount: int = 1) -> None:
        with self.lock:
            self._counts[name] += amount

    def count_put_bytes(self, upload_id: str, amount: int) -> None:
        with self.lock:
            self._counts["put_bytes"] += amount
            self._put_by_upload[upload_id] += amount

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

    # -- the JSON API -----------------------------------------------------------------------

    def handle_api(
        self, path: str, authorization: str | None, raw_body: bytes, device_id: str | None = None
    ) -> tuple[int, JSON | None]:
        """Answer one POST on the API host: parse the body, authenticate, check the device, route."""
        with self.lock:
            self._calls[path] += 1
        body = _parse_body(raw_body)
        known = path in _ROUTES or path in (REFRESH_PATH, CREATE_SESSION_PATH)
        if not known or path in self.settings.removed_endpoints:
            # Every web-API error is {code, message}; the message for an unknown path is this fake's.
            raise ApiError(404, "NotFound", "no such api")
        if path == REFRESH_PATH:
            return 200, self.refresh(body)
        ctx = self.authenticate(authorization)
        if path == CREATE_SESSION_PATH:
            return self.create_session(ctx, device_id or "")
        self._check_device(ctx, device_id or "")
        return _ROUTES[path](self, ctx, body)

    # -- device sessions (reference: real-services §2) -------------------------------------------

    def _known_device(self, user_id: str, device_id: str) -> bool:
        """Record *device_id* for *user_id*; return False once it is past the device limit."""
        seen = self._devices.setdefault(user_id, [])
        if device_id not in seen:
            seen.append(device_id)
        limit = self.settings.max_devices
        return limit is None or seen.index(device_id) < limit

    def _check_device(self, ctx: CallContext, device_id: str) -> None:
        """Refuse a call from a device past the limit, without a session, or with a signature the
        service does not accept (per ``settings.device_policy``)."""
        policy = self.settings.device_policy
        if policy not in DEVICE_POLICIES:
            raise ValueError(f"device_policy must be one of {sorted(DEVICE_POLICIES)}, not {policy!r}")
        user_id = ctx.user.user_id
        with self.lock:
            if not self._known_device(user_id, device_id):
                raise _device_offline()
            if policy == "require_session" and (user_id, device_id) not in self._sessions:
                raise _device_offline()
        if policy == "reject":
            raise ApiError(400, "DeviceSessionSignatureInvalid", "device session signature error")

    def log_out_device(self, user: DriveUser, device_id: str) -> None:
        """Forget *device_id* for *user*, as logging it out in the Aliyun Drive app does: its slot
        goes to the next device, and it needs a new session."""
        with self.lock:
            seen = self._devices.get(user.user_id, [])
            if device_id in seen:
                seen.remove(device_id)
            self._sessions.discard((user.user_id, device_id))

    def create_session(self, ctx: CallContext, device_id: str) -> tuple[int, JSON]:
        """/users/v1/users/device/create_session: register the device's key. A device past the
        limit gets ``result: false`` (tickstep/aliyunpan reads that as "too many devices")."""
        with self.lock:
            if not self._known_device(ctx.user.user_id, device_id):
                return 200, {"result": False, "success": False, "code": "UserDeviceOffline", "message": None}
            self._sessions.add((ctx.user.user_id, device_id))
        return 200, {"result": True, "success": True, "code": None, "message": None}

    def _drive_id(self, ctx: CallContext, body: JSON) -> str:
        drive_id = str(body.get("drive_id") or ctx.user.default_drive_id)
        if self._drive_owner.get(drive_id) != ctx.user.user_id:
            raise ApiError(404, "NotFound.Drive", "The resource drive cannot be found.")
        return drive_id

    def _visible(self, node: _Node) -> bool:
        return node.status == "available" and not node.trashed

    def _node(self, drive_id: str, file_id: str) -> _Node:
        if file_id == ROOT:
            return _Node(ROOT, drive_id, "", ROOT, "folder", 0.0, 0.0)
        node = self._nodes.get(file_id)
        if node is None or node.drive_id != drive_id:
            raise _not_found_file()
        return node

    def _folder(self, drive_id: str, file_id: str) -> _Node:
        node = self._node(drive_id, file_id)
        if node.type != "folder" or node.trashed or node.status != "available":
            raise _not_found_file()
        return node

    def _find(
        self, drive_id: str, parent_id: str, name: str, kind: str, exclude: _Node | None = None
    ) -> _Node | None:
        for node in self._children.get((drive_id, parent_id), {}).values():
            if node.name == name and node.type == kind and node is not exclude and self._visible(node):
                return node
        return None

    def _free_name(self, drive_id: str, parent_id: str, name: str, kind: str) -> str:
        # The real service's auto_rename pattern is undocumented; "x(1).bin" is this fake's choice.
        stem, dot, ext = name.rpartition(".") if kind == "file" and "." in name[1:] else (name, "", "")
        n = 1
        while True:
            candidate = f"{stem}({n}){dot}{ext}"
            if self._find(drive_id, parent_id, candidate, kind) is None:
                return candidate
            n += 1

    def _add_node(self, node: _Node) -> _Node:
        self._nodes[node.file_id] = node
        self._children.setdefault((node.drive_id, node.parent_file_id), {})[node.file_id] = node
        return node

    def _new_node(self, drive_id: str, parent_id: str, name: str, kind: str, **extra: Any) -> _Node:
        now = self.now()
        return self._add_node(
            _Node(secrets.token_hex(20), drive_id, parent_id, name, kind, now, now, **extra)
        )

    def _remove_node(self, node: _Node) -> None:
        for child in list(self._children.get((node.drive_id, node.file_id), {}).values()):
            self._remove_node(child)
        self._nodes.pop(node.file_id, None)
        self._children.get((node.drive_id, node.parent_file_id), {}).pop(node.file_id, None)

    def _place(self, node: _Node, mode: str) -> None:
        """Resolve a name collision for *node*, about to become visible, under *mode*."""
        other = self._find(node.drive_id, node.parent_file_id, node.name, node.type, exclude=node)
        if other is None or mode == "ignore":
            return
        if mode == "refuse":
            raise ApiError(
                409, "AlreadyExist.File", f"The resource file has already exists. file_id {other.file_id}"
            )
        if mode == "overwrite":
            other.trashed = True
            other.updated_at = self.now()
        else:
            node.name = self._free_name(node.drive_id, node.parent_file_id, node.name, node.type)

    def _file_json(self, node: _Node) -> JSON:
        out: JSON = {
            "drive_id": node.drive_id,
            "domain_id": DOMAIN_ID,
            "file_id": node.file_id,
            "name": node.name,
            "type": node.type,
            "created_at": _now_iso(node.created_at),
            "updated_at": _now_iso(node.updated_at),
            "hidden": False,
            "starred": False,
            "status": node.status,
            "parent_file_id": node.parent_file_id,
            "encrypt_mode": "none",
            "revision_id": "",
            "trashed": node.trashed,
        }
        if node.type == "file":
            ext = node.name.rpartition(".")[2] if "." in node.name else ""
            out.update(
                {
                    "content_type": "application/oct-stream",
                    "file_extension": ext,
                    "mime_type": "application/octet-stream",
                    "mime_extension": ext,
                    "size": node.size,
                    "category": "others",
                    "punish_flag": 0,
                }
            )
            if node.blob is not None:
                out.update({"content_hash": node.blob.content_hash, "content_hash_name": "sha1"})
            if node.upload_id:
                out["upload_id"] = node.upload_id
        return out

    def _created_json(self, node: _Node, **extra: Any) -> JSON:
        out: JSON = {
            "parent_file_id": node.parent_file_id,
            "type": node.type,
            "file_id": node.file_id,
            "domain_id": DOMAIN_ID,
            "drive_id": node.drive_id,
            "file_name": node.name,
            "encrypt_mode": "none",
            "location": "cn-beijing",
        }
        out.update(extra)
        return out

    # createWithFolders ---------------------------------------------------------------------

    def create(self, ctx: CallContext, body: JSON) -> tuple[int, JSON | None]:
        """createWithFolders: a folder, or a file by pre-hash / rapid upload / new multipart upload.

        A ``name`` with slashes creates the missing folders on the way (reusing existing ones).
        """
        with self.lock:
            drive_id = self._drive_id(ctx, body)
            kind = body.get("type") or "file"
            mode = body.get("check_name_mode") or "auto_rename"
            if mode not in NAME_MODES:
                raise _bad("CheckNameMode")
            segments = str(body.get("name") or "").split("/")
            if any(not s or s in {".", ".."} for s in segments):
                raise _bad("Name", "The input parameter name is not valid.")
            parent_id = self._folder(drive_id, str(body.get("parent_file_id") or ROOT)).file_id
            for segment in segments[:-1]:
                folder = self._find(drive_id, parent_id, segment, "folder")
                parent_id = (folder or self._new_node(drive_id, parent_id, segment, "folder")).file_id
            name = segments[-1]
            if kind == "folder":
                return 201, self._create_folder(drive_id, parent_id, name, mode)
            if kind != "file":
                raise _bad("Type")
            return self._create_file(ctx, body, drive_id=drive_id, parent_id=parent_id, name=name, mode=mode)

    def _create_folder(self, drive_id: str, parent_id: str, name: str, mode: str) -> JSON:
        existing = self._find(drive_id, parent_id, name, "folder")
        if existing is not None and mode in {"refuse", "overwrite"}:
            # Overwriting a folder would drop its contents; this fake answers it like refuse.
            return self._created_json(existing, exist=True)
        if existing is not None and mode == "auto_rename":
            name = self._free_name(drive_id, parent_id, name, "folder")
        return self._created_json(self._new_node(drive_id, parent_id, name, "folder"))

    def _create_file(
        self, ctx: CallContext, body: JSON, *, drive_id: str, parent_id: str, name: str, mode: str
    ) -> tuple[int, JSON]:
        size = _as_int(body.get("size"), "Size")
        if size < 0:
            raise _bad("Size")
        existing = self._find(drive_id, parent_id, name, "file")
        if existing is not None and mode == "refuse":
            return 201, self._created_json(existing, exist=True, rapid_upload=False)
        parts = _part_numbers(body.get("part_info_list"))
        content_hash = body.get("content_hash")
        if content_hash:
            blob = self._rapid_hit(ctx, str(content_hash), size, body)
            if blob is not None:
                node = _Node(secrets.token_hex(20), drive_id, parent_id, name, "file", self.now(), self.now())
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
        upload = _Upload(
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

    def _rapid_hit(self, ctx: CallContext, content_hash: str, size: int, body: JSON) -> _Blob | None:
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

    # multipart ---------------------------------------------------------------------------------

    def _sign(self, kind: str, params: dict[str, str]) -> str:
        message = kind + "\n" + "&".join(f"{k}={params[k]}" for k in sorted(params))
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()

    def _part_json(self, upload: _Upload, part_number: int) -> JSON:
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

    def _live_upload(self, ctx: CallContext, body: JSON) -> _Upload:
        drive_id = self._drive_id(ctx, body)
        upload = self._uploads.get(str(body.get("upload_id") or ""))
        if upload is None or upload.drive_id != drive_id or upload.state != "open":
            raise _no_upload()
        if body.get("file_id") not in (None, upload.file_id):
            raise _no_upload()
        if upload.expires_at <= self.now():
            self._drop_upload(upload, "expired")
            raise _no_upload()
        return upload

    def _drop_upload(self, upload: _Upload, state: str) -> None:
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
                "create_at": _now_iso(upload.created_at),
                "part_info_list": [self._part_json(upload, n) for n in parts],
            }

    def list_uploaded_parts(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """Return the parts received so far after ``part_number_marker``, one page at a time."""
        with self.lock:
            upload = self._live_upload(ctx, body)
            marker = body.get("part_number_marker") or 0
            after = _as_int(marker, "PartNumberMarker")
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

    # PUT on a part URL ---------------------------------------------------------------------

    def begin_put(self, path: str, query: str) -> PutTicket:
        """Check a part PUT (signature, expiry, generation, upload, order) and reserve the upload.

        The caller streams the body into ``ticket.data_path`` at ``ticket.offset``, then calls
        commit_put, and end_put in all cases.
        """
        params = _query(query)
        signature = params.pop("x-oss-signature", "")
        if not hmac.compare_digest(signature, self._sign(path, params)):
            raise ApiError(
                403, "SignatureDoesNotMatch", "The request signature we calculated does not match."
            )
        with self.lock:
            upload = self._uploads.get(params.get("uploadId", ""))
            seq = int(params["x-relayd-seq"])
            if int(params["x-oss-expires"]) <= self.now() or seq < self._upload_url_floor:
                raise _expired_url()
            if upload is None or upload.state != "open" or upload.expires_at <= self.now():
                raise ApiError(404, "NoSuchUpload", "The specified upload does not exist.")
            if seq < upload.url_floor or int(params["x-relayd-gen"]) != upload.generation:
                raise _expired_url()
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
            upload.parts.append(_Part(ticket.part_number, received, etag))
            upload.committed += received
            upload.sha1 = ticket.sha1
            self._counts["parts_received"] += 1
            return etag

    def end_put(self, ticket: PutTicket) -> None:
        ticket.upload.busy.release()

    # files -----------------------------------------------------------------------------------

    def get_file(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        with self.lock:
            drive_id = self._drive_id(ctx, body)
            file_id = str(body.get("file_id") or "")
            if file_id == ROOT:
                root = self._node(drive_id, ROOT)
                return 200, self._file_json(root)
            return 200, self._file_json(self._node(drive_id, file_id))

    def list_files(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """List a folder's visible children in pages: ``next_marker`` is "" on the last page."""
        with self.lock:
            drive_id = self._drive_id(ctx, body)
            parent = self._folder(drive_id, str(body.get("parent_file_id") or ROOT))
            items = [
                n for n in self._children.get((drive_id, parent.file_id), {}).values() if self._visible(n)
            ]
            return 200, self._page(items, body)

    def list_trash(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        with self.lock:
            drive_id = self._drive_id(ctx, body)
            items = [n for n in self._nodes.values() if n.drive_id == drive_id and n.trashed]
            return 200, self._page(items, body)

    def _page(self, items: list[_Node], body: JSON) -> JSON:
        limit = _as_int(body.get("limit") or 100, "Limit")
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise _bad("Limit", f"limit must be between 1 and {MAX_LIST_LIMIT}")
        kind = body.get("type")
        if kind:
            items = [n for n in items if n.type == kind]
        order_by = body.get("order_by") or "name"
        keys: dict[str, Callable[[_Node], Any]] = {
            "name": lambda n: n.name,
            "created_at": lambda n: n.created_at,
            "updated_at": lambda n: n.updated_at,
            "size": lambda n: n.size,
        }
        if order_by not in keys:
            raise _bad("OrderBy")
        key = keys[order_by]
        descending = str(body.get("order_direction") or "ASC").upper() == "DESC"
        items.sort(key=lambda n: (key(n), n.file_id), reverse=descending)
        offset = _decode_marker(body.get("marker"))
        size = min(limit, max(1, self.settings.page_limit))
        page = items[offset : offset + size]
        more = offset + size < len(items)
        return {
            "items": [self._file_json(n) for n in page],
            "next_marker": _encode_marker(offset + size) if more else "",
            "punished_file_count": 0,
        }

    def update_file(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """/v3/file/update: rename (``check_name_mode`` refuse by default: 409 on a clash)."""
        with self.lock:
            node = self._node(self._drive_id(ctx, body), str(body.get("file_id") or ""))
            if node.file_id == ROOT:
                raise _bad("FileId")
            new_name = body.get("name")
            if new_name is not None and new_name != node.name:
                if not new_name or "/" in new_name:
                    raise _bad("Name")
                old, node.name = node.name, str(new_name)
                try:
                    self._place(node, body.get("check_name_mode") or "refuse")
                except ApiError:
                    node.name = old
                    raise
                node.updated_at = self.now()
            return 200, self._file_json(node)

    def move_file(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        with self.lock:
            drive_id = self._drive_id(ctx, body)
            node = self._node(drive_id, str(body.get("file_id") or ""))
            target = self._folder(drive_id, str(body.get("to_parent_file_id") or ROOT))
            if node.file_id == ROOT or self._is_within(target, node):
                raise _bad("ToParentFileId")
            mode = (
                "overwrite"
                if body.get("overwrite")
                else "auto_rename"
                if body.get("auto_rename")
                else "refuse"
            )
            old_parent, old_name = node.parent_file_id, node.name
            self._children[(drive_id, old_parent)].pop(node.file_id)
            node.parent_file_id = target.file_id
            node.name = str(body.get("new_name") or node.name)
            try:
                self._place(node, mode)
            except ApiError:
                node.parent_file_id, node.name = old_parent, old_name
                raise
            finally:
                self._children.setdefault((drive_id, node.parent_file_id), {})[node.file_id] = node
            node.updated_at = self.now()
            return 200, {"domain_id": DOMAIN_ID, "drive_id": drive_id, "file_id": node.file_id}

    def _is_within(self, folder: _Node, ancestor: _Node) -> bool:
        current: _Node | None = folder
        while current is not None and current.file_id != ROOT:
            if current.file_id == ancestor.file_id:
                return True
            current = self._nodes.get(current.parent_file_id)
        return False

    def trash(self, ctx: CallContext, body: JSON) -> tuple[int, JSON | None]:
        """/v2/recyclebin/trash: 204 for a file, 202 with an async task id for a folder."""
        with self.lock:
            node = self._node(self._drive_id(ctx, body), str(body.get("file_id") or ""))
            if node.file_id == ROOT:
                raise _bad("FileId")
            node.trashed = True
            node.updated_at = self.now()
            if node.type == "file":
                return 204, None
            return 202, {
                "domain_id": DOMAIN_ID,
                "drive_id": node.drive_id,
                "file_id": node.file_id,
                "async_task_id": secrets.token_hex(16),
            }

    def restore(self, ctx: CallContext, body: JSON) -> tuple[int, JSON | None]:
        with self.lock:
            node = self._node(self._drive_id(ctx, body), str(body.get("file_id") or ""))
            node.trashed = False
            self._place(node, "auto_rename")
            return 204, None

    def delete(self, ctx: CallContext, body: JSON) -> tuple[int, JSON | None]:
        with self.lock:
            node = self._node(self._drive_id(ctx, body), str(body.get("file_id") or ""))
            if node.file_id == ROOT:
                raise _bad("FileId")
            self._remove_node(node)
            return 204, None

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

    def get_download_url(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """Sign a download link valid for ``expire_sec`` (at most ``max_download_expire_sec``)."""
        with self.lock:
            drive_id = self._drive_id(ctx, body)
            node = self._node(drive_id, str(body.get("file_id") or ""))
            if node.type == "folder":
                raise ApiError(400, "InvalidResource.FileTypeFolder", "Folder has no download url.")
            if node.blob is None:
                raise _not_found_file()
            expire = _as_int(body.get("expire_sec") or 900, "ExpireSec")
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
                "expiration": _now_iso(expires_at),
                "size": node.size,
                "content_hash": node.blob.content_hash,
                "content_hash_name": "sha1",
                "ratelimit": {"part_speed": -1, "part_size": -1},
            }

    def open_download(self, path: str, query: str, referer: str | None, counted: bool) -> DownloadTicket:
        """Check a download GET (signature, expiry, Referer, file, concurrency cap) and take a slot."""
        params = _query(query)
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
        required = self.settings.download_referer
        if required is not None and (referer or "").rstrip("/") != required.rstrip("/"):
            raise ApiError(403, "AccessDenied", "You are denied by bucket referer policy.")
        with self.lock:
            if (
                int(params["x-oss-expires"]) <= self.now()
                or int(params["x-relayd-seq"]) < self._download_url_floor
            ):
                raise _expired_url()
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
                    raise _over_cap()
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

    # users ---------------------------------------------------------------------------------

    def get_user(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """/v2/user/get (on the user host): the account and its drive ids."""
        user = ctx.user
        return 200, {
            "domain_id": DOMAIN_ID,
            "user_id": user.user_id,
            "avatar": "",
            "created_at": 0,
            "updated_at": 0,
            "email": "",
            "nick_name": user.user_name,
            "phone": "",
            "role": "user",
            "status": "enabled",
            "user_name": user.user_name,
            "description": "",
            "default_drive_id": user.default_drive_id,
            "backup_drive_id": user.default_drive_id,
            "resource_drive_id": user.resource_drive_id,
            "sbox_drive_id": None,
            "user_data": {},
            "display_name": user.user_name,
        }

    def renew_session(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """renew_session: accepted for a device that passed the device checks."""
        return 200, {"result": True, "success": True, "code": None, "message": None}

    # -- inspection -------------------------------------------------------------------------

    def path_of(self, node: _Node) -> str:
        names = []
        current: _Node | None = node
        while current is not None and current.file_id != ROOT:
            names.append(current.name)
            current = self._nodes.get(current.parent_file_id)
        return "/" + "/".join(reversed(names))

    def _view(self, node: _Node) -> StoredFile:
        return StoredFile(
            file_id=node.file_id,
            drive_id=node.drive_id,
            parent_file_id=node.parent_file_id,
            path=self.path_of(node),
            name=node.name,
            type=node.type,
            size=node.size,
            content_hash=node.blob.content_hash if node.blob else None,
            data_path=node.data_path,
            status=node.status,
            trashed=node.trashed,
        )

    def lookup(self, path: str, drive_id: str) -> StoredFile | None:
        """Return the visible file or folder at *path* ("/relayd/owner/name/x.bin") in *drive_id*."""
        with self.lock:
            parent = ROOT
            segments = [s for s in PurePosixPath(path).parts if s != "/"]
            node: _Node | None = None
            for i, segment in enumerate(segments):
                last = i == len(segments) - 1
                kinds = ("file", "folder") if last else ("folder",)
                node = next(
                    (found for kind in kinds if (found := self._find(drive_id, parent, segment, kind))),
                    None,
                )
                if node is None:
                    return None
                parent = node.file_id
            return self._view(node) if node is not None else None

    def view(self, file_id: str) -> StoredFile | None:
        with self.lock:
            node = self._nodes.get(file_id)
            return self._view(node) if node is not None else None

    def all_files(self, drive_id: str | None, include_hidden: bool) -> list[StoredFile]:
        with self.lock:
            nodes = [
                n
                for n in self._nodes.values()
                if (drive_id is None or n.drive_id == drive_id) and (include_hidden or self._visible(n))
            ]
            return sorted((self._view(n) for n in nodes), key=lambda f: (f.drive_id, f.path))

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

    def user(self, user_id: str) -> DriveUser:
        with self.lock:
            return self._users[user_id]


# -- small parsers ---------------------------------------------------------------------------


def _chunks(source: bytes | Path) -> Iterator[bytes]:
    if isinstance(source, bytes):
        yield source
        return
    with source.open("rb") as handle:
        while chunk := handle.read(_COPY_CHUNK):
            yield chunk


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


def _as_int(value: Any, field_name: str) -> int:
    if isinstance(value, bool):
        raise _bad(field_name)
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise _bad(field_name) from exc


def _part_numbers(raw: Any) -> list[int]:
    """Return the part numbers of a ``part_info_list`` (null fields tolerated); [1] when absent."""
    if not raw:
        return [1]
    if not isinstance(raw, list) or len(raw) > MAX_PARTS:
        raise _bad("PartInfoList")
    numbers = []
    for item in raw:
        number = _as_int(item.get("part_number") if isinstance(item, dict) else None, "PartNumber")
        if not 1 <= number <= MAX_PARTS:
            raise _bad("PartNumber")
        numbers.append(number)
    return numbers


def _query(query: str) -> dict[str, str]:
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    for required in ("x-oss-expires", "x-relayd-seq"):
        if not params.get(required, "").isdigit():
            raise ApiError(
                403, "SignatureDoesNotMatch", "The request signature we calculated does not match."
            )
    return params


def _encode_marker(offset: int) -> str:
    return base64.urlsafe_b64encode(f"relayd-list:{offset}".encode()).decode()


def _decode_marker(marker: Any) -> int:
    if not marker:
        return 0
    try:
        text = base64.urlsafe_b64decode(str(marker).encode()).decode()
        prefix, _, number = text.partition(":")
        if prefix != "relayd-list":
            raise ValueError(text)
        return int(number)
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise _bad("Marker") from exc


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

_BATCH_ROUTES: dict[str, Route] = {
    "/file/get": DriveStore.get_file,
    "/file/update": DriveStore.update_file,
    "/file/move": DriveStore.move_file,
    "/file/delete": DriveStore.delete,
    "/file/get_download_url": DriveStore.get_download_url,
    "/recyclebin/trash": DriveStore.trash,
    "/recyclebin/restore": DriveStore.restore,
}
