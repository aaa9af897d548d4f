"""download: Hugging Face → the staging disk, in ranged pieces over several connections, resumable
across restarts, verified by hash, staged once per sha256.

Per file: the Hub's metadata (a fresh signed location, checked against the pinned tree), then the missing
pieces with HTTP Range over ``hub.connections`` keep-alive connections into a preallocated partial file
with positional writes, handed out in file order (``relayd.hops.download_run``; the connections, the
signed locations and the hashing are ``relayd.hops.download_fetch``'s). A piece is recorded only once
fsynced. sha256 and sha1 (and the git blob sha1 of a non-LFS file) follow the contiguous written prefix
as it grows, so the file is never read again just to hash it; after a restart only the durable prefix
is re-hashed.
A verified file moves atomically to ``blobs/<aa>/<sha256>``; a mismatch is quarantined and downloaded
again, and a second mismatch in a row blocks the transfer (``IntegrityMismatch``, counted by the Job).

Content already staged and verified is not downloaded again: the catalogue's record of a staged blob is
trusted (it is written only after a hash check) once the file is there with the right size; a blob
file the catalogue does not know about (a crash between the rename and the catalogue write) is hashed
once before it is reused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from relayd.config import HubConfig
from relayd.digest import hash_file
from relayd.errors import ErrorClass, IntegrityMismatch, Permanent, Retryable
from relayd.hops.base import Hop, HopContext, Job, Outcome, PieceSpec, plan_ranges
from relayd.hops.download_fetch import Digest, Fetcher
from relayd.hops.download_run import BLOCK, Location, Run
from relayd.http_ranges import Origin, origin_of
from relayd.staging import fsync_dir, partial_name

if TYPE_CHECKING:
    from relayd.hub import FileMetadata, HubClient

MiB = 1024 * 1024
MIN_PIECE = 1 * MiB


def piece_length(size: int, piece_size: int, connections: int) -> int:
    """Return the piece length for a file of *size* bytes: ``piece_size``, or less for a file too
    small to keep every connection busy (never under 1 MiB unless piece_size is)."""
    share = -(-size // max(1, connections))
    share = -(-share // MiB) * MiB
    return max(1, min(piece_size, max(MIN_PIECE, share)))


def partial_key(job: Job) -> str:
    """Return the partial file's name (``relayd.partials`` sweeps the ones no longer needed)."""
    return partial_name(job.id)


