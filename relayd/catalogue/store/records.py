"""The plain values the store takes and gives back, and the clock and lease ids it uses.

What `relayctl add` asks for (``RepoSpec``), one file of a polled snapshot (``FileSpec``), what recording
a snapshot did (``SnapshotResult``), a staged copy no hop needs any more (``StagedBlob``), a failure
streak surfaced as stuck (``StuckNotice``), and ``LeaseLost`` for a worker whose transfer was taken
over. Kept apart from the store's layers so each layer and each caller imports them without the others.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from relayd.errors import CatalogueError


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_owner_id() -> str:
    """Return a lease owner id unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_process(owner: str) -> tuple[str, int] | None:
    """Return the host and pid a lease *owner* id names (``new_owner_id``), or None for another form."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


@dataclass(frozen=True)
class RepoSpec:
    """What `relayctl add` asks for."""

    name: str
    every: float
    route: tuple[str, ...]
    repo_type: str = "model"
    revision: str = "main"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    destinations: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FileSpec:
    """One file of a polled snapshot: the path and what identifies its content."""

    path: str
    size: int
    lfs: bool
    sha256: str | None = None
    git_blob_id: str | None = None


@dataclass(frozen=True)
class SnapshotResult:
    snapshot_id: int
    created: bool
    new_files: int
    linked_files: int
    removed_files: int


@dataclass(frozen=True)
class StagedBlob:
    blob_id: int
    staged_path: str


@dataclass(frozen=True)
class StuckNotice:
    """A transfer (or, with *hop* None, a repo's poll) that has kept failing for longer than
    retry.surface_after, as surfaced and notified."""

    repo: str
    hop: str | None
    path: str | None
    error: str | None
    error_class: str | None
    attempts: int
    failing_since: datetime
    hint: str


class LeaseLost(CatalogueError):
    """Another worker owns this transfer now (our lease expired); drop the result."""


class TransferGone(LeaseLost):
    """The transfer no longer exists (its file is fetched again, or its repo was removed): nobody's
    result of it counts."""
