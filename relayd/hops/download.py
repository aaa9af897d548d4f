"""download: Hugging Face → the staging disk, in ranged pieces over several connections, resumable
across restarts, verified by hash, staged once per sha256.

Per file: the Hub's metadata (a fresh signed location, checked against the pinned tree), then the missing
pieces with HTTP Range over ``hub.connections`` keep-alive connections into a preallocated partial file
with positional writes, handed out in file order (see ``_Run``). A piece is recorded only once fsynced.
sha256 and sha1 (and the git blob sha1 of a non-LFS file) follow the contiguous written prefix as it
grows, mapping it back from the page cache, so the file is never read again just to hash it; after a
restart only the durable prefix is re-hashed.
A verified file moves atomically to ``blobs/<aa>/<sha256>``; a mismatch is quarantined and downloaded
again, and a second mismatch in a row blocks the transfer (``IntegrityMismatch``, counted by the Job).

A refused signed location (CloudFront's 403s, an expired URL, a 416) is replaced by a fresh one. Where
the CDN serves each signed URL for one range only ("403 Auth failed: invalid range"), or fresh
locations keep being refused, the run falls back to one fresh location per request, each request a
whole piece, before it gives up.

Content already staged and verified is not downloaded again: the catalogue's record of a staged blob is
trusted (it is written only after a hash check) once the file is there with the right size; a blob
file the catalogue does not know about (a crash between the rename and the catalogue write) is hashed
once before it is reused.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from relayd.config import HubConfig
from relayd.digest import PrefixHasher, hash_file
from relayd.errors import ErrorClass, HopError, IntegrityMismatch, NeedsPerson, Permanent, Retryable
from relayd.hops.base import Hop, HopContext, Job, Outcome, PieceSpec, plan_ranges
from relayd.http_ranges import (
    LocationRefused,
    Origin,
    RangeClient,
    RangeError,
    RangeNotSatisfiable,
    RateLimited,
    Stopped,
    Untrusted,
    origin_of,
)
from relayd.staging import fsync_dir
from relayd.vm.agent.proxy import client_context

if TYPE_CHECKING:
    from relayd.hub import FileMetadata, HubClient

log = logging.getLogger(__name__)

MiB = 1024 * 1024
RECEIVE_BUFFER = 1 * MiB  # per connection: memory stays flat whatever the file size
HASH_WINDOW = 4 * MiB  # per file: how much of the written prefix is mapped at once to hash it
MIN_PIECE = 1 * MiB
BLOCK = 4 * MiB  # the smallest request: pieces are fetched in spans of blocks, in file order
MAX_PIECE_FAILURES = 6  # consecutive failed attempts at one piece without a byte of progress
MAX_FRESH_REFUSALS = 3  # fresh signed locations refused in a row before giving up
ONE_RANGE_AFTER = 2  # ... before trying one location per request instead (range-bound URLs)
INVALID_RANGE = "invalid range"  # the CDN's word for a URL asked for a range it was not signed for
MAX_INLINE_WAIT = 30.0  # a 429 asking for longer parks the transfer instead of holding connections
MAX_RATE_LIMITS = 10


def piece_length(size: int, piece_size: int, connections: int) -> int:
    """Return the piece length for a file of *size* bytes: ``piece_size``, or less for a file too
    small to keep every connection busy (never under 1 MiB unless piece_size is)."""
    share = -(-size // max(1, connections))
    share = -(-share // MiB) * MiB
    return max(1, min(piece_size, max(MIN_PIECE, share)))


def partial_key(job: Job) -> str:
    """Return the partial file's name: from the transfer id only, never from upstream paths."""
    return f"download-{job.id}.part"


@dataclass
class _Location:
    """One signed location of the file; ``generation`` tells a refresh from a stale copy, ``good`` that
    it served bytes, ``used`` that a request was sent with it."""

    url: str
    generation: int
    xet: bool
    good: bool = False
    used: bool = False


@dataclass
class _Lease:
    """The location one worker holds once signed URLs serve one range each (a fresh one per request)."""

    location: _Location | None = None


@dataclass
class _Digest:
    size: int
    sha256: str
    sha1: str
    git_blob_id: str | None


@dataclass
class _Span:
    """One ranged request: consecutive blocks ``[first, last)`` of one piece, fetched by one worker;
    ``current`` is the block being written."""

    piece: int
    first: int
    last: int
    current: int


