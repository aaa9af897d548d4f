"""AligoDrive: the Drive interface for Aliyun Drive, on aligo 6.2.8 for auth and low-level API calls.

aligo does the token refresh and the JSON calls (``create_file``, ``get_upload_url``, ``complete_file``,
``get_file``, ``get_download_url``, folder creation, ``post`` for what it does not wrap). relayd does the
rest (reference/aliyun-drive.md §3-§10): pre-hash, proof code and the rapid-upload decision; sequential
multipart PUTs from a separate HTTP session that never carries the access token, with strict status
checks; resume of a saved upload id from the first part the drive lacks; the size and content-hash check
at the end. aligo's own upload and download are never called (no resume, unchecked statuses).

Headless: aligo is imported with a private HOME and ``TQDM_DISABLE=1``; its ``config.json5`` lookup
points at a private folder that holds none; the QR login is replaced by an error; ``re_login`` is off;
every request has a timeout; ``coloredlogs`` is kept from rewiring logging, so aligo's records reach
relayd's handlers (and its secret scrubber) through the ``aligo`` logger. aligo's refresh, save and
response hooks are replaced on the instance so that every refresh runs under the token lock and is
saved atomically (``relayd.drive.tokens``), and so that 429 and 5xx answers reach relayd with their
Retry-After instead of aligo's fixed sleeps.
"""

from __future__ import annotations

import email.utils
import importlib
import json
import logging
import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from relayd.config import DriveConfig
from relayd.drive._redirect import proxy_session, redirect_session
from relayd.drive.base import (
    LOGIN_HINT,
    ContentMismatch,
    DownloadLink,
    Drive,
    DriveFile,
    LocalFile,
    NameTaken,
    TokenLifetime,
    UploadCallbacks,
    UploadGone,
    UploadResult,
)
from relayd.drive.hashing import (
    PART_SIZE,
    PRE_HASH_BYTES,
    part_count,
    part_size_for,
    pre_hash,
    proof_code,
)
from relayd.drive.tokens import TokenStore, expiry_from, fingerprint, new_record, parse_time
from relayd.errors import Cancelled, ConfigError, ErrorClass, HopError, NeedsPerson, Permanent, Retryable
from relayd.logs import SCRUBBER

log = logging.getLogger(__name__)

DEFAULT_API = "https://api.aliyundrive.com"
#: aligo's instance name: its logger ("aligo", quietened by relayd's logging setup) and token file.
ALIGO_NAME = "aligo"
#: Refresh ahead of expiry when the access token has less than this left.
REFRESH_MARGIN = 300.0
PUT_CHUNK = 1024 * 1024
#: Attempts at one part within one run (expired URL, dropped connection, lost answer).
PART_ATTEMPTS = 4
#: Part URLs requested at a time when they must be refreshed (each request voids the earlier ones).
URL_BATCH = 64
LIST_LIMIT = 200
#: Most bytes of an error answer from the upload host relayd reads (OSS errors are < 1 KiB).
ERROR_BODY_LIMIT = 4096
#: Codes of a refused rapid-upload proof: aligo's, tickstep/aliyunpan-api's (``InvalidRapidProof``,
#: its code 22), and a bare ``InvalidParameter``.
PROOF_REFUSED = ("InvalidParameter.ProofCode", "InvalidRapidProof", "InvalidParameter")
#: The web origins whose Referer the drive's download links accept: the configured one is sent, the
#: other is offered to vm_pull for when the data host refuses it (syhyz1990/baiduyun#333).
REFERERS = ("https://www.aliyundrive.com/", "https://www.alipan.com/")
DEVICES_HINT = (
    "one Aliyun Drive account may be logged in on at most 10 devices: log one out in the Aliyun Drive "
    "app (settings, devices), then `relayctl retry`; if it was relayd's own, log relayd in again with "
    "`relayctl drive login --refresh-token-file PATH`"
)
SIGNATURE_HINT = (
    "log relayd in again (`relayctl drive login --refresh-token-file PATH`), then `relayctl retry`; if "
    "the drive still refuses, it changed how devices sign requests and relayd (aligo) needs an update"
)
API_CHANGED_HINT = (
    "the drive API changed: relayd (or aligo, which it uses) needs an update; update relayd, then "
    "`relayctl retry`"
)

_aligo_lock = threading.RLock()

Publish = Callable[[str, dict[str, Any]], None]


