"""What the fake Aliyun Drive is made of: its constants, the error answers it gives (``ApiError``), the
settings tests turn, the views tests read, the records it keeps and the tickets its HTTP side holds
while a body flows, and the small parsers every part of it uses. Nothing here holds state.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

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


def now_iso(ts: float) -> str:
    moment = datetime.fromtimestamp(ts, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


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
        plain: str | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message or code
        self.headers = headers or {}
        #: More elements of the data host's XML error (``EC``, ``RecommendDoc``), after ``HostId``.
        self.extra = extra or {}
        #: A non-JSON body sent as it is instead of ``{code, message}`` (a gateway's "Payload Too Large").
        self.plain = plain


def bad_parameter(field_name: str, message: str = "") -> ApiError:
    return ApiError(
        400, f"InvalidParameter.{field_name}", message or f"The input parameter {field_name} is not valid."
    )


def not_found_file() -> ApiError:
    return ApiError(404, "NotFound.File", "The resource file cannot be found. file not exist")


def no_upload() -> ApiError:
    return ApiError(404, "NotFound.UploadId", "The resource upload_id cannot be found.")


def expired_url() -> ApiError:
    return ApiError(403, "AccessDenied", "Request has expired.")


def over_cap() -> ApiError:
    """The data host's answer past the concurrent-download cap: Aliyun's callback refuses the GET
    (AlistGo/alist#7258; the limits are Aliyun's 2024-04 notice, gaozhangmin/boxplayer#422)."""
    return ApiError(
        403,
        "AccessDenied",
        "Callback deny this request reason: ExceedMaxConcurrency",
        extra={"EC": CAP_EC, "RecommendDoc": f"https://api.aliyun.com/troubleshoot?q={CAP_EC}"},
    )


def device_offline() -> ApiError:
    # The code is the service's (tickstep/aliyunpan-api apierror code 31); the message follows what
    # tickstep/aliyunpan's README tells users it means.
    return ApiError(
        401,
        "UserDeviceOffline",
        "the client is offline: one account may be logged in on at most 10 devices at once",
    )


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
    #: Open Platform: how long a login QR code stays scannable (undocumented; this fake's choice).
    qr_ttl: float = 300.0
    #: Open Platform: scan and confirm a QR code by itself at its Nth status poll (the demo; None:
    #: only ``scan_qr`` does).
    qr_auto_login_polls: int | None = None
    #: Open Platform: files above this size are refused at create with 413 "Payload Too Large"
    #: (tickstep/aliyunpan#460, #469, #483; the figure is disputed, 30 GB to 100 GB).
    open_max_file_size: int | None = 30 * 1000**3
    #: Open Platform: the longest download link without a special application (900 s by default).
    open_max_download_expire_sec: int = 900
    #: Open Platform: whether the account bought the third-party rights package (getVipInfo).
    third_party_vip: bool = False


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


@dataclass
class StoredBlob:
    content_hash: str
    size: int
    pre_hash: str
    path: Path


@dataclass
class Node:
    file_id: str
    drive_id: str
    parent_file_id: str
    name: str
    type: str
    created_at: float
    updated_at: float
    size: int = 0
    blob: StoredBlob | None = None
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
class Part:
    part_number: int
    size: int
    etag: str


@dataclass
class Upload:
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
    parts: list[Part] = field(default_factory=list)
    committed: int = 0
    generation: int = 1
    url_floor: int = 0
    state: str = "open"
    busy: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class AccessToken:
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

    upload: Upload
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


def as_int(value: Any, field_name: str) -> int:
    if isinstance(value, bool):
        raise bad_parameter(field_name)
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise bad_parameter(field_name) from exc


def signed_query(query: str) -> dict[str, str]:
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    for required in ("x-oss-expires", "x-relayd-seq"):
        if not params.get(required, "").isdigit():
            raise ApiError(
                403, "SignatureDoesNotMatch", "The request signature we calculated does not match."
            )
    return params
