"""The aligo backend's session: aligo imported and constructed headless, relayd's login (the rotating
refresh token, saved atomically under the token lock) and every call through aligo mapped onto
relayd's errors. ``AligoDrive`` (``relayd.drive.aligo_backend``) adds the folders, the links and the
upload hooks on top.

Headless: aligo is imported with a private home folder and ``TQDM_DISABLE=1``; its ``config.json5`` lookup
points at a private folder that holds none; the QR login is replaced by an error; ``re_login`` is off;
every request has a timeout; ``coloredlogs`` is kept from rewiring logging, so aligo's records reach
relayd's handlers (and its secret scrubber) through the ``aligo`` logger. aligo's refresh, save and
response hooks are replaced on the instance so that every refresh runs under the token lock and is
saved atomically (``relayd.drive.tokens``), and so that 429 and 5xx answers reach relayd with their
Retry-After instead of aligo's fixed sleeps.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import threading
import types
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from relayd.config import DriveConfig
from relayd.drive._redirect import proxy_session, redirect_session
from relayd.drive.answers import failure, throttled
from relayd.drive.base import LOGIN_HINT, DriveFile, TokenLifetime
from relayd.drive.hashing import PART_SIZE
from relayd.drive.multipart import retry_after_seconds
from relayd.drive.tokens import TokenStore, expiry_from, fingerprint, new_record, parse_time
from relayd.errors import ConfigError, ErrorClass, HopError, NeedsPerson, Permanent, Retryable
from relayd.logs import SCRUBBER

log = logging.getLogger(__name__)

DEFAULT_API = "https://api.aliyundrive.com"
#: aligo's instance name: its logger ("aligo", quietened by relayd's logging setup) and token file.
ALIGO_NAME = "aligo"
#: Refresh ahead of expiry when the access token has less than this left.
REFRESH_MARGIN = 300.0
DEVICES_HINT = (
    "one Aliyun Drive account may be logged in on at most 10 devices: log one out in the Aliyun Drive "
    "app (settings, devices), then `relayctl retry`; if it was relayd's own, log relayd in again with "
    "`relayctl drive login --refresh-token-file PATH`"
)
SIGNATURE_HINT = (
    "log relayd in again (`relayctl drive login --refresh-token-file PATH`), then `relayctl retry`; if "
    "the drive still refuses, it changed how devices sign requests and relayd (aligo) needs an update"
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


def load_aligo(private_dir: Path) -> types.ModuleType:
    """Import aligo headless and return it: a private home folder for the import, TQDM_DISABLE=1, its
    ``config.json5`` lookup moved to *private_dir*, and coloredlogs kept off relayd's handlers."""
    with _aligo_lock:
        os.environ["TQDM_DISABLE"] = "1"
        home = private_dir / "home"
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        if "aligo" not in sys.modules:
            # aligo creates ~/.aligo and binds its config folder from Path.home() at import time. Only
            # that answer changes, for the import: HOME itself stays, since other threads may be
            # starting git or ssh meanwhile (a drive is built when a route first needs it).
            real_home = vars(Path)["home"]
            Path.home = classmethod(lambda cls: cls(home))  # type: ignore[assignment,method-assign]
            try:
                importlib.import_module("aligo")
            finally:
                Path.home = real_home  # type: ignore[method-assign]
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


class AligoSession:
    """aligo's client and relayd's login for it; thread-safe. *part_size* overrides the preferred
    part size (tests use small parts; the drive's own rules still apply to large files). *publish*
    receives ``("drive.token", fact)`` after each refresh.
    """

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
        # Import aligo now, not at the first drive call: the import takes a moment and a lock.
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
            raise failure(what, status, code, str(getattr(result, "message", "") or ""))
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
        return throttled(what, exc.status, exc.retry_after)

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
        raise failure(what, response.status_code, code, str(data.get("message") or ""))

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
