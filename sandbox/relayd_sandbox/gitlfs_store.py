"""LFS object storage and pre-signed action tokens for the sandbox git + LFS server.

Objects live at ``<lfs_root>/<owner>/<name>/<oid>``: one flat directory per repository, so tests can
assert on the bytes with a plain path. Uploads stream into a hidden temporary file in that same
directory, are checked for size and sha256, fsynced, and only then renamed into place, so a reader
never sees a partial or wrong object (giftless's local storage does neither, see the reference §9).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

OID_RE = re.compile(r"[0-9a-f]{64}")
INCOMING_PREFIX = ".incoming-"


class ObjectRejected(Exception):
    """An upload whose bytes do not match the oid or size it was announced with."""


def lfs_pointer(oid: str, size: int) -> bytes:
    """Given an object's sha256 *oid* and *size*, return its Git LFS pointer file, byte for byte."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


class ObjectStore:
    """Content-addressed LFS objects, one directory per repository, written verified and atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def repo_dir(self, owner: str, name: str) -> Path:
        """Return the directory that holds *owner*/*name*'s objects (it may not exist yet)."""
        return self.root / owner / name

    def path(self, owner: str, name: str, oid: str) -> Path:
        """Return where object *oid* of *owner*/*name* lives or would live."""
        return self.repo_dir(owner, name) / oid

    def size(self, owner: str, name: str, oid: str) -> int | None:
        """Return the stored size of *oid*, or None when it is not stored."""
        try:
            return self.path(owner, name, oid).stat().st_size
        except FileNotFoundError:
            return None

    def objects(self, owner: str, name: str) -> dict[str, Path]:
        """Return every stored object of *owner*/*name* as {oid: path}; uploads in progress are left out."""
        folder = self.repo_dir(owner, name)
        if not folder.is_dir():
            return {}
        return {entry.name: entry for entry in sorted(folder.iterdir()) if OID_RE.fullmatch(entry.name)}

    def incoming(self, owner: str, name: str) -> list[Path]:
        """Return the temporary files of uploads still in progress (or leaked, which would be a bug)."""
        folder = self.repo_dir(owner, name)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.name.startswith(INCOMING_PREFIX))

    def receive(self, owner: str, name: str, oid: str, size: int, chunks: Iterable[bytes]) -> None:
        """Store the bytes yielded by *chunks* as object *oid* of *owner*/*name*.

        Raise ObjectRejected, storing nothing, when the byte count differs from *size* or the sha256
        differs from *oid*. Any exception from *chunks* (a client that went away) also stores nothing.
        """
        folder = self.repo_dir(owner, name)
        folder.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f"{INCOMING_PREFIX}{oid[:16]}-", dir=folder)
        temp = Path(temp_name)
        try:
            digest = hashlib.sha256()
            received = 0
            with os.fdopen(fd, "wb") as out:
                for data in chunks:
                    received += len(data)
                    if received > size:
                        raise ObjectRejected(f"received more than the announced {size} bytes")
                    digest.update(data)
                    out.write(data)
                if received != size:
                    raise ObjectRejected(f"received {received} bytes, expected {size}")
                if digest.hexdigest() != oid:
                    raise ObjectRejected(f"sha256 of the received bytes is {digest.hexdigest()}, not {oid}")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, folder / oid)
            _fsync_dir(folder)
        finally:
            temp.unlink(missing_ok=True)

    def put_bytes(self, owner: str, name: str, data: bytes) -> str:
        """Store *data* directly (as if it had been uploaded) and return its oid."""
        oid = hashlib.sha256(data).hexdigest()
        self.receive(owner, name, oid, len(data), [data])
        return oid


def _fsync_dir(folder: Path) -> None:
    """Make a rename in *folder* durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on a directory
            os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Grant:
    """What a valid action token allows: one operation on one object of one repository."""

    operation: str
    owner: str
    name: str
    oid: str
    size: int


class TokenError(Exception):
    """An action token that is malformed, forged, for something else, or expired."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


class ActionSigner:
    """Issue and check the short-lived tokens that the batch API puts in each action's header.

    The token binds operation, repository, oid, size and expiry with an HMAC under a per-process
    random key, so upload hrefs never carry the user's own token (which would leak to storage hosts
    on a real server) and cannot be replayed for another object.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._key = secrets.token_bytes(32)
        self._clock = clock

    def _mac(self, grant: Grant, expires: int) -> str:
        message = "\n".join(
            [grant.operation, grant.owner, grant.name, grant.oid, str(grant.size), str(expires)]
        )
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def issue(self, grant: Grant, lifetime: float) -> tuple[str, float]:
        """Return a token for *grant* that expires *lifetime* seconds from now (to the millisecond, so
        an ``expires_in`` or ``expires_at`` rounded down never promises more), and that moment."""
        expires = int((self._clock() + lifetime) * 1000)
        return f"{grant.size}.{expires}.{self._mac(grant, expires)}", expires / 1000

    def check(self, token: str, operation: str, owner: str, name: str, oid: str) -> Grant:
        """Return the Grant that *token* carries for this request. Raise TokenError if it has none."""
        parts = token.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            raise TokenError("malformed action token")
        grant = Grant(operation, owner, name, oid, int(parts[0]))
        expires = int(parts[1])
        if not hmac.compare_digest(parts[2], self._mac(grant, expires)):
            raise TokenError("action token is not valid for this object and operation")
        if self._clock() * 1000 > expires:
            raise TokenError("action token expired", expired=True)
        return grant
