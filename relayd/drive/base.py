"""What relayd needs from a cloud drive, independent of the service and the client library behind it.

A hop talks to a ``Drive`` only: make sure a folder exists, find a file, upload with resumable state,
verify a copy by size and content hash, hand out a download link, and tell how long the access token
has left. ``relayd.drive.aligo_backend.AligoDrive`` implements it for Aliyun Drive's web API and
``relayd.drive.open_backend.OpenDrive`` for its Open Platform; another backend (an in-house client, a
test double) implements the same methods and the hops do not change.

Errors are relayd's own (``relayd.errors``): ``Retryable`` with ``retry_after`` for throttling, server
errors and dropped connections, ``NeedsPerson`` with a hint for a missing or refused token or a full
drive, ``Permanent`` for requests the service will never accept. Three ``Retryable`` subclasses carry
facts a hop acts on: ``NameTaken``, ``ContentMismatch`` and ``UploadGone``.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from relayd.errors import ErrorClass, Retryable, UsageError

LOGIN_HINT = (
    "give relayd a new refresh token: `relayctl drive login --refresh-token-file PATH`, then `relayctl retry`"
)


@dataclass(frozen=True)
class DriveFile:
    """A file on the drive as the service reports it; ``content_hash`` is the uppercase SHA-1."""

    file_id: str
    name: str
    size: int
    content_hash: str | None
    drive_id: str = ""
    parent_id: str = ""

    def matches(self, size: int, sha1: str) -> bool:
        """Return True if the drive's size and content hash are those of the local content."""
        return (
            self.size == size and self.content_hash is not None and self.content_hash.upper() == sha1.upper()
        )


@dataclass(frozen=True)
class DownloadLink:
    """A signed, expiring URL for a file's bytes. Send ``headers`` (the Referer) with every GET, no
    Authorization; check ``size`` and ``content_hash`` (uppercase SHA-1) on what arrives. When the
    data host refuses ``headers`` (a 403 that is neither the expiry nor the download cap), try each
    of ``alternatives`` (another Referer the drive is known to want) on the same URL."""

    url: str
    headers: dict[str, str]
    expires_at: datetime
    size: int
    content_hash: str
    alternatives: tuple[dict[str, str], ...] = ()

    def __repr__(self) -> str:
        # The URL is a capability: keep it out of reprs, logs and error messages.
        return f"DownloadLink(size={self.size}, expires_at={self.expires_at.isoformat()})"


@dataclass(frozen=True)
class TokenLifetime:
    """What relayd knows about the drive login: whether it has a token and until when it is valid.

    ``state`` is ``valid``, ``expired`` (a refresh is due, done on the next call), ``missing`` (no
    token at all) or ``refused`` (the service refused the refresh token: a person must log in again).
    """

    state: str
    expires_at: datetime | None = None
    refreshed_at: datetime | None = None
    #: When the refresh token itself dies (the Open Platform's last 90 days), None when unknown.
    refresh_expires_at: datetime | None = None

    def remaining(self, now: datetime | None = None) -> float | None:
        """Return the access token's remaining seconds (negative once expired), None when unknown."""
        if self.expires_at is None:
            return None
        return (self.expires_at - (now or datetime.now(UTC))).total_seconds()

    def as_fact(self) -> dict[str, Any]:
        """Return the fact relayd publishes as ``drive.token`` for `relayctl status` (no secrets)."""
        fact: dict[str, Any] = {
            "state": self.state,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "refreshed_at": self.refreshed_at.isoformat() if self.refreshed_at else None,
        }
        if self.refresh_expires_at is not None:
            fact["refresh_expires_at"] = self.refresh_expires_at.isoformat()
        return fact


@dataclass(frozen=True)
class LocalFile:
    """The local bytes to upload: a path, its size and its SHA-1 (hex, either case)."""

    path: Path
    size: int
    sha1: str


@dataclass(frozen=True)
class UploadResult:
    """A finished upload: the file as the drive reports it, and whether rapid upload moved no bytes."""

    file: DriveFile
    rapid: bool


def _ignore(*_args: Any) -> None:
    return None


