"""Moving the bytes of one download: ``hub.connections`` workers, each with its own keep-alive
connection (``relayd.http_ranges.RangeClient``), take spans of blocks from the run in file order and
write what arrives at its offset in the partial file; a piece is recorded only once fsynced. A hash
thread follows the contiguous written prefix, mapping it back from the page cache a window at a time.

A refused signed location (CloudFront's 403s, an expired URL, a 416) is replaced by a fresh one. Where
the CDN serves each signed URL for one range only ("403 Auth failed: invalid range"), or fresh
locations keep being refused, the run falls back to one fresh location per request, each request a
whole piece, before it gives up. A certificate this machine does not trust needs a person.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from relayd.config import HubConfig
from relayd.digest import PrefixHasher
from relayd.errors import ErrorClass, HopError, NeedsPerson, Permanent, Retryable
from relayd.hops.base import Job
from relayd.hops.download_run import HASH_WINDOW, Lease, Location, Run, Span
from relayd.http_ranges import (
    LocationRefused,
    Origin,
    ProxyUnusable,
    RangeClient,
    RangeError,
    RangeNotSatisfiable,
    RateLimited,
    Stopped,
    Untrusted,
    origin_of,
)
from relayd.vm.agent.proxy import client_context

if TYPE_CHECKING:
    from relayd.hub import FileMetadata, HubClient

log = logging.getLogger(__name__)

MiB = 1024 * 1024
RECEIVE_BUFFER = 256 * 1024  # per connection: a chunk still in the CPU's cache when it is written
MAX_PIECE_FAILURES = 6  # consecutive failed attempts at one piece without a byte of progress
MAX_FRESH_REFUSALS = 3  # fresh signed locations refused in a row before giving up
ONE_RANGE_AFTER = 2  # ... before trying one location per request instead (range-bound URLs)
INVALID_RANGE = "invalid range"  # the CDN's word for a URL asked for a range it was not signed for
MAX_INLINE_WAIT = 30.0  # a 429 asking for longer parks the transfer instead of holding connections
MAX_RATE_LIMITS = 10


@dataclass
class Digest:
    """What the hash thread measured of the whole partial file."""

    size: int
    sha256: str
    sha1: str
    git_blob_id: str | None


class Fetcher:
    """Fetch the missing pieces of one run over the configured connections while hashing the written
    prefix. *metadata* gives fresh file metadata (a new signed location) for a job; *one_range_origins*
    are the CDNs known to sign each URL for one range (kept by the hop across runs)."""

    def __init__(
        self,
        section: HubConfig,
        hub: HubClient,
        metadata: Callable[[Job], FileMetadata],
        one_range_origins: set[Origin],
    ) -> None:
        self.section = section
        self.hub = hub
        self._metadata = metadata
        self._one_range_origins = one_range_origins

    def run(self, run: Run, *, git_blob: bool) -> Digest | None:
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
            with run.lock:
                run.workers_done = True
                run.wake_all()
            received = time.monotonic()
            hash_thread.join()
            job.log.debug(
                "pieces received in %.2fs; hashing ended %.2fs later",
                received - started,
                time.monotonic() - received,
            )
        finally:
            run.stop.set()
            with run.lock:
                run.wake_all()
            hash_thread.join()
            hasher.close()
        if run.errors:
            raise first_error(run.errors)
        job.check_cancelled()
        if hasher.offset != run.size:
            raise Retryable(
                f"hashed {hasher.offset} of {run.size} bytes; trying again", error_class=ErrorClass.INTERNAL
            )
        return Digest(run.size, hasher.sha256, hasher.sha1, hasher.git_blob_id)

    def _hash_loop(self, run: Run, hasher: PrefixHasher) -> None:
        """Hash the contiguous written prefix as it grows, a bounded window at a time, straight from
        the page cache (mmap: no copy), or with pread where the filesystem cannot map files."""
        try:
            fd = os.open(run.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            run.fail(exc)
            return
        reader = WindowReader(fd, run.path)
        try:
            while hasher.offset < run.size:
                with run.lock:
                    while True:
                        if run.stop.is_set():
                            return
                        target = run.frontier()
                        ready = target - hasher.offset
                        if ready >= HASH_WINDOW or (ready > 0 and (run.workers_done or target == run.size)):
                            break
                        if run.workers_done:
                            return
                        run.hash_wanted = min(run.size, hasher.offset + HASH_WINDOW)
                        run.hashable.wait(0.5)
                while hasher.offset < target:
                    reader.feed(hasher, min(target, hasher.offset + HASH_WINDOW))
        except Exception as exc:  # noqa: BLE001 - any failure is handed to the run, which re-raises it
            run.fail(exc)
        finally:
            os.close(fd)

    def _worker(self, run: Run) -> None:
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
        lease = Lease()
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

    def _fetch_span(self, run: Run, client: RangeClient, span: Span, lease: Lease) -> None:
        """Fetch one span of blocks, resuming from its last written byte after a failure."""
        job = run.job
        piece = run.pieces[span.piece]
        end = run.end(span)
        failures = rate_limits = 0

        def write(offset: int, data: memoryview) -> None:
            view, at = data, offset
            with run.write_lock:
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
            except ProxyUnusable as exc:
                raise NeedsPerson(
                    str(exc),
                    hint="correct hub.proxy or the proxy variables (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, "
                    "NO_PROXY) as the error says, then `relayctl retry`",
                    error_class=ErrorClass.CONFIG,
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
    def _sleep(run: Run, seconds: float) -> None:
        if run.stop.wait(seconds):
            raise Stopped("stopped while waiting")

    def _refused(self, run: Run, lease: Lease, location: Location, reason: RangeError) -> None:
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
                run.location = Location(run.location.url, run.location.generation + 1, run.location.xet)
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
            run.location = Location(meta.location, location.generation + 1, meta.xet)

    def _location_for(self, run: Run, lease: Lease) -> Location:
        """Return the location a worker's next request goes to: the run's, or a fresh one of its own
        for each request once the run uses one location per request."""
        if not run.one_range:
            return run.location
        if lease.location is None or lease.location.used:
            meta = self._metadata(run.job)
            lease.location = Location(meta.location, run.location.generation, meta.xet)
        return lease.location

    def _refused_for_good(self, run: Run, location: Location, reason: RangeError) -> HopError:
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


class WindowReader:
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


def first_error(errors: Sequence[BaseException]) -> BaseException:
    """Return the error that explains a failed run best: a full disk or a person's job first."""
    for exc in errors:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
    for kind in (NeedsPerson, Permanent):
        for exc in errors:
            if isinstance(exc, kind):
                return exc
    return errors[0]
