"""Storage and git object model behind the fake Hugging Face Hub.

Blobs live on disk, content-addressed by sha256, so a test can serve files of many gigabytes without
holding them in memory. Commits, trees and blob ids are real git object ids, computed the way git
and the Hub compute them, so whatever relayd checks against them would hold against the real Hub.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import random
import re
import struct
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

RepoType = Literal["model", "dataset", "space"]
Gated = Literal[False, "auto", "manual"]

LFS_SPEC = "https://git-lfs.github.com/spec/v1"
DEFAULT_LFS_THRESHOLD = 10 * 1024
DEFAULT_LFS_SUFFIXES: tuple[str, ...] = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".onnx",
    ".gguf",
    ".npy",
    ".npz",
    ".pkl",
    ".model",
    ".tflite",
    ".ot",
    ".parquet",
    ".arrow",
    ".zip",
    ".tar",
    ".gz",
    ".zst",
)

_GEN_BLOCK = 4 * 1024 * 1024
_GEN_HEADER = 16
_COPY_CHUNK = 8 * 1024 * 1024
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


def git_blob_sha1(data: bytes) -> str:
    """Return the git object id of a blob holding *data*."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def git_blob_sha1_file(path: Path) -> str:
    """Return the git object id of a blob holding the content of *path*, read in chunks."""
    size = path.stat().st_size
    digest = hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as source:
        while chunk := source.read(_COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """Return the git-lfs pointer file that stands for content of *sha256* and *size* in git."""
    return f"version {LFS_SPEC}\noid sha256:{sha256}\nsize {size}\n".encode()


def is_commit_sha(value: str) -> bool:
    """Whether *value* looks like a full 40-hex commit id."""
    return _COMMIT_SHA.fullmatch(value) is not None


@dataclass(frozen=True)
class Generated:
    """Deterministic pseudo-random content of *size* bytes (*prefix* included), for large test files.

    It is written straight into the blob store, so a multi-GB file never passes through memory.
    """

    size: int
    seed: int = 0
    prefix: bytes = b""


def write_generated_file(path: Path, size: int, seed: int = 0, *, prefix: bytes = b"") -> str:
    """Write *size* deterministic pseudo-random bytes to *path* and return their sha256 (hex).

    The content is *prefix* followed by 4 MiB blocks; each block is a per-seed random block rotated
    by a per-block amount and stamped with (seed, block index), so no two blocks are equal and no
    two seeds share a block. Hashing runs on this thread while another writes (both release the
    GIL), so the pair goes as fast as the slower of the two rather than their sum.
    """
    if size < len(prefix):
        raise ValueError(f"size {size} is smaller than the {len(prefix)}-byte prefix")
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    pending: queue.Queue[memoryview | None] = queue.Queue(maxsize=16)
    failures: list[BaseException] = []

    def write_all() -> None:
        with path.open("wb", buffering=0) as out:
            while (piece := pending.get()) is not None:
                if failures:
                    continue  # keep draining so the producer never blocks on a dead writer
                try:
                    written = 0
                    while written < len(piece):
                        written += out.write(piece[written:]) or 0
                except OSError as exc:
                    failures.append(exc)

    writer = threading.Thread(target=write_all, name="generate-writer", daemon=True)
    writer.start()
    try:
        for piece in _generated_pieces(size, seed, prefix):
            digest.update(piece)
            pending.put(piece)
    finally:
        pending.put(None)
        writer.join()
    if failures:
        raise failures[0]
    return digest.hexdigest()


def _generated_pieces(size: int, seed: int, prefix: bytes) -> Iterator[memoryview]:
    """Yield the content of write_generated_file() as read-only views, *size* bytes in all."""
    base = random.Random(seed).randbytes(_GEN_BLOCK)
    doubled = memoryview(base + base)
    remaining = size
    index = 0
    if prefix:
        yield memoryview(prefix)
        remaining -= len(prefix)
    while remaining > 0:
        header = memoryview(struct.pack("<QQ", seed & 0xFFFFFFFFFFFFFFFF, index))
        rotation = (index * 2654435761 + seed) % _GEN_BLOCK
        for whole in (header, doubled[rotation : rotation + _GEN_BLOCK - _GEN_HEADER]):
            piece = whole[:remaining]
            if piece:
                yield piece
                remaining -= len(piece)
        index += 1


@dataclass(frozen=True)
class Blob:
    """Content stored once on disk, keyed by its sha256."""

    sha256: str
    size: int
    path: Path


class BlobStore:
    """Content-addressed blobs under ``root/blobs/<aa>/<sha256>``.

    Generated content is remembered under ``root/generated`` by (size, seed, prefix), so a storage
    directory kept between runs (benchmarks) does not regenerate multi-GB files.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs_dir = root / "blobs"
        self._tmp_dir = root / "tmp"
        self._generated_dir = root / "generated"
        for folder in (self._blobs_dir, self._tmp_dir, self._generated_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._blobs: dict[str, Blob] = {}
        self._git_ids: dict[str, str] = {}

    def path_for(self, sha256: str) -> Path:
        return self._blobs_dir / sha256[:2] / sha256

    def get(self, sha256: str) -> Blob | None:
        """Return the blob *sha256*, or None if the store does not hold it."""
        with self._lock:
            blob = self._blobs.get(sha256)
        if blob is not None:
            return blob
        path = self.path_for(sha256)
        if not path.is_file():
            return None
        return self._remember(Blob(sha256, path.stat().st_size, path))

    def add_bytes(self, data: bytes) -> Blob:
        sha256 = hashlib.sha256(data).hexdigest()
        existing = self.get(sha256)
        if existing is not None:
            return existing
        tmp = self._tmp_path()
        tmp.write_bytes(data)
        return self._adopt(tmp, sha256)

    def add_file(self, source: Path) -> Blob:
        """Copy *source* into the store (the test may change or delete it afterwards)."""
        tmp = self._tmp_path()
        digest = hashlib.sha256()
        with source.open("rb") as src, tmp.open("wb") as dst:
            while chunk := src.read(_COPY_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
        sha256 = digest.hexdigest()
        existing = self.get(sha256)
        if existing is not None:
            tmp.unlink()
            return existing
        return self._adopt(tmp, sha256)

    def add_generated(self, spec: Generated) -> Blob:
        marker = self._generated_dir / (
            f"{spec.size}-{spec.seed}-{hashlib.sha256(spec.prefix).hexdigest()[:16]}"
        )
        if marker.is_file():
            blob = self.get(marker.read_text().strip())
            if blob is not None and blob.size == spec.size:
                return blob
        tmp = self._tmp_path()
        sha256 = write_generated_file(tmp, spec.size, spec.seed, prefix=spec.prefix)
        blob = self._adopt(tmp, sha256)
        marker.write_text(sha256)
        return blob

    def add(self, content: bytes | str | Path | Generated) -> Blob:
        """Store *content* (bytes, text as UTF-8, a file to copy, or generated) and return its blob."""
        if isinstance(content, Generated):
            return self.add_generated(content)
        if isinstance(content, Path):
            return self.add_file(content)
        if isinstance(content, str):
            return self.add_bytes(content.encode())
        return self.add_bytes(content)

    def git_blob_id(self, blob: Blob) -> str:
        """Return (and cache) the git blob id of *blob*'s content."""
        with self._lock:
            cached = self._git_ids.get(blob.sha256)
        if cached is None:
            cached = git_blob_sha1_file(blob.path)
            with self._lock:
                self._git_ids[blob.sha256] = cached
        return cached

    def _tmp_path(self) -> Path:
        handle, name = tempfile.mkstemp(dir=self._tmp_dir)
        os.close(handle)
        return Path(name)

    def _adopt(self, tmp: Path, sha256: str) -> Blob:
        final = self.path_for(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        return self._remember(Blob(sha256, final.stat().st_size, final))

    def _remember(self, blob: Blob) -> Blob:
        with self._lock:
            self._blobs[blob.sha256] = blob
        return blob


@dataclass(frozen=True)
class FileEntry:
    """One path of a commit: its content blob and how git stores it (LFS pointer or plain blob)."""

    path: str
    sha256: str
    size: int
    lfs: bool
    blob_id: str

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))


