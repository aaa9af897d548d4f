"""The error classes relayd raises, and how the engine treats each.

A hop signals what should happen next by the class it raises: ``Retryable`` parks the transfer as
``waiting`` with a backoff, ``NeedsPerson`` parks it as ``blocked`` with a reason and a hint that says
what to do, ``Permanent`` blocks it as well (nothing a retry can fix), ``IntegrityMismatch`` sends the
copy again once and blocks on the second mismatch in a row, ``Cancelled`` puts it back to ``pending``
untouched because the daemon is stopping.

What kind of failure it was is its ``ErrorClass``, stored with the transfer or poll it parked and shown
by `relayctl status`, whereis, the webhooks and the metrics; docs/errors.md says what each means.
"""

from __future__ import annotations

import enum


class ErrorClass(enum.StrEnum):
    """The kinds of failure, as stored in the catalogue and shown to people and scripts: each value is
    documented in docs/errors.md (tests/test_errors.py keeps the two equal). The values are part of
    relayd's interface (status JSON, webhooks, metrics labels): a value, once used, keeps its spelling."""

    AGENT = "agent"
    API_CHANGED = "api_changed"
    AUTH = "auth"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"
    CHANGED = "changed"
    CLIENT = "client"
    CONFIG = "config"
    CONFLICT = "conflict"
    DEVICE = "device"
    DISK = "disk"
    DOWNLOAD_REFUSED = "download_refused"
    DRIVE = "drive"
    DUPLICATE = "duplicate"
    ERROR = "error"
    FORBIDDEN = "forbidden"
    GATED = "gated"
    GIT = "git"
    HOST_KEY = "host_key"
    HOSTILE = "hostile"
    INTEGRITY = "integrity"
    INTERNAL = "internal"
    IO = "io"
    MISMATCH = "mismatch"
    MISSING = "missing"
    NETWORK = "network"
    NOT_FOUND = "not_found"
    PARTIAL_LOST = "partial_lost"
    PATH = "path"
    PERMANENT = "permanent"
    PROTOCOL = "protocol"
    QUOTA = "quota"
    RANGE = "range"
    RANGE_IGNORED = "range_ignored"
    RANGE_UNSATISFIABLE = "range_unsatisfiable"
    RATE_LIMIT = "rate_limit"
    REDIRECT = "redirect"
    REUSE = "reuse"
    SERVER = "server"
    SETUP = "setup"
    STAGING = "staging"
    STALL = "stall"
    TIMEOUT = "timeout"
    TLS = "tls"
    TOO_LARGE = "too_large"
    UPLOAD_EXPIRED = "upload_expired"
    UPSTREAM = "upstream"
    URL = "url"
    URL_EXPIRED = "url_expired"
    XET = "xet"

    @classmethod
    def parse(cls, value: object) -> ErrorClass:
        """Return the class a peer named (the VM agent sends plain strings), or ``ERROR`` for a value
        that is not one (an agent of another version, or garbage)."""
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                pass
        return cls.ERROR


class RelayError(Exception):
    """Base class of every error relayd raises on purpose."""


class ConfigError(RelayError):
    """The configuration is invalid; the message names the file and the key."""


class UsageError(RelayError):
    """A command was given input it cannot accept (an invalid repo id, an unknown hop)."""


class CatalogueError(RelayError):
    """The catalogue cannot be used as it is."""


class SchemaMismatch(CatalogueError):
    """The catalogue's schema is not the one this relayd expects; the message names the fix."""


class InstanceLocked(RelayError):
    """Another relayd process already serves this catalogue."""


class HopError(RelayError):
    """A hop could not finish a transfer.

    *error_class* says what kind of failure it is (``ErrorClass``), for status, webhooks and metrics.
    """

    error_class: ErrorClass = ErrorClass.ERROR

    def __init__(self, message: str, *, error_class: ErrorClass | None = None) -> None:
        super().__init__(message)
        if error_class is not None:
            self.error_class = ErrorClass(error_class)


class Retryable(HopError):
    """A transient failure: try again later, at *retry_after* seconds if the server said so."""

    error_class = ErrorClass.NETWORK

    def __init__(
        self, message: str, *, error_class: ErrorClass | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, error_class=error_class)
        self.retry_after = retry_after


class NeedsPerson(HopError):
    """Only a person can fix this (token, gating, disk, quota); *hint* says what to do."""

    error_class = ErrorClass.BLOCKED

    def __init__(self, message: str, *, hint: str, error_class: ErrorClass | None = None) -> None:
        super().__init__(message, error_class=error_class)
        self.hint = hint


class Permanent(HopError):
    """The transfer cannot succeed as it is (e.g. the upstream file is invalid)."""

    error_class = ErrorClass.PERMANENT

    def __init__(self, message: str, *, hint: str = "", error_class: ErrorClass | None = None) -> None:
        super().__init__(message, error_class=error_class)
        self.hint = hint or "fix the cause, then run `relayctl retry`"


class IntegrityMismatch(HopError):
    """The destination measured another hash than the content's: the copy is discarded.

    A hop raises it after throwing the bad copy away (or marking its bad pieces missing); the engine
    sends the copy again once, and blocks the transfer on a second mismatch in a row (``Job``
    counts them). *expected* and *actual* are the hashes (with the algorithm in *algorithm*),
    *where* says where the copy was measured ("on the drive after pan_upload"), *hint* what a person
    should check when it repeats.
    """

    error_class = ErrorClass.INTEGRITY

    def __init__(
        self,
        *,
        expected: str,
        actual: str,
        where: str,
        hint: str,
        algorithm: str = "sha256",
        detail: str = "",
    ) -> None:
        self.expected = expected
        self.actual = actual
        self.where = where
        self.hint = hint
        self.algorithm = algorithm
        self.detail = detail
        message = f"{algorithm} mismatch measured {where}: expected {expected}, got {actual}"
        super().__init__(f"{message} ({detail})" if detail else message)


class Cancelled(HopError):
    """The daemon is stopping; the transfer goes back to pending with its durable pieces kept."""

    error_class = ErrorClass.CANCELLED