class _Throttled(Exception):
    """The API answered 429 or 5xx; raised from aligo's response hook so aligo does not sleep."""

    def __init__(self, status: int, path: str, retry_after: float | None) -> None:
        super().__init__(f"{status} on {path}")
        self.status = status
        self.path = path
        self.retry_after = retry_after


class _InteractiveLoginRefused(Exception):
    """aligo tried to show a QR code; relayd never logs in interactively."""


def _refuse_login(_link: str) -> None:
    raise _InteractiveLoginRefused("relayd never logs in by QR code")


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


def _path_of(url: str) -> str:
    """Return the path of *url* without its query (signed URLs must not reach logs or errors)."""
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


def load_aligo(private_dir: Path) -> types.ModuleType:
    """Import aligo headless and return it: private HOME during the import, TQDM_DISABLE=1, its
    ``config.json5`` lookup moved to *private_dir*, and coloredlogs kept off relayd's handlers."""
    with _aligo_lock:
        os.environ["TQDM_DISABLE"] = "1"
        home = private_dir / "home"
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        if "aligo" not in sys.modules:
            # aligo creates ~/.aligo and binds its config folder from HOME at import time.
            saved = os.environ.get("HOME")
            os.environ["HOME"] = str(home)
            try:
                importlib.import_module("aligo")
            finally:
                if saved is None:
                    os.environ.pop("HOME", None)
                else:
                    os.environ["HOME"] = saved
        module = sys.modules["aligo"]
        # Aligo() reads <import-time folder>/config.json5 whatever set_config_folder says: it could set
        # proxies, a 0.0.0.0 QR server, e-mail and re_login (reference §9). Look in our folder instead.
        apis: Any = sys.modules["aligo.apis.Aligo"]
        apis.aligo_config_folder = private_dir
        stray = private_dir / "config.json5"
        if stray.exists():
            log.warning("removing %s: relayd configures aligo itself", stray)
            stray.unlink()
        # coloredlogs.install(logger=...) would take relayd's stderr handler off the root logger and
        # install its own there; aligo's records should simply propagate to relayd's handlers.
        quiet = types.SimpleNamespace(install=lambda *_a, **_k: None)
        auth: Any = sys.modules["aligo.core.Auth"]
        auth.coloredlogs = quiet
        aligo_log = logging.getLogger(ALIGO_NAME)
        if aligo_log.level == logging.NOTSET:
            aligo_log.setLevel(logging.WARNING)
        if not any(isinstance(f, _DemoteAnswers) for f in aligo_log.filters):
            aligo_log.addFilter(_DemoteAnswers())
        return module