@dataclass(frozen=True)
class Commit:
    """An immutable commit: its files by path and the git tree id of every folder ("" is the root)."""

    sha: str
    parent: str | None
    title: str
    message: str
    author: str
    date: datetime
    files: Mapping[str, FileEntry]
    trees: Mapping[str, str]

    def folders(self) -> set[str]:
        return {folder for folder in self.trees if folder}


@dataclass
class Repo:
    """A repository: its visibility and gate, who may read it, its refs and all its commits."""

    repo_id: str
    repo_type: RepoType
    private: bool = False
    gated: Gated = False
    disabled: bool = False
    created_at: datetime = field(default_factory=lambda: datetime(2024, 1, 1, tzinfo=UTC))
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    readers: set[str] = field(default_factory=set)
    approved: set[str] = field(default_factory=set)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0] if "/" in self.repo_id else ""

    def resolve(self, revision: str) -> str | None:
        """Return the commit sha *revision* (branch, tag, refs/…, or full sha) names, or None."""
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        if revision.startswith("refs/heads/"):
            return self.branches.get(revision.removeprefix("refs/heads/"))
        if revision.startswith("refs/tags/"):
            return self.tags.get(revision.removeprefix("refs/tags/"))
        if revision.startswith("refs/pr/"):
            number = revision.removeprefix("refs/pr/")
            return self.pull_requests.get(int(number)) if number.isdigit() else None
        if is_commit_sha(revision) and revision in self.commits:
            return revision
        return None

    def history(self, sha: str) -> list[Commit]:
        """Return the commits reachable from *sha*, newest first."""
        out: list[Commit] = []
        current: str | None = sha
        while current is not None:
            commit = self.commits[current]
            out.append(commit)
            current = commit.parent
        return out

    def last_commit_touching(self, sha: str, path: str) -> Commit:
        """Return the newest commit, from *sha* back, that changed *path* (a file or a folder)."""
        history = self.history(sha)
        for newer, older in zip(history, [*history[1:], None], strict=True):
            if older is None or _object_id(newer, path) != _object_id(older, path):
                return newer
        return history[-1]


