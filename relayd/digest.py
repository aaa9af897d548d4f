"""Hashing while bytes stream by: sha256 and sha1 in parallel threads (hashlib releases the GIL), over
a growing contiguous prefix, so no file is read twice just to hash it."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

CHUNK = 8 * 1024 * 1024


def git_blob_sha1(data: bytes) -> str:
    """Return the git blob id of *data* (sha1 of 'blob <size>\\0' + data)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


class PrefixHasher:
    """sha256, sha1 and (optionally) the git blob sha1 of a file's first ``offset`` bytes.

    ``update`` feeds bytes in order; ``catch_up`` reads from disk the bytes between the hashed prefix
    and a new durable end (after a restart, or when pieces finished out of order).
    """

    def __init__(self, size: int, *, git_blob: bool = False, threads: bool = True) -> None:
        self.size = size
        self.offset = 0
        self._hashes: list[Any] = [hashlib.sha256(), hashlib.sha1(usedforsecurity=False)]
        if git_blob:
            blob = hashlib.sha1(usedforsecurity=False)
            blob.update(b"blob %d\0" % size)
            self._hashes.append(blob)
        self._pool = ThreadPoolExecutor(max_workers=len(self._hashes)) if threads else None
        self._lock = threading.Lock()

    def update(self, data: bytes | memoryview) -> None:
        """Hash the next bytes of the file."""
        with self._lock:
            if self._pool is not None and len(data) >= 1024 * 1024:
                list(self._pool.map(lambda h: h.update(data), self._hashes))
            else:
                for hasher in self._hashes:
                    hasher.update(data)
            self.offset += len(data)

    def catch_up(self, path: Path | str, end: int) -> int:
        """Hash bytes [offset, end) read from *path*; return how many were read."""
        start = self.offset
        if end <= start:
            return 0
        fd = os.open(path, os.O_RDONLY)
        try:
            position = start
            while position < end:
                data = os.pread(fd, min(CHUNK, end - position), position)
                if not data:
                    raise OSError(f"{path} ended at {position} bytes, expected {end}")
                self.update(data)
                position += len(data)
        finally:
            os.close(fd)
        return end - start

    @property
    def sha256(self) -> str:
        return str(self._hashes[0].hexdigest())

    @property
    def sha1(self) -> str:
        return str(self._hashes[1].hexdigest())

    @property
    def git_blob_id(self) -> str | None:
        return str(self._hashes[2].hexdigest()) if len(self._hashes) > 2 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def hash_file(path: Path | str, *, git_blob: bool = False) -> PrefixHasher:
    """Return a finished PrefixHasher over the whole file at *path*."""
    size = os.stat(path).st_size
    hasher = PrefixHasher(size, git_blob=git_blob)
    try:
        hasher.catch_up(path, size)
    finally:
        hasher.close()
    return hasher


def sha256_file(path: Path | str) -> str:
    """Return the sha256 of the whole file at *path* (where sha1 is not wanted: see hash_file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of_range(path: Path | str, offset: int, length: int) -> str:
    """Return the sha256 of *length* bytes at *offset* in *path* (used to find corrupted pieces)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        position, end = offset, offset + length
        while position < end:
            data = os.pread(fd, min(CHUNK, end - position), position)
            if not data:
                break
            digest.update(data)
            position += len(data)
    finally:
        os.close(fd)
    return digest.hexdigest()