class _DemoteAnswers(logging.Filter):
    """aligo logs every non-2xx answer as a warning, expected ones (PreHashMatched, an existing name)
    included; relayd reports what matters itself, so those lines go to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        message = record.getMessage()
        if message[:4].rstrip().isdigit() or message.startswith(("[method", "[url]", "[response body]")):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(ALIGO_NAME).isEnabledFor(logging.DEBUG)
        return True


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


class AligoDrive(Drive):
    """Aliyun Drive through aligo. Thread-safe; one instance per daemon (``make_drive``).

    *part_size* overrides the preferred part size (tests use small parts; the drive's own rules still
    apply to large files). *publish* receives ``("drive.token", fact)`` after each refresh.
    """

    backend = "aligo"

    def __init__(
        self,
        config: DriveConfig,
        state_dir: Path,
        *,
        publish: Publish | None = None,
        part_size: int = PART_SIZE,
    ) -> None:
        self.config = config
        self.tokens = TokenStore(state_dir / "drive")
        self._aligo_dir = state_dir / "drive" / "aligo"
        self._publish_fact = publish
        self._publish_lock = threading.Lock()
        self._preferred_part = part_size
        self._client_lock = threading.Lock()
        self._ali: Any = None
        self._errors: Any = None
        self._aligo_refresh: Callable[..., None] | None = None
        self._meta: dict[str, Any] = {}
        self._expires_at: datetime | None = None
        self._stamp: tuple[int, int] | None = None
        self._tls = threading.local()
        self._drive_id: str | None = None
        self._folders: dict[str, str] = {}
        self._folders_lock = threading.Lock()
        self._data = requests.Session()
        # Part URLs are signed; the access token must never go to OSS/CDN hosts, nor a ~/.netrc.
        self._data.trust_env = False
        proxy_session(self._data, config.proxy, config.ca_bundle)
        self._data.headers.pop("Authorization", None)
        self._timeout = (min(config.timeout, 30.0), config.timeout)
        # Import aligo now (a daemon builds its drive at start, before worker threads run): the import
        # briefly points HOME at a private folder.
        self.tokens.prepare()
        self._aligo_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        load_aligo(self._aligo_dir)
        # `relayctl status` shows the login's state from the start, before the first drive call: a
        # configured bootstrap token not yet exchanged counts as an expired access token.
        missing = self.tokens.lifetime().state == "missing"
        self._publish(TokenLifetime("expired") if missing and config.refresh_token.configured else None)

    # -- the client and its token ---------------------------------------------------------------

    def _client(self) -> Any:
        """Return the aligo client, building it on first use from the saved (or bootstrap) token.

        Raise NeedsPerson when relayd has no token, or the saved one was refused.
        """
        with self._client_lock:
            if self._ali is not None:
                return self._ali
            with self.tokens.locked():
                record = self._initial_record()
                self._ali = self._build(record)
                self._stamp = self.tokens.stamp()
        self._publish()
        return self._ali

    def _initial_record(self) -> dict[str, Any]:
        """Return the token record to start from: the saved one, unless the config names a refresh
        token relayd has not adopted yet (a person put a new one there)."""
        try:
            configured = self.config.refresh_token.resolve()
        except ConfigError as exc:
            log.warning("drive.refresh_token: %s", exc)
            configured = None
        record = self.tokens.load()
        if configured:
            SCRUBBER.add(configured)
            marker = fingerprint(configured)
            if record is None or record.get("bootstrap_sha256") != marker:
                log.info(
                    "adopting the refresh token from the config (%s)", self.config.refresh_token.describe()
                )
                record = new_record(configured, source="config", previous=record, bootstrap_sha256=marker)
                self.tokens.save(record)
        if record is None:
            raise NeedsPerson(
                "relayd has no Aliyun Drive login", hint=LOGIN_HINT, error_class=ErrorClass.AUTH
            )
        if record.get("refused"):
            raise self._refused_error()
        return record

    def _build(self, record: dict[str, Any]) -> Any:
        """Construct a headless aligo client from *record* (no network call) and hook it."""
        self.tokens.prepare()
        self._aligo_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        aligo = load_aligo(self._aligo_dir)
        self._errors = importlib.import_module("aligo.error")
        seed = dict(record.get("aligo") or {})
        seed.update(
            access_token=record.get("access_token") or "",
            refresh_token=record["refresh_token"],
            x_device_id=record.get("x_device_id") or os.urandom(16).hex(),
        )
        for key in ("default_drive_id", "user_id"):
            if record.get(key) and not seed.get(key):
                seed[key] = record[key]
        with _aligo_lock:
            sys.modules["aligo.core.Auth"].set_config_folder(str(self._aligo_dir))
            seed_path = self._aligo_dir / f"{ALIGO_NAME}.json"
            fd = os.open(seed_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(seed, handle)
            try:
                ali = aligo.Aligo(
                    ALIGO_NAME,
                    show=_refuse_login,
                    level=logging.WARNING,
                    re_login=False,
                    requests_timeout=self.config.timeout,
                    login_timeout=1,
                    request_failed_delay=1.0,
                )
            finally:
                # aligo reads this file only in its constructor; relayd's token.json is the record.
                seed_path.unlink(missing_ok=True)
        auth = ali._auth
        self._aligo_refresh = auth._refresh_token
        auth._refresh_token = self._refresh_on_401
        auth._save = self._save_from_aligo
        auth._log_response = self._on_response
        proxy_session(ali._session, self.config.proxy, self.config.ca_bundle)
        if self.config.api_url.rstrip("/") != DEFAULT_API:
            redirect_session(
                ali._session, self.config.api_url, proxy=self.config.proxy, ca_bundle=self.config.ca_bundle
            )
        self._meta = {
            "source": record.get("source") or "refresh",
            "bootstrap_sha256": record.get("bootstrap_sha256"),
            "x_device_id": seed["x_device_id"],
        }
        self._expires_at = parse_time(record.get("expires_at")) if record.get("access_token") else None
        for secret in (record.get("access_token"), record.get("refresh_token")):
            SCRUBBER.add(secret)
        return ali

    def _on_response(self, response: requests.Response) -> None:
        """aligo's per-response hook: remember the token this thread sent (to tell a stale 401 from
        a new one), and hand 429/5xx to relayd with their Retry-After instead of aligo's sleeps."""
        request = response.request
        self._tls.sent = request.headers.get("Authorization") if request is not None else None
        path = urlsplit(response.url or "").path
        log.debug(
            "drive api %s %s: %d", request.method if request is not None else "?", path, response.status_code
        )
        if response.status_code == 429 or response.status_code >= 500:
            raise _Throttled(
                response.status_code, path, retry_after_seconds(response.headers.get("Retry-After"))
            )

    def _refresh_on_401(self, refresh_token: str | None = None, loop_call: bool = False) -> None:
        """Stand-in for aligo's ``_refresh_token`` on a 401: under the token lock, adopt a pair some
        other worker saved since this thread's request left, else refresh with the saved token."""
        del refresh_token, loop_call  # relayd decides which token to use
        sent = getattr(self._tls, "sent", None)
        with self.tokens.locked():
            if self._adopt_saved(exclude=sent):
                return
            self._refresh_locked()

    def _adopt_saved(self, *, exclude: str | None) -> bool:
        """Adopt the saved pair if it holds a live access token other than *exclude*; return whether
        the client now holds such a token. Call with the token lock held."""
        record = self.tokens.load()
        self._stamp = self.tokens.stamp()
        if record is None or record.get("refused"):
            return False
        access = record.get("access_token") or ""
        expires_at = parse_time(record.get("expires_at"))
        if not access or access == exclude or (expires_at is not None and expires_at <= datetime.now(UTC)):
            return False
        auth = self._ali._auth
        if auth.token.access_token != access:
            auth.token.access_token = access
            auth.token.refresh_token = record["refresh_token"]
            auth.session.headers["Authorization"] = access
            self._expires_at = expires_at
            SCRUBBER.add(access)
            log.debug("adopted the drive token another worker refreshed")
        return True

    def _refresh_locked(self, refresh_token: str | None = None) -> None:
        """Refresh the access token with *refresh_token* (default: the saved one); aligo saves the new
        pair through ``_save_from_aligo``. Call with the token lock held.

        Raise NeedsPerson if the drive refuses the token (and remember that, so nobody hammers the
        service with it), Retryable for network trouble, throttling or server errors.
        """
        saved = self.tokens.load()
        token = refresh_token or (saved or {}).get("refresh_token") or self._ali._auth.token.refresh_token
        if refresh_token is None and saved is not None and saved.get("refused"):
            raise self._refused_error()
        assert self._aligo_refresh is not None  # noqa: S101 - set by _build
        try:
            self._aligo_refresh(refresh_token=token)
        except self._errors.AligoRefreshFailed:
            if refresh_token is None and saved is not None and saved.get("refresh_token") == token:
                saved["refused"] = True
                self.tokens.save(saved)
                self._stamp = self.tokens.stamp()
                self._publish()
            raise self._refused_error() from None
        except _Throttled as exc:
            raise self._throttled_error("refreshing the access token", exc) from None
        except requests.RequestException as exc:
            raise Retryable(
                f"refreshing the drive access token failed: {type(exc).__name__}",
                error_class=ErrorClass.NETWORK,
            ) from None
        except ValueError:
            raise Retryable(
                "the drive answered the token refresh with something not JSON", error_class=ErrorClass.SERVER
            ) from None
        log.info("refreshed the drive access token (valid until %s)", self._expires_at)

    def _save_from_aligo(self) -> None:
        """Stand-in for aligo's ``_save``: persist the new pair atomically (0600) under the lock."""
        token = self._ali._auth.token
        now = datetime.now(UTC)
        expires_at = expiry_from(token.expires_in, now)
        record = {
            "version": 1,
            "source": self._meta.get("source") or "refresh",
            "refresh_token": token.refresh_token,
            "access_token": token.access_token,
            "expires_at": expires_at.isoformat(),
            "refreshed_at": now.isoformat(),
            "x_device_id": token.x_device_id or self._meta.get("x_device_id"),
            "bootstrap_sha256": self._meta.get("bootstrap_sha256"),
            "default_drive_id": token.default_drive_id,
            "user_id": token.user_id,
            "refused": False,
            "aligo": {key: value for key, value in token.to_dict().items() if value is not None},
        }
        for secret in (token.access_token, token.refresh_token):
            SCRUBBER.add(secret)
        with self.tokens.locked():
            self.tokens.save(record)
            self._stamp = self.tokens.stamp()
        self._expires_at = expires_at
        self._publish()

    def _ensure_token(self) -> Any:
        """Return the client with an access token that is not about to expire: adopt a newer saved
        pair (another process, `relayctl drive login`), or refresh ahead of expiry."""
        ali = self._client()
        now = datetime.now(UTC)
        fresh = self._expires_at is not None and (self._expires_at - now).total_seconds() > REFRESH_MARGIN
        if fresh and self.tokens.stamp() == self._stamp:
            return ali
        with self.tokens.locked():
            record = self.tokens.load()
            if record is None:
                raise NeedsPerson(
                    "relayd's Aliyun Drive login was removed", hint=LOGIN_HINT, error_class=ErrorClass.AUTH
                )
            if record.get("refused"):
                raise self._refused_error()
            self._adopt_saved(exclude=None)
            remaining = (self._expires_at - now).total_seconds() if self._expires_at else None
            if remaining is None or remaining <= REFRESH_MARGIN:
                self._refresh_locked()
        return ali

    def _refused_error(self) -> NeedsPerson:
        return NeedsPerson(
            "Aliyun Drive refused relayd's refresh token (expired, revoked, or used elsewhere)",
            hint=LOGIN_HINT,
            error_class=ErrorClass.AUTH,
        )

    def _publish(self, lifetime: TokenLifetime | None = None) -> None:
        """Publish the login's state as ``drive.token``. It is read from the token file under one lock
        at publish time (*lifetime* only before any file exists), so a slow publish from one thread
        can never overwrite a newer state another thread published."""
        if self._publish_fact is None:
            return
        with self._publish_lock:
            fact = (lifetime or self.tokens.lifetime()).as_fact()
            try:
                self._publish_fact("drive.token", fact)
            except Exception:
                log.warning("could not publish the drive token's lifetime", exc_info=True)

    def login(self, refresh_token: str, *, bootstrap_sha256: str | None = None) -> TokenLifetime:
        """Exchange *refresh_token* for a token pair now and save it (nothing is saved if the drive
        refuses it). Raise NeedsPerson if refused, Retryable for network trouble."""
        token = refresh_token.strip()
        if not token or any(c.isspace() for c in token):
            raise Permanent("a refresh token is one word without spaces", hint="check the token file")
        SCRUBBER.add(token)
        with self._client_lock, self.tokens.locked():
            previous = self.tokens.load()
            record = new_record(
                token,
                source="login",
                previous=previous,
                bootstrap_sha256=bootstrap_sha256 or (previous or {}).get("bootstrap_sha256"),
            )
            self._ali = self._build(record)
            try:
                self._refresh_locked(refresh_token=token)
            except HopError:
                self._ali = None
                raise
        return self.tokens.lifetime()

    def token_lifetime(self) -> TokenLifetime:
        return self.tokens.lifetime()

    # -- calling aligo ----------------------------------------------------------------------------

    def _call(self, what: str, method: str, *args: Any, accept: tuple[str, ...] = (), **kwargs: Any) -> Any:
        """Call ``ali.<method>`` and map every outcome onto relayd's errors.

        A falsy ``Null`` whose code is in *accept* is returned for the caller to inspect.
        """
        ali = self._ensure_token()
        try:
            result = getattr(ali, method)(*args, **kwargs)
        except HopError:
            raise
        except _Throttled as exc:
            raise self._throttled_error(what, exc) from None
        except _InteractiveLoginRefused:
            raise self._refused_error() from None
        except requests.Timeout:
            raise Retryable(
                f"{what}: the drive did not answer in time", error_class=ErrorClass.TIMEOUT
            ) from None
        except requests.RequestException as exc:
            raise Retryable(
                f"{what}: {type(exc).__name__} talking to the drive", error_class=ErrorClass.NETWORK
            ) from None
        except Exception as exc:  # noqa: BLE001 - every aligo failure is mapped to relayd's errors
            raise self._client_error(what, exc) from None
        if result is None:
            raise Retryable(f"{what}: the drive client returned nothing", error_class=ErrorClass.CLIENT)
        if isinstance(result, self._errors_null()):
            code = str(getattr(result, "code", "") or "")
            if code in accept:
                return result
            response = getattr(result, "response", None)
            status = response.status_code if response is not None else 0
            raise self._failure(what, status, code, str(getattr(result, "message", "") or ""))
        return result

    def _errors_null(self) -> type:
        null: type = importlib.import_module("aligo.types").Null
        return null

    def _client_error(self, what: str, exc: Exception) -> HopError:
        """Map aligo's own exceptions (and the AttributeError/TypeError its failures turn into)."""
        errors = self._errors
        if errors is not None and isinstance(exc, errors.AligoRefreshFailed):
            return self._refused_error()
        if errors is not None and isinstance(exc, errors.AligoStatus500):
            return Retryable(f"{what}: the drive answered 500", error_class=ErrorClass.SERVER)
        if errors is not None and isinstance(exc, errors.AligoFatalError):
            # aligo gives up after 5 attempts and raises with the last answer's body: a device refusal
            # that outlived its create_session retries does not heal by waiting.
            return self._device_refusal(what, str(exc)) or Retryable(
                f"{what}: the drive kept failing the request", error_class=ErrorClass.SERVER
            )
        if isinstance(exc, AttributeError | TypeError):
            # aligo reports an exhausted connection retry, or an answer it could not parse, this way.
            return Retryable(
                f"{what}: the drive client failed ({type(exc).__name__})", error_class=ErrorClass.CLIENT
            )
        if isinstance(exc, ValueError):
            return Retryable(f"{what}: the drive's answer was not valid JSON", error_class=ErrorClass.SERVER)
        return Retryable(
            f"{what}: unexpected {type(exc).__name__} from the drive client", error_class=ErrorClass.CLIENT
        )

    @staticmethod
    def _throttled_error(what: str, exc: _Throttled) -> Retryable:
        kind = ErrorClass.RATE_LIMIT if exc.status == 429 else ErrorClass.SERVER
        return Retryable(
            f"{what}: the drive answered {exc.status}", error_class=kind, retry_after=exc.retry_after
        )

    @staticmethod
    def _device_refusal(what: str, answer: str) -> NeedsPerson | None:
        """Return the NeedsPerson for an answer refusing relayd's device session, else None."""
        if "UserDeviceOffline" in answer:
            return NeedsPerson(
                f"{what}: the drive says relayd's device is offline (UserDeviceOffline) even after "
                "registering it again: the account has too many devices logged in",
                hint=DEVICES_HINT,
                error_class=ErrorClass.DEVICE,
            )
        if "DeviceSessionSignatureInvalid" in answer:
            return NeedsPerson(
                f"{what}: the drive refuses relayd's device signature (DeviceSessionSignatureInvalid) "
                "even after registering the device again",
                hint=SIGNATURE_HINT,
                error_class=ErrorClass.DEVICE,
            )
        return None

    def _failure(self, what: str, status: int, code: str, message: str) -> HopError:
        detail = f"{status} {code}".strip() + (f": {message[:120]}" if message else "")
        if status == 404 and code in ("", "NotFound"):
            # Not a missing file or upload (those are NotFound.File, NotFound.UploadId, …): the path
            # itself is unknown, and asking again cannot help.
            return NeedsPerson(
                f"{what}: the drive does not know this API ({detail})",
                hint=API_CHANGED_HINT,
                error_class=ErrorClass.API_CHANGED,
            )
        if status == 401:
            return NeedsPerson(
                f"{what}: the drive refused relayd's access token ({detail})",
                hint=LOGIN_HINT,
                error_class=ErrorClass.AUTH,
            )
        if status == 403:
            return NeedsPerson(
                f"{what}: the drive forbids this ({detail})",
                hint="check the account in the Aliyun Drive app, then `relayctl retry`",
                error_class=ErrorClass.FORBIDDEN,
            )
        if code.startswith("QuotaExhausted") or "Quota" in code:
            return NeedsPerson(
                f"{what}: the drive is full ({detail})",
                hint="free space on the drive (or add capacity), then `relayctl retry`",
                error_class=ErrorClass.QUOTA,
            )
        if status in (404, 409) or 200 <= status < 300 or status == 0:
            return Retryable(
                f"{what}: unexpected answer from the drive ({detail})", error_class=ErrorClass.DRIVE
            )
        return Permanent(
            f"{what}: the drive refused the request ({detail})",
            hint="this looks like a relayd bug or an API change; report it",
        )

    def _post(
        self, what: str, path: str, body: dict[str, Any], *, accept: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """POST *body* to an API *path* through aligo and return the JSON answer of a 200.

        Raise the mapped error otherwise; a code in *accept* comes back as ``{"code": ...}``.
        """
        response: requests.Response = self._call(what, "post", path, body=body)
        try:
            data = response.json() if response.content else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if response.status_code == 200 and "code" not in data:
            return data
        code = str(data.get("code") or "")
        if code and code in accept:
            return {"code": code}
        raise self._failure(what, response.status_code, code, str(data.get("message") or ""))

    def drive_id(self) -> str:
        """Return the id of the configured drive ("resource" or "backup"), looked up once."""
        if self._drive_id is not None:
            return self._drive_id
        ali = self._ensure_token()
        drive_id = ""
        if self.config.drive == "resource":
            user = self._call("looking up the resource drive", "v2_user_get")
            if not getattr(user, "user_id", None):
                raise Retryable(
                    "the drive answered the user lookup without a user", error_class=ErrorClass.DRIVE
                )
            drive_id = str(getattr(user, "resource_drive_id", "") or "")
            if not drive_id:
                log.warning("this account has no resource drive; using its default (backup) drive")
        if not drive_id:
            drive_id = str(ali.default_drive_id or "")
        if not drive_id:
            raise Retryable("the drive did not say which drive id to use", error_class=ErrorClass.DRIVE)
        self._drive_id = drive_id
        return drive_id

    @staticmethod
    def _file(found: Any) -> DriveFile:
        """Return a DriveFile from aligo's BaseFile; raise Retryable for an answer without a file id
        (aligo turns a non-JSON 2xx, such as a gateway page, into an empty object)."""
        if not getattr(found, "file_id", None):
            raise Retryable("the drive answered without a file id", error_class=ErrorClass.DRIVE)
        content = getattr(found, "content_hash", None)
        return DriveFile(
            file_id=str(found.file_id),
            name=str(found.name or ""),
            size=int(getattr(found, "size", 0) or 0),
            content_hash=str(content).upper() if content else None,
            drive_id=str(getattr(found, "drive_id", "") or ""),
            parent_id=str(getattr(found, "parent_file_id", "") or ""),
        )

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
        seen: set[str] = set()
        while True:
            page = self._post("listing a folder", "/adrive/v3/file/list", body, accept=("NotFound.File",))
            if page.get("code"):
                return
            yield from page.get("items") or []
            marker = page.get("next_marker")
            if not marker or not isinstance(marker, str) or marker in seen:
                return
            seen.add(marker)
            body["marker"] = marker

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

    # -- upload -----------------------------------------------------------------------------------

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

    def _create(self, name: str, parent_id: str, local: LocalFile, count: int, **extra: Any) -> Any:
        from aligo.request import CreateFileRequest
        from aligo.types import UploadPartInfo

        return self._call(
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
        created: Any = None
        if local.size > PRE_HASH_BYTES:
            created = self._create(name, parent_id, local, count, pre_hash=pre_hash(local.path))
            self._check_created(created, name, allow=("PreHashMatched",))
        if created is None or getattr(created, "code", None) == "PreHashMatched":
            created = self._create_with_proof(name, parent_id, local, count)
        if created.rapid_upload:
            log.info("%s: rapid upload: the drive already holds this content", name)
            return UploadResult(self.verify(str(created.file_id), local.size, local.sha1), rapid=True)
        if not created.upload_id or not created.file_id:
            raise Retryable(f"creating {name}: the drive gave no upload id", error_class=ErrorClass.DRIVE)
        state = {
            "upload_id": str(created.upload_id),
            "file_id": str(created.file_id),
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
        urls = {int(p.part_number): str(p.upload_url) for p in created.part_info_list or [] if p.upload_url}
        return self._send_parts(local, state, 1, urls, callbacks=callbacks, cancel=cancel)

    def _check_created(self, created: Any, name: str, *, allow: tuple[str, ...] = ()) -> None:
        """Raise for a create answer relayd cannot continue from (name taken, folder gone, refused)."""
        if not created:
            code = str(getattr(created, "code", "") or "")
            if code in allow:
                return
            if code == "NotFound.File":
                self.forget_folders()
                raise Retryable(
                    f"the destination folder of {name} vanished from the drive", error_class=ErrorClass.DRIVE
                )
            response = getattr(created, "response", None)
            status = response.status_code if response is not None else 400
            raise self._failure(f"creating {name}", status, code, str(getattr(created, "message", "") or ""))
        if getattr(created, "exist", False):
            existing = self.get(str(created.file_id)) if created.file_id else None
            raise NameTaken(f"{name} already exists in the destination folder", existing)

    def _create_with_proof(self, name: str, parent_id: str, local: LocalFile, count: int) -> Any:
        """Offer the content hash with a proof; recompute the proof once if refused (the token may
        have been refreshed meanwhile); then fall back to a plain upload."""
        for _attempt in range(2):
            token = self._ensure_token()._auth.token.access_token or ""
            created = self._create(
                name,
                parent_id,
                local,
                count,
                content_hash=local.sha1.upper(),
                content_hash_name="sha1",
                proof_code=proof_code(token, local.path, local.size),
                proof_version="v1",
            )
            if created or getattr(created, "code", None) not in PROOF_REFUSED:
                self._check_created(created, name)
                return created
            log.info("%s: the drive refused the rapid-upload proof; computing it again", name)
        log.warning("%s: rapid upload refused twice; uploading the bytes instead", name)
        created = self._create(name, parent_id, local, count)
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
        body: dict[str, Any] = {
            "drive_id": state["drive_id"],
            "file_id": state["file_id"],
            "upload_id": state["upload_id"],
            "part_number_marker": 0,
        }
        numbers: list[tuple[int, int]] = []
        seen: set[str] = set()
        while True:
            page = self._post(
                "listing uploaded parts", "/v2/file/list_uploaded_parts", body, accept=("NotFound.UploadId",)
            )
            if page.get("code"):
                self._raise_gone_unless_done(local, state)
            for part in page.get("uploaded_parts") or []:
                numbers.append((int(part.get("part_number") or 0), int(part.get("part_size") or 0)))
            marker = page.get("next_part_number_marker")
            if not marker or str(marker) in seen:
                break
            seen.add(str(marker))
            body["part_number_marker"] = int(marker)
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
        from aligo.request import GetUploadUrlRequest
        from aligo.types import UploadPartInfo

        numbers = list(range(first, min(int(state["parts"]), first + URL_BATCH - 1) + 1))
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
            raise UploadGone("the drive no longer knows the upload id (it expired)")
        infos = list(answer.part_info_list or [])
        if len(infos) != len(numbers):
            raise Retryable("the drive returned the wrong number of part URLs", error_class=ErrorClass.DRIVE)
        # URLs come back by position, in request order (reference §4).
        return {number: str(info.upload_url) for number, info in zip(numbers, infos, strict=True)}

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
            log.debug("PUT %s: %s", _path_of(url), type(exc).__name__)
            return _PutOutcome.BROKEN, 0, None
        if 200 <= status < 300:
            return _PutOutcome.OK, status, None
        code = _xml_code(text)
        log.debug("PUT %s: %d %s", _path_of(url), status, code)
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
        from aligo.request import CompleteFileRequest

        name = str(state["name"])
        done = self._call(
            f"completing {name}",
            "complete_file",
            CompleteFileRequest(
                drive_id=state["drive_id"], file_id=state["file_id"], upload_id=state["upload_id"]
            ),
            accept=("NotFound.UploadId", "AlreadyExist.File", "InvalidParameter.Size"),
        )
        if not done:
            if done.code == "NotFound.UploadId":
                self._raise_gone_unless_done(local, state)
            if done.code == "AlreadyExist.File":
                raise NameTaken(
                    f"{name} appeared in the destination folder during the upload",
                    self.find(str(state["parent_id"]), name),
                )
            raise Retryable(
                f"completing {name}: the drive counts missing parts", error_class=ErrorClass.DRIVE
            )
        file = self._file(done)
        if not file.matches(local.size, local.sha1):
            raise ContentMismatch(
                f"the drive computed content hash {file.content_hash} over {file.size} bytes for {name}, "
                f"expected {local.sha1.upper()} over {local.size}",
                file,
            )
        log.info("%s: uploaded and verified (%d bytes)", name, file.size)
        return UploadResult(file, rapid=False)

    def close(self) -> None:
        self._data.close()
        ali = self._ali
        if ali is not None:
            ali._session.close()


class _Completed(Exception):
    """The upload turned out to be complete already (its answer was lost); carries the file."""

    def __init__(self, file: DriveFile) -> None:
        super().__init__(file.file_id)
        self.file = file
