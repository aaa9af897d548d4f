"""Files on the VM: a safe target under vm.root, its partial file, and hashing (a thread over the
growing contiguous prefix while pieces land, or a whole file at once).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
import time
from typing import Any, Tuple

from .core import AgentError, Context

PARTIAL_SUFFIX = ".relayd-partial"
HASH_CHUNK = 8 * 1024 * 1024
Piece = Tuple[int, int, int]  # index, offset, length


def resolve_target(root: str, relative: str) -> str:
    """Return ``root/relative`` after checking that *relative* is a plain relative path that stays
    under *root* (no ``..``, no absolute path, no symlinked directory leading out); create its
    parent directories."""
    parts = relative.split("/")
    if not relative or relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise AgentError("refusing the path %r on the VM" % relative, kind="permanent", error_class="path")
    root_real = os.path.realpath(root)
    target = os.path.join(root_real, *parts)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    if os.path.commonpath([root_real, os.path.realpath(parent)]) != root_real:
        raise AgentError(
            "%s leads out of %s on the VM (a symlink?)" % (relative, root),
            kind="blocked",
            error_class="path",
            hint="remove the symlink under vm.root on the VM, then `relayctl retry`",
        )
    return target


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_space(path: str, needed: int) -> None:
    stats = os.statvfs(os.path.dirname(path))
    free = stats.f_bavail * stats.f_frsize
    if needed > free:
        raise AgentError(
            "the VM's disk has %d bytes free under %s, the file needs %d more"
            % (free, os.path.dirname(path), needed),
            kind="blocked",
            error_class="disk",
            hint="free space on the VM's disk (or point vm.root elsewhere); relayd resumes by itself",
        )


def as_pieces(raw: list[Any]) -> list[Piece]:
    return [(int(item[0]), int(item[1]), int(item[2])) for item in raw]


class PrefixHasher(threading.Thread):
    """Hash a file's pieces in order as each becomes durable (sha256 here, sha1 in a helper thread:
    hashlib releases the GIL, so both run at once)."""

    def __init__(
        self, fd: int, plan: list[Piece], done: set[int], context: Context, with_sha1: bool = True
    ) -> None:
        super().__init__(name="relayd-agent-hash", daemon=True)
        self.fd = fd
        self.plan = sorted(plan, key=lambda piece: piece[1])
        self.done = set(done)
        self.context = context
        self.sha256 = hashlib.sha256()
        self.sha1 = hashlib.sha1() if with_sha1 else None
        self.hashed = 0
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._halt = False

    def mark_done(self, index: int) -> None:
        with self._cond:
            self.done.add(index)
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._halt = True
            self._cond.notify_all()

    def run(self) -> None:
        try:
            for index, offset, length in self.plan:
                with self._cond:
                    while index not in self.done and not self._halt:
                        self._cond.wait()
                    if self._halt:
                        return
                self._hash_range(offset, length)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def _hash_range(self, offset: int, length: int) -> None:
        position, end = offset, offset + length
        while position < end:
            if self._halt:
                return
            data = os.pread(self.fd, min(HASH_CHUNK, end - position), position)
            if not data:
                raise OSError(errno.EIO, "the partial file ended at %d bytes" % position)
            if self.sha1 is None:
                self.sha256.update(data)
            else:
                helper = threading.Thread(target=self.sha1.update, args=(data,))
                helper.start()
                self.sha256.update(data)
                helper.join()
            position += len(data)
            self.hashed += len(data)

    def finish(self) -> tuple[str, str | None]:
        """Wait for the whole file to be hashed; return (sha256, sha1 or None when not asked)."""
        self.join()
        if self.error is not None:
            raise self.error
        return self.sha256.hexdigest(), self.sha1.hexdigest() if self.sha1 is not None else None


def hash_file(path: str, context: Context, with_sha1: bool = True) -> tuple[str, str | None, int]:
    """Return sha256, sha1 (None unless *with_sha1*) and size of *path*, emitting ``hashing`` events."""
    fd = os.open(path, os.O_RDONLY)
    try:
        total = os.fstat(fd).st_size
        hasher = PrefixHasher(fd, [(0, 0, total)], {0}, context, with_sha1)
        hasher.start()
        last = time.monotonic()
        while hasher.is_alive():
            hasher.join(0.5)
            if context.cancelled:
                hasher.stop()
                context.check_cancelled()
            if time.monotonic() - last >= 1.0:
                context.emit("hashing", bytes=hasher.hashed, size=total)
                last = time.monotonic()
        sha256, sha1 = hasher.finish()
    finally:
        os.close(fd)
    return sha256, sha1, total


def open_partial(partial: str, size: int, fresh: bool) -> int:
    """Open (or, when *fresh*, recreate) the partial file at its full size; return its fd."""
    if fresh:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    elif not os.path.isfile(partial) or os.stat(partial).st_size != size:
        raise AgentError(
            "the partial file %s is gone or has the wrong size; starting the file again" % partial,
            error_class="partial_lost",
        )
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
    if fresh:
        os.ftruncate(fd, size)
    return fd


def finalize(fd: int, partial: str, target: str) -> None:
    os.fsync(fd)
    os.replace(partial, target)
    _fsync_dir(os.path.dirname(target))
