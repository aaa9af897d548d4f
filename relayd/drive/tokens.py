"""relayd's own copy of the drive login: the rotating refresh token and the current access token.

The drive rotates the refresh token on every refresh (the old one dies at once), so the pair is saved
after every refresh, atomically (temp file, fsync, rename, fsync of the directory), mode 0600, in a
0700 directory under ``daemon.state_dir``. One lock per token file, a threading lock plus an
exclusive ``flock`` on a lock file next to it, serialises refreshes across the threads of a process
and across processes (the daemon, `relayctl drive login`), so nobody refreshes with a token another
refresh already spent.

The configured ``drive.refresh_token*`` only bootstraps: it is used when relayd has no saved token,
or when it differs from the one relayd last adopted (a person put a new one in the config). Its
SHA-256 is remembered, never the token itself outside the 0600 file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from relayd.drive.base import TokenLifetime
from relayd.errors import ErrorClass, Retryable

log = logging.getLogger(__name__)

TOKEN_FILE = "token.json"  # noqa: S105 - a file name, not a secret
LOCK_FILE = "token.lock"
LOCK_WAIT = 120.0

_path_locks: dict[Path, _PathLock] = {}
_path_locks_guard = threading.Lock()


def fingerprint(secret: str) -> str:
    """Return the SHA-256 hex of *secret*: enough to recognise it again, useless to use it."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_time(value: Any) -> datetime | None:
    """Return an aware datetime from an ISO string (a trailing Z allowed), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class _PathLock:
    """A re-entrant lock for one token file: a thread lock, plus ``flock`` held at the outermost level."""

    def __init__(self, lock_path: Path) -> None:
        self.lock_path = lock_path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @contextlib.contextmanager
    def hold(self, wait: float) -> Iterator[None]:
        if not self._thread_lock.acquire(timeout=wait):
            raise Retryable(
                "another worker has been refreshing the drive token for too long", error_class=ErrorClass.AUTH
            )
        try:
            if self._depth == 0:
                self._fd = self._lock_file(wait)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    os.close(self._fd)
                    self._fd = None
        finally:
            self._thread_lock.release()

    def _lock_file(self, wait: float) -> int:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    os.close(fd)
                    raise Retryable(
                        f"another process holds the drive token lock {self.lock_path}",
                        error_class=ErrorClass.AUTH,
                    ) from None
                time.sleep(0.05)


def _lock_for(lock_path: Path) -> _PathLock:
    key = lock_path.resolve()
    with _path_locks_guard:
        lock = _path_locks.get(key)
        if lock is None:
            lock = _path_locks[key] = _PathLock(key)
        return lock


class TokenStore:
    """The saved drive login under *directory* (``<state_dir>/drive``): ``token.json`` and its lock.

    The record holds ``refresh_token``, ``access_token``, ``expires_at`` and ``refreshed_at`` (ISO),
    ``x_device_id``, the drive ids, ``bootstrap_sha256`` (the configured token last adopted),
    ``refused`` (the service refused this refresh token) and ``aligo`` (the client's token fields).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / TOKEN_FILE
        self.lock_path = directory / LOCK_FILE
        self._lock: _PathLock | None = None

    def prepare(self) -> None:
        """Create the directory with mode 0700 (tightening an existing one)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = stat.S_IMODE(self.directory.stat().st_mode)
        if mode & 0o077:
            os.chmod(self.directory, 0o700)

    @contextlib.contextmanager
    def locked(self, wait: float = LOCK_WAIT) -> Iterator[None]:
        """Hold the token lock (re-entrant in one thread) for a read-refresh-save sequence."""
        if self._lock is None:
            self.prepare()
            self._lock = _lock_for(self.lock_path)
        with self._lock.hold(wait):
            yield

    def load(self) -> dict[str, Any] | None:
        """Return the saved record, or None when there is none or it cannot be read (logged, never
        its content)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the drive token file %s: %s", self.path, exc.strerror)
            return None
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            log.warning("the drive token file %s is not valid JSON; ignoring it", self.path)
            return None
        if not isinstance(data, dict) or not isinstance(data.get("refresh_token"), str):
            log.warning("the drive token file %s holds no refresh token; ignoring it", self.path)
            return None
        return data

    def save(self, record: dict[str, Any]) -> None:
        """Write *record* atomically with mode 0600: temp file, fsync, rename, fsync the directory."""
        self.prepare()
        temp = self.directory / f".{TOKEN_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
        payload = json.dumps(record, indent=1, sort_keys=True).encode()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(temp, self.path)
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def mode(self) -> int | None:
        """Return the token file's permission bits, or None if there is no file."""
        try:
            return stat.S_IMODE(self.path.stat().st_mode)
        except FileNotFoundError:
            return None

    def stamp(self) -> tuple[int, int] | None:
        """Return (inode, mtime_ns) of the token file, to notice a replacement cheaply."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_mtime_ns

    def lifetime(self, record: dict[str, Any] | None = None) -> TokenLifetime:
        """Return the login's state from *record* (default: the saved one), without network calls."""
        data = record if record is not None else self.load()
        if data is None:
            return TokenLifetime("missing")
        expires_at = parse_time(data.get("expires_at"))
        refreshed_at = parse_time(data.get("refreshed_at"))
        if data.get("refused"):
            state = "refused"
        elif expires_at is None or expires_at <= datetime.now(UTC):
            state = "expired"
        else:
            state = "valid"
        return TokenLifetime(state, expires_at, refreshed_at, parse_time(data.get("refresh_expires_at")))


def new_record(
    refresh_token: str,
    *,
    source: str,
    previous: dict[str, Any] | None = None,
    bootstrap_sha256: str | None = None,
) -> dict[str, Any]:
    """Return a record that holds only a refresh token (no access token yet), keeping the device id
    and the bootstrap fingerprint of *previous*."""
    previous = previous or {}
    return {
        "version": 1,
        "source": source,
        "refresh_token": refresh_token,
        "access_token": "",
        "expires_at": None,
        "refreshed_at": None,
        "x_device_id": previous.get("x_device_id") or os.urandom(16).hex(),
        "bootstrap_sha256": bootstrap_sha256 or previous.get("bootstrap_sha256"),
        "refused": False,
        "saved_at": datetime.now(UTC).isoformat(),
    }


def expiry_from(expires_in: Any, now: datetime) -> datetime:
    """Return when an access token issued at *now* with *expires_in* seconds expires (2 h if unknown)."""
    try:
        seconds = float(expires_in)
    except (TypeError, ValueError):
        seconds = 7200.0
    return now + timedelta(seconds=max(0.0, seconds))