class _Run:
    """The shared state of one move(): what to fetch, what is written, the location, the errors.

    The missing pieces are cut into blocks and handed out in file order, a span of blocks per request:
    one block per connection first, then doubling up to whole pieces while much is left, and smaller
    spans again towards the end. Requests then complete roughly in
    file order, so the contiguous written prefix (what can be hashed) follows the download closely and
    little is left to hash after the last byte; the last spans are small, so a slow connection does not
    hold the end back. At most ``connections`` pieces are started and not yet durable at a time, so a
    crash loses at most one piece per connection.
    """

    def __init__(
        self, job: Job, fd: int, path: Path, size: int, pieces: list[PieceSpec], connections: int
    ) -> None:
        self.job = job
        self.fd = fd
        self.path = path
        self.size = size
        self.pieces = pieces
        self.connections = max(1, connections)
        self.location = _Location("", 0, False)
        self.cond = threading.Condition()
        self.record_lock = threading.Lock()
        self.refresh_lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.fresh_refusals = 0
        self.one_range = False  # one fresh location per request, each request the rest of a piece
        self.workers_done = False
        longest = max((p.length for p in pieces), default=0)
        self.block = max(1, min(BLOCK, longest))
        self.block_start: list[int] = []
        self.block_len: list[int] = []
        self.block_piece: list[int] = []
        self.written: list[int] = []
        self.missing_blocks: list[int] = []
        self.state: list[str] = []  # per piece: "todo", "open", "closing", "done"
        self.undispatched = 0
        for position, piece in enumerate(pieces):
            count = 0
            for offset in range(piece.offset, piece.offset + piece.length, self.block):
                length = min(self.block, piece.offset + piece.length - offset)
                self.block_start.append(offset)
                self.block_len.append(length)
                self.block_piece.append(position)
                self.written.append(length if piece.done else 0)
                count += 1
            self.missing_blocks.append(0 if piece.done else count)
            self.state.append("done" if piece.done else "todo")
            if not piece.done:
                self.undispatched += piece.length
        self.cursor = 0
        self.head = 0
        self.open_pieces = 0
        self.spans = 0

    @property
    def missing(self) -> int:
        return sum(1 for state in self.state if state != "done")

    def frontier(self) -> int:
        """Return the end of the contiguous written prefix (call under ``cond``)."""
        count = len(self.block_len)
        while self.head < count and self.written[self.head] >= self.block_len[self.head]:
            self.head += 1
        if self.head >= count:
            return self.size
        return self.block_start[self.head] + self.written[self.head]

    def take(self) -> tuple[_Span, bool] | None:
        """Return the next span to fetch and whether it starts its piece, or None when all is handed
        out (or the run stops). Wait while ``connections`` pieces are open."""
        with self.cond:
            while not self.stop.is_set():
                count = len(self.block_len)
                while self.cursor < count and self.state[self.block_piece[self.cursor]] == "done":
                    self.cursor += 1
                if self.cursor >= count:
                    return None
                position = self.block_piece[self.cursor]
                starts = self.state[position] == "todo"
                if starts and self.open_pieces >= self.connections:
                    self.cond.wait(0.5)
                    continue
                piece = self.pieces[position]
                piece_end = piece.offset + piece.length
                # Spans grow from one block (so there is something to hash at once) to half of what
                # each connection has left, and shrink again towards the end.
                share = self.undispatched // (2 * self.connections)
                ramp = 2 ** min(16, self.spans // self.connections)
                blocks = max(1, min(ramp, -(-share // self.block)))
                if self.one_range:
                    blocks = count  # every location serves one request: make it the rest of the piece
                last = self.cursor
                while last < count and self.block_piece[last] == position and last - self.cursor < blocks:
                    last += 1
                span = _Span(position, self.cursor, last, self.cursor)
                self.spans += 1
                self.undispatched -= (
                    min(self.block_start[last - 1] + self.block_len[last - 1], piece_end)
                    - (self.block_start[self.cursor])
                )
                self.cursor = last
                if starts:
                    self.state[position] = "open"
                    self.open_pieces += 1
                return span, starts
            return None

    def position(self, span: _Span) -> int:
        """Return the file offset the span resumes at (call under ``cond``)."""
        return self.block_start[span.current] + self.written[span.current]

    def end(self, span: _Span) -> int:
        return self.block_start[span.last - 1] + self.block_len[span.last - 1]

    def advance(self, span: _Span, offset: int, length: int) -> None:
        """Record *length* bytes written at *offset* by *span* (they continue its written part)."""
        with self.cond:
            moved = span.current == self.head
            while length > 0:
                block = span.current
                take = min(length, self.block_len[block] - self.written[block])
                self.written[block] += take
                length -= take
                if self.written[block] == self.block_len[block]:
                    self.missing_blocks[span.piece] -= 1
                    span.current += 1
                    moved = True
            if moved:
                self.cond.notify_all()

    def closing(self, span: _Span) -> bool:
        """Return True if the span's piece is now wholly written and this caller must record it."""
        with self.cond:
            if self.missing_blocks[span.piece] == 0 and self.state[span.piece] == "open":
                self.state[span.piece] = "closing"
                return True
            return False

    def recorded(self, span: _Span) -> None:
        with self.cond:
            self.state[span.piece] = "done"
            self.open_pieces -= 1
            self.cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            self.errors.append(exc)
            self.stop.set()
            self.cond.notify_all()


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
        self._digests: dict[int, _Digest] = {}
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
            digest = _Digest(partial.stat().st_size, hashed.sha256, hashed.sha1, hashed.git_blob_id)
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

    def _refused(self, run: _Run, lease: _Lease, location: _Location, reason: RangeError) -> None:
        """Replace a refused location (expired, revoked, or asked for a range it was not signed for):
        once for the run however many workers saw it, or only for this worker once the run uses one
        location per request. Switch to that after the CDN says a URL serves one range, or after
        ONE_RANGE_AFTER fresh locations in a row were refused; give up after MAX_FRESH_REFUSALS more."""
        job = run.job
        with run.refresh_lock:
            if location is lease.location:
                lease.location = None
            elif run.location.generation != location.generation:
                return  # another worker has replaced it already
            run.fresh_refusals = 0 if location.good else run.fresh_refusals + 1
            says_one_range = isinstance(reason, LocationRefused) and INVALID_RANGE in reason.body.lower()
            if not run.one_range and (says_one_range or run.fresh_refusals >= ONE_RANGE_AFTER):
                run.one_range, run.fresh_refusals = True, 0
                # Refusals of the run's location still in flight are no longer news.
                run.location = _Location(run.location.url, run.location.generation + 1, run.location.xet)
                if says_one_range:
                    self._one_range_origins.add(origin_of(location.url))
                job.log.warning(
                    "the CDN refused its signed locations (%s); from now on one fresh location per "
                    "request, each request the rest of a piece",
                    reason,
                )
                return
            if run.fresh_refusals >= MAX_FRESH_REFUSALS:
                raise self._refused_for_good(run, location, reason)
            if run.one_range:
                return  # the worker fetches its own next location
            job.log.info("fetching a fresh signed location (%s)", reason)
            meta = self._metadata(job)
            run.location = _Location(meta.location, location.generation + 1, meta.xet)

    def _location_for(self, run: _Run, lease: _Lease) -> _Location:
        """Return the location a worker's next request goes to: the run's, or a fresh one of its own
        for each request once the run uses one location per request."""
        if not run.one_range:
            return run.location
        if lease.location is None or lease.location.used:
            meta = self._metadata(run.job)
            lease.location = _Location(meta.location, run.location.generation, meta.xet)
        return lease.location

    def _refused_for_good(self, run: _Run, location: _Location, reason: RangeError) -> HopError:
        if location.xet:
            return Permanent(
                f"{run.job.file_or_fail.path} is served only through Xet: plain HTTP downloads of it are "
                f"refused ({reason}). relayd downloads over HTTP Range only",
                hint="exclude the file from the repo's globs, or fetch it with `hf download` (hf_xet) "
                "outside relayd",
                error_class=ErrorClass.XET,
            )
        return Retryable(
            f"{MAX_FRESH_REFUSALS} fresh signed locations in a row were refused ({reason})",
            error_class=ErrorClass.UPSTREAM,
        )

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
            run = _Run(job, fd, partial, file.size, pieces, self.section.connections)
            if meta is not None:
                run.location = _Location(meta.location, 0, meta.xet)
                run.one_range = origin_of(meta.location) in self._one_range_origins
            digest = self._run(run, git_blob=not file.lfs)
        finally:
            os.close(fd)
        if digest is not None:
            self._digests[job.id] = digest

    def _run(self, run: _Run, *, git_blob: bool) -> _Digest | None:
        """Fetch the queued pieces over the configured connections while hashing the written prefix;
        return the digest of the whole file, or raise the first failure."""
        job = run.job
        missing = run.missing
        connections = min(run.connections, -(-run.undispatched // run.block)) if missing else 0
        if missing:
            job.log.info(
                "downloading %d of %d pieces over %d connection(s)", missing, len(run.pieces), connections
            )
        hasher = PrefixHasher(run.size, git_blob=git_blob)
        hash_thread = threading.Thread(
            target=self._hash_loop, args=(run, hasher), name=f"relayd-hash-{job.id}", daemon=True
        )
        hash_thread.start()
        workers = [
            threading.Thread(target=self._worker, args=(run,), name=f"relayd-get-{job.id}-{n}", daemon=True)
            for n in range(connections)
        ]
        started = time.monotonic()
        try:
            for worker in workers:
                worker.start()
            for worker in workers:
                while worker.is_alive():
                    worker.join(0.2)
                    if job.cancelled:
                        run.stop.set()
            with run.cond:
                run.workers_done = True
                run.cond.notify_all()
            received = time.monotonic()
            hash_thread.join()
            job.log.debug(
                "pieces received in %.2fs; hashing ended %.2fs later",
                received - started,
                time.monotonic() - received,
            )
        finally:
            run.stop.set()
            with run.cond:
                run.cond.notify_all()
            hash_thread.join()
            hasher.close()
        if run.errors:
            raise _first(run.errors)
        job.check_cancelled()
        if hasher.offset != run.size:
            raise Retryable(
                f"hashed {hasher.offset} of {run.size} bytes; trying again", error_class=ErrorClass.INTERNAL
            )
        return _Digest(run.size, hasher.sha256, hasher.sha1, hasher.git_blob_id)

    def _hash_loop(self, run: _Run, hasher: PrefixHasher) -> None:
        """Hash the contiguous written prefix as it grows, a bounded window at a time, straight from
        the page cache (mmap: no copy), or with pread where the filesystem cannot map files."""
        try:
            fd = os.open(run.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            run.fail(exc)
            return
        reader = _WindowReader(fd, run.path)
        try:
            while hasher.offset < run.size:
                with run.cond:
                    while True:
                        if run.stop.is_set():
                            return
                        target = run.frontier()
                        ready = target - hasher.offset
                        if ready >= HASH_WINDOW or (ready > 0 and (run.workers_done or target == run.size)):
                            break
                        if run.workers_done:
                            return
                        run.cond.wait(0.5)
                while hasher.offset < target:
                    reader.feed(hasher, min(target, hasher.offset + HASH_WINDOW))
        except Exception as exc:  # noqa: BLE001 - any failure is handed to the run, which re-raises it
            run.fail(exc)
        finally:
            os.close(fd)

    def _worker(self, run: _Run) -> None:
        section = self.section
        client = RangeClient(
            connect_timeout=section.timeout,
            stall_timeout=section.stall_timeout,
            buffer_size=RECEIVE_BUFFER,
            authorize=self.hub.authorization_for,
            on_answer=self.hub.note_answer,
            ssl_context=client_context(str(section.ca_bundle) if section.ca_bundle else None),
            proxy=section.proxy,
        )
        lease = _Lease()
        try:
            while not run.stop.is_set():
                taken = run.take()
                if taken is None:
                    return
                span, starts = taken
                if starts:
                    run.job.begin_piece(run.pieces[span.piece].index)
                self._fetch_span(run, client, span, lease)
                if run.closing(span):
                    os.fdatasync(run.fd)
                    with run.record_lock:
                        run.job.piece_done(run.pieces[span.piece].index)
                    run.recorded(span)
        except Stopped:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the run, which re-raises it
            run.fail(exc)
        finally:
            client.close()

    def _fetch_span(self, run: _Run, client: RangeClient, span: _Span, lease: _Lease) -> None:
        """Fetch one span of blocks, resuming from its last written byte after a failure."""
        job = run.job
        piece = run.pieces[span.piece]
        end = run.end(span)
        failures = rate_limits = 0

        def write(offset: int, data: memoryview) -> None:
            view, at = data, offset
            while view:
                written = os.pwrite(run.fd, view, at)
                view, at = view[written:], at + written
            run.advance(span, offset, len(data))
            job.add_progress(len(data), piece.index)

        while True:
            with run.cond:
                start = run.position(span) if span.current < span.last else end
            if start >= end:
                return
            location = self._location_for(run, lease)
            self.hub.spend_for(location.url)
            try:
                location.used = True
                client.fetch(location.url, start, end, run.size, write, stop=run.stop)
                location.good = True
                if run.one_range:
                    with run.refresh_lock:
                        run.fresh_refusals = 0
                continue
            except Stopped:
                raise
            except RateLimited as exc:
                rate_limits += 1
                wait = exc.retry_after if exc.retry_after is not None else min(60.0, 2.0**rate_limits)
                if wait > MAX_INLINE_WAIT or rate_limits > MAX_RATE_LIMITS:
                    raise Retryable(
                        f"the CDN rate-limits the download of {job.file_or_fail.path} ({exc})",
                        retry_after=wait,
                        error_class=ErrorClass.RATE_LIMIT,
                    ) from exc
                job.log.info("piece %d: %s; waiting %.0fs", piece.index, exc, wait)
                self._sleep(run, wait)
                continue
            except Untrusted as exc:
                raise NeedsPerson(
                    str(exc),
                    hint="if the certificate is right (a private CA, or a TLS-inspecting proxy's), trust "
                    "its CA with hub.ca_bundle (a PEM file), SSL_CERT_FILE or the system's store "
                    "(update-ca-certificates); otherwise something intercepts TLS: check hub.proxy and "
                    "the network, then `relayctl retry`",
                    error_class=ErrorClass.TLS,
                ) from exc
            except (LocationRefused, RangeNotSatisfiable) as exc:
                if exc.received:
                    location.good = True
                self._refused(run, lease, location, exc)
                continue
            except RangeError as exc:
                failures = 1 if exc.received else failures + 1
                if failures > MAX_PIECE_FAILURES:
                    raise Retryable(
                        f"piece {piece.index} of {job.file_or_fail.path} failed {failures - 1} times "
                        f"in a row without progress: {exc}",
                        error_class=ErrorClass.NETWORK,
                    ) from exc
                delay = min(10.0, 0.1 * 2**failures)
                job.log.info("piece %d: %s; retrying from byte %d", piece.index, exc, start + exc.received)
                self._sleep(run, delay)

    @staticmethod
    def _sleep(run: _Run, seconds: float) -> None:
        if run.stop.wait(seconds):
            raise Stopped("stopped while waiting")

    # -- verification ------------------------------------------------------------------------------

    @staticmethod
    def _matches(job: Job, digest: _Digest) -> bool:
        file = job.file_or_fail
        if digest.size != file.size:
            return False
        if file.lfs:
            return digest.sha256 == file.sha256
        if file.git_blob_id and digest.git_blob_id != file.git_blob_id:
            return False
        return not file.sha256 or digest.sha256 == file.sha256

    def _mismatch(self, job: Job, partial: Path, digest: _Digest) -> NoReturn:
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


class _WindowReader:
    """Feed a hasher the bytes of a file up to an offset, through a short-lived read-only mapping
    of at most HASH_WINDOW bytes (so RSS stays bounded), or through pread when mapping fails."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self.buffer: memoryview | None = None

    def feed(self, hasher: PrefixHasher, end: int) -> None:
        start = hasher.offset
        if self.buffer is None:
            base = start - start % mmap.ALLOCATIONGRANULARITY
            try:
                window = mmap.mmap(
                    self.fd,
                    end - base,
                    flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                    prot=mmap.PROT_READ,
                    offset=base,
                )
            except OSError:
                log.debug("%s cannot be mapped; hashing it through pread", self.path)
                self.buffer = memoryview(bytearray(HASH_WINDOW))
            else:
                with window, memoryview(window) as view, view[start - base :] as part:
                    hasher.update(part)
                return
        got = os.preadv(self.fd, [self.buffer[: end - start]], start)
        if got <= 0:
            raise OSError(errno.EIO, f"{self.path} is shorter than its written prefix")
        hasher.update(self.buffer[:got])


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


def _first(errors: Sequence[BaseException]) -> BaseException:
    """Return the error that explains a failed run best: a full disk or a person's job first."""
    for exc in errors:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
    for kind in (NeedsPerson, Permanent):
        for exc in errors:
            if isinstance(exc, kind):
                return exc
    return errors[0]
