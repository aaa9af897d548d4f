"""The plain records a hop is handed: the repo, the file, its pieces and where its verified copies are.

They are stdlib dataclasses, frozen, built by the catalogue when the engine claims a transfer
(``Store.load_job``); no database object ever reaches a hop, so a hop cannot read or write the
catalogue behind the engine's back, and the records mean the same whatever database holds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: What a hop records about a copy it made (a drive file id, a path on the VM, an LFS oid …): plain JSON.
Handles = dict[str, Any]


@dataclass(frozen=True)
class RepoInfo:
    """A watched repo: ``name`` is its ``owner/name`` at the source, ``route`` the hops its files take,
    ``destinations`` the names it has at each destination (``drive_folder``, ``vm_dir``,
    ``modelscope_repo`` …) and ``options`` its own settings (``vm_from_staging`` …)."""

    name: str
    repo_type: str = "model"
    revision: str = "main"
    route: tuple[str, ...] = ()
    destinations: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FileInfo:
    """One file of a snapshot and what is known of its content: the sha256 (the LFS oid, or measured by
    the first hop), the git blob id, the sha1 measured while downloading, and the staged copy (a path
    relative to the staging root) while there is one. ``blob_id`` names the content in the catalogue:
    files with the same content share it."""

    id: int
    blob_id: int
    path: str
    size: int
    lfs: bool
    sha256: str | None = None
    git_blob_id: str | None = None
    sha1: str | None = None
    staged_path: str | None = None


@dataclass(frozen=True)
class PieceSpec:
    """A byte range of a transfer, as a hop plans it; ``done`` once it is durable at the destination."""

    index: int
    offset: int
    length: int
    done: bool = False


@dataclass(frozen=True)
class SnapshotInfo:
    """The pinned commit a snapshot-level transfer (``Hop.finish_snapshot``) finishes."""

    id: int
    commit: str


@dataclass(frozen=True)
class SnapshotMember:
    """A file of the snapshot being finished and its verified copies, by hop."""

    file: FileInfo
    locations: Mapping[str, Handles]


@dataclass(frozen=True)
class JobData:
    """Everything a hop may read about one claimed transfer, loaded in one go.

    ``commit`` is the pinned commit the transfer belongs to: its snapshot's, or that of the newest
    snapshot listing its file (never a branch head that moved on). ``locations`` are the handles of the
    file's done hops (its verified copies). A snapshot-level transfer has no ``file`` but a ``snapshot``,
    its ``snapshot_files`` and the handles of the repo's last snapshot finished on this hop.
    """

    transfer_id: int
    hop: str
    attempts: int
    handles: Handles
    repo: RepoInfo
    commit: str
    file: FileInfo | None = None
    pieces: tuple[PieceSpec, ...] = ()
    locations: Mapping[str, Handles] = field(default_factory=dict)
    snapshot: SnapshotInfo | None = None
    snapshot_files: tuple[SnapshotMember, ...] = ()
    previous_snapshot_handles: Handles | None = None