@dataclass
class UploadCallbacks:
    """How an upload reports to its caller. Part numbers start at 1.

    ``state`` receives the resumable state whenever it changes; the caller must persist it before
    returning (it is called before the first byte is sent). ``plan`` gives the part size and count the
    drive will use; ``confirmed(k)`` says the drive holds exactly parts 1..k (on resume, after a lost
    answer); ``part_started`` comes before a part is sent, ``part_done`` once the drive acknowledged
    it; ``restarted`` says the drive forgot the upload and every part counts as missing again;
    ``progress`` counts payload bytes sent.
    """

    state: Callable[[dict[str, Any]], None] = _ignore
    plan: Callable[[int, int], None] = _ignore
    confirmed: Callable[[int], None] = _ignore
    part_started: Callable[[int], None] = _ignore
    part_done: Callable[[int], None] = _ignore
    restarted: Callable[[], None] = _ignore
    progress: Callable[[int], None] = _ignore


class NameTaken(Retryable):
    """Another file already has the destination name (*existing*, when the drive said which)."""

    def __init__(self, message: str, existing: DriveFile | None = None) -> None:
        super().__init__(message, error_class=ErrorClass.CONFLICT)
        self.existing = existing


class ContentMismatch(Retryable):
    """The drive reports a size or content hash that is not the local content's."""

    def __init__(self, message: str, file: DriveFile) -> None:
        super().__init__(message, error_class=ErrorClass.INTEGRITY)
        self.file = file


class UploadGone(Retryable):
    """The drive no longer knows the upload (expired upload id); it must start again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_class=ErrorClass.UPLOAD_EXPIRED)


class Drive(abc.ABC):
    """A cloud drive as relayd uses it. Implementations are thread-safe: several workers share one.

    Paths are absolute, '/'-separated drive paths ("/relayd/owner/name"); ids are the service's.
    """

    backend: ClassVar[str]

    @abc.abstractmethod
    def ensure_folder(self, path: str) -> str:
        """Given an absolute folder path, create what is missing and return the folder's id."""

    @abc.abstractmethod
    def find(self, parent_id: str, name: str) -> DriveFile | None:
        """Return the file called *name* directly in the folder *parent_id*, or None."""

    @abc.abstractmethod
    def find_path(self, path: str) -> DriveFile | None:
        """Return the file at the absolute *path*, or None (creates nothing)."""

    @abc.abstractmethod
    def get(self, file_id: str) -> DriveFile | None:
        """Return the file with this id as the drive reports it now, or None if it is gone."""

    @abc.abstractmethod
    def part_size(self, size: int) -> int:
        """Return the multipart part size the drive uses for a file of *size* bytes."""

    @abc.abstractmethod
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
        """Upload *local* as *name* into *parent_id*, continuing from *state* (the last state reported
        through ``callbacks.state``, or {} to start). Try rapid upload first; check the drive's size and
        content hash at the end.

        Raise NameTaken if the name is used by another file, ContentMismatch if the drive's copy is not
        the local content, Cancelled (relayd.errors) when *cancel* is set, at a part boundary.
        """

    def verify(self, file_id: str, size: int, sha1: str) -> DriveFile:
        """Return the file if the drive reports exactly *size* bytes with content hash *sha1*.

        Raise UploadGone if the file is gone, ContentMismatch if it differs.
        """
        found = self.get(file_id)
        if found is None:
            raise UploadGone(f"the drive has no file {file_id} any more")
        if not found.matches(size, sha1):
            raise ContentMismatch(
                f"the drive reports {found.size} bytes with content hash {found.content_hash}, "
                f"expected {size} bytes with {sha1.upper()}",
                found,
            )
        return found

    @abc.abstractmethod
    def trash(self, file_id: str) -> None:
        """Move the file to the drive's recycle bin (recoverable there)."""

    @abc.abstractmethod
    def rename(self, file_id: str, name: str) -> DriveFile:
        """Rename the file in place; the drive picks a free variant if *name* is taken."""

    @abc.abstractmethod
    def download_url(self, file_id: str) -> DownloadLink:
        """Return a fresh download link for the file (the vm_pull hop's source)."""

    def login(self, refresh_token: str, *, bootstrap_sha256: str | None = None) -> TokenLifetime:
        """Exchange a refresh token a person supplied for a saved login, and return its lifetime
        (`relayctl drive login`). Raise NeedsPerson if the service refuses it; backends that log in
        another way raise UsageError."""
        raise UsageError(f"the {self.backend} drive backend does not log in with a refresh token")

    @abc.abstractmethod
    def token_lifetime(self) -> TokenLifetime:
        """Return the login's state and the access token's expiry, without network calls."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections."""