class DownloadHop(Hop):
    """Bring one file of a Hub repo, pinned to its snapshot's commit, into content-addressed staging."""

    name = "download"
    config_section = "hub"
    short_name = "dl"
    writes_staging = True
    source = "hub"
    produces = "staging"
    services = ("hub",)
    section: HubConfig

    def __init__(self, section: HubConfig, ctx: HopContext) -> None:
        super().__init__(section, ctx)
        self._hub: HubClient | None = None
        self._hub_lock = threading.Lock()
        self._digests: dict[int, Digest] = {}
        self._active: dict[str, int] = {}
        self._active_lock = threading.Lock()
        self._reused: dict[int, Outcome] = {}
        self._one_range_origins: set[Origin] = set()  # CDNs that said their URLs serve one range each

    @property
    def hub(self) -> HubClient:
        """Return the daemon's shared Hub client (``ctx.services``), or one of this hop's own, made on
        first use."""
        with self._hub_lock:
            if self._hub is None:
                try:
                    self._hub = self.ctx.services.get("hub")
                except KeyError:
                    from relayd.hub import HubClient  # huggingface_hub is loaded when it is needed

                    self._hub = HubClient(self.section)
            return self._hub

    # -- the contract ------------------------------------------------------------------------------

    @property
    def large_files(self) -> tuple[int, int]:
        """A file of ``connections`` blocks or more keeps every connection busy, so a second one at
        the same time only shares the link: it would finish both later, hold back the next hops and
        fill staging with partial files. Small files still go beside it."""
        return self.section.connections * BLOCK, self.section.large_concurrency

    def plan(self, job: Job) -> Sequence[PieceSpec]:
        file = job.file_or_fail
        length = piece_length(file.size, self.section.piece_size, self.section.connections)
        pieces = plan_ranges(file.size, length)
        if self._reusable(job) is not None:
            return [PieceSpec(p.index, p.offset, p.length, True) for p in pieces]
        return pieces

    def move(self, job: Job, missing: Sequence[PieceSpec]) -> None:
        if self._reusable(job) is not None:
            return
        with self._content_claim(job):
            self._download(job)

    def verify(self, job: Job) -> Outcome:
        reused = self._reusable(job)
        self._reused.pop(job.id, None)
        if reused is not None:
            job.log.info("already staged and verified; nothing to download")
            return reused
        file = job.file_or_fail
        partial = self.ctx.staging.partial_path(partial_key(job))
        digest = self._digests.pop(job.id, None)
        if digest is None:
            if not partial.is_file():
                job.reset_pieces()
                raise Retryable(
                    f"the partial file {partial} vanished; downloading again", error_class=ErrorClass.IO
                )
            # Every piece was durable before a restart: the durable prefix is the whole file.
            hashed = hash_file(partial, git_blob=not file.lfs)
            digest = Digest(partial.stat().st_size, hashed.sha256, hashed.sha1, hashed.git_blob_id)
        if not self._matches(job, digest):
            self._mismatch(job, partial, digest)
        target = self.ctx.staging.promote(partial, digest.sha256)
        relative = self.ctx.staging.relative(target)
        job.log.info("verified (sha256 %s) and staged as %s", digest.sha256[:16], relative)
        return Outcome(
            handles={
                "staged": relative,
                "commit": job.commit,
                "etag": file.sha256 if file.lfs else file.git_blob_id,
                "size": digest.size,
            },
            sha256=digest.sha256,
            sha1=digest.sha1,
            staged_path=relative,
        )

    # -- reuse and deduplication -------------------------------------------------------------------

    def _reusable(self, job: Job) -> Outcome | None:
        """Return the Outcome of an already staged, verified copy of this content, or None."""
        file = job.file_or_fail
        staging = self.ctx.staging
        if job.id in self._reused:
            return self._reused[job.id]
        if file.staged_path and file.sha256:
            try:
                path = staging.resolve(file.staged_path)
            except ValueError:
                path = None
            if path is not None and path.is_file() and path.stat().st_size == file.size:
                sha1 = file.sha1
                if sha1 is None:
                    sha1 = hash_file(path).sha1
                return self._reuse_outcome(job, path, file.sha256, sha1)
        if file.sha256:
            path = staging.blob_path(file.sha256)
            if path.is_file() and path.stat().st_size == file.size:
                hashed = hash_file(path, git_blob=not file.lfs)
                if hashed.sha256 == file.sha256 and (file.lfs or hashed.git_blob_id == file.git_blob_id):
                    outcome = self._reuse_outcome(job, path, hashed.sha256, hashed.sha1)
                    self._reused[job.id] = outcome
                    return outcome
                staging.quarantine_file(path, f"mislabelled-{job.id}")
        return None

    def _reuse_outcome(self, job: Job, path: Path, sha256: str, sha1: str) -> Outcome:
        file = job.file_or_fail
        relative = self.ctx.staging.relative(path)
        return Outcome(
            handles={
                "staged": relative,
                "commit": job.commit,
                "etag": file.sha256 if file.lfs else file.git_blob_id,
                "size": file.size,
                "reused": True,
            },
            sha256=sha256,
            sha1=sha1,
            staged_path=relative,
        )

    @contextlib.contextmanager
    def _content_claim(self, job: Job) -> Iterator[None]:
        """Let one transfer at a time download a given content; the others wait and then reuse it."""
        file = job.file_or_fail
        key = file.sha256 or f"git:{file.git_blob_id}"
        with self._active_lock:
            holder = self._active.get(key)
            if holder is not None and holder != job.id:
                raise Retryable(
                    f"the same content is being downloaded by transfer {holder}; it will be reused",
                    retry_after=5,
                    error_class=ErrorClass.DUPLICATE,
                )
            self._active[key] = job.id
        try:
            yield
        finally:
            with self._active_lock:
                if self._active.get(key) == job.id:
                    del self._active[key]

    # -- metadata ----------------------------------------------------------------------------------

    def _metadata(self, job: Job) -> FileMetadata:
        """Return fresh metadata of the file at the pinned commit; refuse it if it contradicts the tree."""
        file = job.file_or_fail
        repo = job.repo
        commit = job.commit
        meta = self.hub.file_metadata(
            repo.name, repo.repo_type, commit, file.path, calls=1 if file.lfs else 2
        )
        expected = file.sha256 if file.lfs else file.git_blob_id
        problems = []
        if meta.commit and commit and meta.commit != commit:
            problems.append(f"it resolved at commit {meta.commit[:12]}, not the pinned {commit[:12]}")
        if meta.etag and expected and meta.etag.lower() != expected:
            problems.append(f"its etag is {meta.etag}, the tree said {expected}")
        if meta.size is not None and meta.size != file.size:
            problems.append(f"its size is {meta.size}, the tree said {file.size}")
        if problems:
            raise Permanent(
                f"the Hub's metadata for {file.path} contradicts the tree of the pinned commit "
                f"({'; '.join(problems)}): the tree changed under a pinned commit",
                hint="the Hub (or mirror) is inconsistent; check the repo there, then `relayctl retry`",
                error_class=ErrorClass.CHANGED,
            )
        return meta

    # -- moving the bytes --------------------------------------------------------------------------

    def _download(self, job: Job) -> None:
        file = job.file_or_fail
        staging = self.ctx.staging
        partial = staging.partial_path(partial_key(job))
        meta = self._metadata(job) if file.size else None
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            done = [p for p in job.pieces if p.done]
            if done and os.fstat(fd).st_size != file.size:
                job.log.warning(
                    "the partial file has %d bytes, expected %d; its recorded pieces are not trusted",
                    os.fstat(fd).st_size,
                    file.size,
                )
                job.reset_pieces()
                done = []
            if not done:
                os.ftruncate(fd, 0)
                _preallocate(fd, file.size)
                fsync_dir(partial.parent)  # the recorded pieces must not outlive the file's name
            pieces = sorted(job.pieces, key=lambda p: p.offset)
            if file.size == 0:
                os.fsync(fd)
                for piece in pieces:
                    if not piece.done:
                        job.piece_done(piece.index)
                pieces = [PieceSpec(p.index, p.offset, p.length, True) for p in pieces]
            run = Run(job, fd, partial, file.size, pieces, self.section.connections)
            if meta is not None:
                run.location = Location(meta.location, 0, meta.xet)
                run.one_range = origin_of(meta.location) in self._one_range_origins
            fetcher = Fetcher(self.section, self.hub, self._metadata, self._one_range_origins)
            digest = fetcher.run(run, git_blob=not file.lfs)
        finally:
            os.close(fd)
        if digest is not None:
            self._digests[job.id] = digest

    # -- verification ------------------------------------------------------------------------------

    @staticmethod
    def _matches(job: Job, digest: Digest) -> bool:
        file = job.file_or_fail
        if digest.size != file.size:
            return False
        if file.lfs:
            return digest.sha256 == file.sha256
        if file.git_blob_id and digest.git_blob_id != file.git_blob_id:
            return False
        return not file.sha256 or digest.sha256 == file.sha256

    def _mismatch(self, job: Job, partial: Path, digest: Digest) -> NoReturn:
        """Quarantine a file that failed verification and mark every piece missing: the engine has it
        downloaded again once, and blocks on a second mismatch in a row."""
        file = job.file_or_fail
        quarantined = self.ctx.staging.quarantine_file(partial, f"t{job.id}-{job.attempts}")
        job.reset_pieces()
        by_blob = not file.lfs and bool(file.git_blob_id) and digest.git_blob_id != file.git_blob_id
        size = f"{digest.size} bytes, expected {file.size}; " if digest.size != file.size else ""
        raise IntegrityMismatch(
            expected=str(file.git_blob_id if by_blob else file.sha256),
            actual=str(digest.git_blob_id if by_blob else digest.sha256),
            algorithm="git blob id" if by_blob else "sha256",
            where="on the staging disk after download",
            detail=f"{size}the copy is kept as {quarantined}",
            hint="the Hub (or mirror) serves content that does not match its own hash; check the file "
            "there, then `relayctl retry` to download it again",
        )


def _preallocate(fd: int, size: int) -> None:
    """Reserve *size* bytes for the partial file, so a full disk shows before any byte is fetched."""
    if size == 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        os.ftruncate(fd, size)  # the filesystem cannot preallocate: a sparse file will do
