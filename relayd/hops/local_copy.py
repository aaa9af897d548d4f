"""local_copy: copy a file between two local directories piece by piece, hash-verified.

The reference hop that proves the engine: pieces are copied with positional reads and writes into a
partial file, each fsynced before it is recorded; the whole is verified by sha256 and renamed into
place. A corrupted destination is found piece by piece against the source and only those pieces are
copied again (once: a second mismatch in a row blocks, see ``IntegrityMismatch``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from relayd.config import LocalCopyConfig
from relayd.digest import hash_file, sha256_of_range
from relayd.errors import ErrorClass, IntegrityMismatch, NeedsPerson, Retryable
from relayd.hops.base import (
    FAIL,
    OK,
    Check,
    CheckScope,
    Finding,
    Hop,
    HopContext,
    Job,
    Outcome,
    PieceSpec,
    plan_ranges,
)
from relayd.staging import fsync_dir

CHUNK = 4 * 1024 * 1024
GROUP = "local_copy"  # doctor's group of its checks
PARTIAL_SUFFIX = ".relayd-partial"


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{relative!r} leaves {root}")
    return path


class LocalCopyHop(Hop):
    """Copy ``<source>/<repo>/<path>`` (or the staged copy) to ``<dest>/<repo>/<path>``."""

    name = "local_copy"
    config_section = "local_copy"
    short_name = "copy"
    source = "local"
    consumes = frozenset({"staging"})  # after download; first in a route, it reads local_copy.source
    produces = "local_copy.dest"
    section: LocalCopyConfig

    def __init__(self, section: LocalCopyConfig, ctx: HopContext) -> None:
        super().__init__(section, ctx)

    def _source(self, job: Job) -> Path:
        file = job.file_or_fail
        if file.staged_path:
            return self.ctx.staging.resolve(file.staged_path)
        return _inside(self.section.source, f"{job.repo.name}/{file.path}")

    def _target(self, job: Job) -> Path:
        return _inside(self.section.dest, f"{job.repo.name}/{job.file_or_fail.path}")

    def _partial(self, job: Job) -> Path:
        target = self._target(job)
        return target.with_name(target.name + PARTIAL_SUFFIX)

    def plan(self, job: Job) -> Sequence[PieceSpec]:
        return plan_ranges(job.file_or_fail.size, self.section.piece_size)

    @classmethod
    def checks(cls, section: LocalCopyConfig, scope: CheckScope) -> Sequence[Check]:
        """Return whether the source folder can be read and the destination written."""

        def source() -> list[Finding]:
            if section.source.is_dir() and os.access(section.source, os.R_OK | os.X_OK):
                return [Finding(GROUP, "local_copy source", OK, str(section.source))]
            return [
                Finding(
                    GROUP,
                    "local_copy source",
                    FAIL,
                    f"{section.source} is not a readable directory",
                    "create it or fix local_copy.source",
                )
            ]

        def dest() -> list[Finding]:
            existing = section.dest
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            if os.access(existing, os.W_OK | os.X_OK):
                return [Finding(GROUP, "local_copy dest", OK, str(section.dest))]
            return [
                Finding(
                    GROUP,
                    "local_copy dest",
                    FAIL,
                    f"{section.dest} cannot be written ({existing} is not writable)",
                    "fix local_copy.dest or its permissions",
                )
            ]

        return [Check(GROUP, "local_copy source", source), Check(GROUP, "local_copy dest", dest)]

    def move(self, job: Job, missing: Sequence[PieceSpec]) -> None:
        source = self._source(job)
        partial = self._partial(job)
        partial.parent.mkdir(parents=True, exist_ok=True)
        if not source.is_file():
            raise NeedsPerson(
                f"the source file {source} is missing",
                hint="restore it, then `relayctl retry`",
                error_class=ErrorClass.NOT_FOUND,
            )
        if len(missing) == len(job.pieces):
            partial.unlink(missing_ok=True)  # nothing recorded: whatever is there is not trusted
        source_fd = os.open(source, os.O_RDONLY)
        target_fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(target_fd, job.file_or_fail.size)
            for piece in missing:
                job.check_cancelled()
                job.begin_piece(piece.index)
                self._copy_range(job, source_fd, target_fd, piece)
                os.fdatasync(target_fd)
                job.piece_done(piece.index)
        finally:
            os.close(source_fd)
            os.close(target_fd)

    def _copy_range(self, job: Job, source_fd: int, target_fd: int, piece: PieceSpec) -> None:
        position, end = piece.offset, piece.offset + piece.length
        started = time.monotonic()
        while position < end:
            data = os.pread(source_fd, min(CHUNK, end - position), position)
            if not data:
                raise Retryable(
                    f"the source ended at {position} bytes, expected {end}", error_class=ErrorClass.CHANGED
                )
            written = os.pwrite(target_fd, data, position)
            position += written
            job.add_progress(written, piece.index)
            if self.section.max_rate:
                ahead = (position - piece.offset) / self.section.max_rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)

    def verify(self, job: Job) -> Outcome:
        file = job.file_or_fail
        target = self._target(job)
        partial = self._partial(job)
        if not partial.exists() and target.exists() and target.stat().st_size == file.size:
            partial = target  # verified and renamed before a crash; check it again
        if not partial.exists():
            job.reset_pieces()
            raise Retryable(f"{partial} vanished; copying it again", error_class=ErrorClass.INTEGRITY)
        digest = hash_file(partial)
        if partial.stat().st_size != file.size or digest.sha256 != file.sha256:
            bad = self._bad_pieces(job, partial)
            job.reset_pieces(bad or None)
            raise IntegrityMismatch(
                expected=str(file.sha256),
                actual=digest.sha256,
                where="at the destination after local_copy",
                detail=f"{len(bad) or len(job.pieces)} of {len(job.pieces)} piece(s) marked missing",
                hint="check that the source file has not changed since it was listed and that the "
                "destination disk is healthy (dmesg, SMART), then `relayctl retry`",
            )
        if partial != target:
            os.replace(partial, target)
            fsync_dir(target.parent)
        return Outcome(handles={"path": str(target)}, sha256=digest.sha256, sha1=digest.sha1)

    def _bad_pieces(self, job: Job, partial: Path) -> list[int]:
        source = self._source(job)
        if not source.is_file() or partial.stat().st_size != job.file_or_fail.size:
            return []
        return [
            piece.index
            for piece in job.pieces
            if sha256_of_range(source, piece.offset, piece.length)
            != sha256_of_range(partial, piece.offset, piece.length)
        ]