def _object_id(commit: Commit, path: str) -> str | None:
    entry = commit.files.get(path)
    return entry.blob_id if entry is not None else commit.trees.get(path)


def validate_repo_path(path: str) -> None:
    """Raise ValueError if *path* is not a plain relative path (no '..', no empty or absolute part)."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"unsafe path in repo: {path!r}")


def git_trees(files: Mapping[str, FileEntry]) -> dict[str, str]:
    """Return the git tree id of every folder of *files* ("" is the root), as git would compute it."""
    children: dict[str, dict[str, tuple[bool, str]]] = {"": {}}
    for path in files:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            children.setdefault("/".join(parts[:depth]), {})
    ids: dict[str, str] = {}

    def build(folder: str) -> str:
        entries: list[tuple[bytes, bytes]] = []
        prefix = f"{folder}/" if folder else ""
        names: dict[str, tuple[bool, str]] = {}
        for path, entry in files.items():
            if path.startswith(prefix) and "/" not in path[len(prefix) :]:
                names[path[len(prefix) :]] = (False, entry.blob_id)
        for sub in children:
            if sub and sub.startswith(prefix) and "/" not in sub[len(prefix) :]:
                names[sub[len(prefix) :]] = (True, build(sub))
        for name, (is_tree, oid) in names.items():
            mode = b"40000" if is_tree else b"100644"
            sort_key = name.encode() + (b"/" if is_tree else b"")
            entries.append((sort_key, mode + b" " + name.encode() + b"\0" + bytes.fromhex(oid)))
        body = b"".join(raw for _, raw in sorted(entries))
        tree_id = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
        ids[folder] = tree_id
        return tree_id

    build("")
    return ids


def git_commit_sha(
    *, tree: str, parent: str | None, author: str, date: datetime, title: str, message: str
) -> str:
    """Return the git id of the commit object with these fields."""
    stamp = f"{author} <{author}@users.noreply.huggingface.co> {int(date.timestamp())} +0000"
    lines = [f"tree {tree}"]
    if parent is not None:
        lines.append(f"parent {parent}")
    lines += [f"author {stamp}", f"committer {stamp}", "", title]
    if message:
        lines += ["", message]
    body = ("\n".join(lines) + "\n").encode()
    return hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()


def apply_changes(
    base: Mapping[str, FileEntry], added: Mapping[str, FileEntry], deleted: Iterable[str]
) -> dict[str, FileEntry]:
    """Return *base* with *deleted* paths (or folders) removed and *added* entries put in place."""
    files = dict(base)
    for gone in deleted:
        folder = gone.rstrip("/") + "/"
        for path in [p for p in files if p == gone or p.startswith(folder)]:
            del files[path]
    files.update(added)
    return files
