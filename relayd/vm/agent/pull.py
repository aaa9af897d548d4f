"""Operations of the vm_pull hop: ranged, resumable, verified downloads written on the VM.

``pull`` fetches the missing pieces of a file from a signed download URL (in the secrets) into
``<target>.relayd-partial`` with positional writes, over several keep-alive connections; a piece is
reported (``piece_done``) only after it is fsynced. Every answer is checked: 206 with the exact
``Content-Range`` and length, 200 (Range ignored) is retried, 416 and a size mismatch are reported.
A 403 is read by its body (at most ERROR_BODY_LIMIT bytes of it): the drive's download cap
(``ExceedMaxConcurrency``) ends this connection while others still work, else backs off
(``rate_limit``: the daemon keeps its link); ``Request has expired.`` is an expired link
(``url_expired``: the daemon asks the drive for a new one); anything else (a Referer the drive does
not accept) is ``download_refused``. While pieces arrive, a hasher thread
computes sha256 and sha1 over the growing contiguous prefix, so when the last piece lands the whole
file is already hashed; if it matches the expected sha256, the file is renamed into place.

``pull_finish`` hashes the partial (or an already renamed target) and renames it; ``piece_hashes``
hashes given ranges (to find bad pieces against a known-good copy); ``place_file`` takes a file that
is already on this machine (hard link, else a copy piece by piece), verified the same way.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import random
import re
import socket
import ssl
import threading
import time
from collections import deque
from typing import Any, Tuple
from urllib.parse import urlsplit

from .core import AgentError, Cancelled, Context, op
from .proxy import agent_route, client_context

PARTIAL_SUFFIX = ".relayd-partial"
CHUNK = 1024 * 1024
HASH_CHUNK = 8 * 1024 * 1024
MAX_TRIES = 8  # per piece, for transient failures (network, 5xx, Range ignored)
# Per piece on the download cap with no other connection left: the slots belong to other downloads
# that may run for hours, so the daemon's backoff does the long waiting (and shows why).
CAP_TRIES = 3
EXPIRY_MARGIN = 30.0  # stop using a URL this many seconds before it expires
PROGRESS_EVERY = 0.25
ERROR_BODY_LIMIT = 4096  # most bytes of an error answer read (OSS errors are well under 1 KiB)
# The OSS data host's answers past Aliyun's concurrent-download cap and for an expired link
# (AlistGo/alist#7258; Aliyun's Android SDK treats a 403 as expired only with this message),
# compared without case and whitespace.
CAP_MARKERS = ("exceedmaxconcurrency", "0007-00000209")
EXPIRED_MARKER = "requesthasexpired."
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_XML_FIELD = re.compile(r"<(Code|Message|EC)>([^<]{0,200})</", re.IGNORECASE)

Piece = Tuple[int, int, int]  # index, offset, length


# -- paths ----------------------------------------------------------------------------------------


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


def _check_space(path: str, needed: int) -> None:
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


def _pieces(raw: list[Any]) -> list[Piece]:
    return [(int(item[0]), int(item[1]), int(item[2])) for item in raw]


# -- hashing --------------------------------------------------------------------------------------


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


# -- HTTP -----------------------------------------------------------------------------------------


class _Retry(Exception):
    """A transient failure of one piece: try it again after *delay* seconds."""

    def __init__(self, message: str, error_class: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.delay = delay


class _Abandon(Exception):
    """Stop this piece now (cancel, or another connection failed for good)."""


def _error_text(body: bytes) -> str:
    """Return the service's error Code, Message and EC from an XML or text body (never the URL)."""
    text = body[:ERROR_BODY_LIMIT].decode("utf-8", "replace")
    fields = dict((name.lower(), value.strip()) for name, value in _XML_FIELD.findall(text))
    if fields:
        found = [fields.get("code"), fields.get("message")]
        if fields.get("ec"):
            found.append("EC " + fields["ec"])
        return ": ".join(v for v in found if v)
    return " ".join(text.split())[:200]


def _refusal(text: str) -> Exception:
    """Return what a download 403 means, from its error text: the drive's download cap (a _Retry of
    class rate_limit), an expired link (url_expired), or a refusal of this request as sent
    (download_refused: the Referer, most likely)."""
    squeezed = "".join(text.lower().split())
    if any(marker in squeezed for marker in CAP_MARKERS):
        return _Retry("the drive refused another parallel download (403 %s)" % text, "rate_limit")
    if EXPIRED_MARKER in squeezed:
        return AgentError("the download link expired (403 %s)" % text, error_class="url_expired")
    return AgentError("the drive refused the download (403 %s)" % text, error_class="download_refused")


class _Link:
    """One keep-alive connection to the download host."""

    def __init__(
        self, url: str, headers: dict[str, str], timeout: float, proxy: str = "", ca_pem: str = ""
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AgentError("the download URL is not http(s)", kind="permanent", error_class="url")
        self.route = agent_route(url, proxy, "vm.proxy")
        self.target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        self.headers = dict(headers)
        self.timeout = timeout
        self.ca_pem = ca_pem
        self.conn: http.client.HTTPConnection | None = None

    def open(self) -> http.client.HTTPConnection:
        if self.conn is None:
            trusted = self.ca_pem and self.route.scheme == "https"
            context = client_context(cadata=self.ca_pem) if trusted else None
            self.conn = self.route.connection(self.timeout, context)
        return self.conn

    def get(self, headers: dict[str, str]) -> http.client.HTTPResponse:
        """Send the GET and return the answer. A kept-alive connection that the other end closed
        meanwhile (a proxy may close after every answer without saying so) is opened again, once."""
        reused = self.conn is not None
        while True:
            conn = self.open()
            try:
                conn.request("GET", self.target, headers=headers)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if not reused:
                    raise
                reused = False

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
            self.conn = None


class _Pull:
    """The state of one ``pull`` operation: pieces to fetch, workers, the hasher, the first error."""

    def __init__(
        self,
        params: dict[str, Any],
        url: str,
        context: Context,
        fd: int,
        hasher: PrefixHasher,
        proxy: str = "",
    ):
        self.context = context
        self.fd = fd
        self.hasher = hasher
        self.url = url
        self.proxy = proxy
        self.ca_pem = str(params.get("ca_pem") or "")
        self.size = int(params["size"])
        self.headers = dict(params.get("headers") or {})
        self.headers.setdefault("User-Agent", "relayd-agent/1")
        self.headers["Accept-Encoding"] = "identity"
        self.stall_timeout = float(params.get("stall_timeout") or 60)
        self.max_tries = int(params.get("max_tries") or MAX_TRIES)
        # Seconds the URL has left, applied to this machine's clock (the VM's may be skewed).
        expires_in = params.get("expires_in")
        self.expires_at = time.time() + float(expires_in) if expires_in is not None else None
        self.queue: deque[Piece] = deque()
        self.lock = threading.Lock()
        self.failed = threading.Event()
        self.error: BaseException | None = None
        self.fetched = 0
        self.active = 0

    def fail(self, error: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = error
        self.failed.set()

    def _retire(self, piece: Piece) -> bool:
        """The drive refuses another concurrent download: if other connections are still working,
        give the piece back and end this one (fewer connections, not a failure); return whether."""
        with self.lock:
            if self.active <= 1:
                return False
            self.active -= 1
            self.queue.appendleft(piece)
        self.context.emit("connection_dropped", index=piece[0], active=self.active, reason="cap")
        return True

    def next_piece(self) -> Piece | None:
        with self.lock:
            return self.queue.popleft() if self.queue and not self.failed.is_set() else None

    def worker(self) -> None:
        try:
            link = _Link(self.url, self.headers, self.stall_timeout, self.proxy, self.ca_pem)
        except AgentError as exc:  # an unusable URL or proxy: the whole pull fails with it
            self.fail(exc)
            return
        try:
            while True:
                piece = self.next_piece()
                if piece is None:
                    return
                self.fetch(link, piece)
                os.fdatasync(self.fd)
                self.context.emit("piece_done", index=piece[0])
                self.hasher.mark_done(piece[0])
                with self.lock:
                    self.fetched += 1
        except _Abandon:
            return
        except BaseException as exc:
            self.fail(exc)
        finally:
            link.close()

    def _check_running(self) -> None:
        if self.context.cancelled:
            self.fail(Cancelled("cancelled by the daemon"))
            raise _Abandon()
        if self.failed.is_set():
            raise _Abandon()

    def fetch(self, link: _Link, piece: Piece) -> None:
        index, offset, length = piece
        self.context.emit("piece_start", index=index)
        tries = 0
        while True:
            self._check_running()
            if self.expires_at is not None and time.time() > self.expires_at - EXPIRY_MARGIN:
                raise AgentError("the download URL expires now", error_class="url_expired")
            try:
                self._get(link, offset, length)
                return
            except _Retry as retry:
                link.close()
                if retry.error_class == "rate_limit" and self._retire(piece):
                    raise _Abandon() from None
                tries += 1
                limit = (
                    min(self.max_tries, CAP_TRIES) if retry.error_class == "rate_limit" else self.max_tries
                )
                if tries >= limit:
                    raise AgentError(
                        "piece %d failed %d times, last: %s" % (index, tries, retry),
                        error_class=retry.error_class,
                    ) from None
                delay = retry.delay if retry.delay is not None else min(30.0, 0.5 * 2 ** (tries - 1))
                delay *= 0.75 + random.random() / 2  # noqa: S311 - jitter
                self.context.emit("retry", index=index, reason=str(retry), delay=round(delay, 2))
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline:
                    self._check_running()
                    time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            except ssl.SSLCertVerificationError as exc:
                raise AgentError(
                    "the TLS certificate of the drive's download host is not trusted: %s"
                    % (exc.verify_message or exc.reason or exc),
                    kind="blocked",
                    error_class="tls",
                    hint="if it is right (a private CA, or a TLS-inspecting proxy's), trust its CA with "
                    "vm.ca_bundle (a PEM file on relayd's machine), or the VM's own store; otherwise "
                    "check vm.proxy and the VM's network, then `relayctl retry`",
                ) from None
            except (socket.timeout, TimeoutError):
                link.close()
                tries += 1
                if tries >= self.max_tries:
                    raise AgentError(
                        "piece %d stalled %d times (no data for %gs)" % (index, tries, self.stall_timeout),
                        error_class="stall",
                    ) from None
            except (OSError, http.client.HTTPException) as exc:
                link.close()
                tries += 1
                if tries >= self.max_tries:
                    raise AgentError(
                        "piece %d: the download connection failed %d times, last: %s: %s"
                        % (index, tries, type(exc).__name__, exc),
                        error_class="network",
                    ) from None
                time.sleep(min(10.0, 0.2 * 2**tries))

    def _get(self, link: _Link, offset: int, length: int) -> None:
        headers = dict(link.headers)
        headers["Range"] = "bytes=%d-%d" % (offset, offset + length - 1)
        response = link.get(headers)
        status = response.status
        if status == 206:
            self._check_range(response, offset, length)
            self._receive(response, offset, length)
            return
        if status == 200:
            raise _Retry("the drive ignored the Range header (200 instead of 206)", "range_ignored")
        # Read only the start of an error body; the connection is closed after it, never reused.
        text = _error_text(response.read(ERROR_BODY_LIMIT))
        if status == 416:
            raise AgentError(
                "the drive answered 416 for bytes %d-%d (%s)" % (offset, offset + length - 1, text),
                error_class="range_unsatisfiable",
            )
        if status == 403:
            raise _refusal(text)
        if status in (404, 410):
            raise AgentError(
                "the drive no longer has the file (%d %s)" % (status, text),
                kind="blocked",
                error_class="not_found",
                hint="upload it to the drive again (`relayctl retry` the repo's pan_upload)",
            )
        if status == 429 or status >= 500:
            retry_after = response.getheader("Retry-After")
            delay = float(retry_after) if retry_after and retry_after.isdigit() else None
            raise _Retry("the drive answered %d %s" % (status, text), "server", delay=delay)
        raise AgentError("the drive answered %d %s" % (status, text), error_class="server")

    def _check_range(self, response: http.client.HTTPResponse, offset: int, length: int) -> None:
        header = response.getheader("Content-Range") or ""
        match = _CONTENT_RANGE.match(header.strip())
        if match is None:
            raise _Retry("a 206 without a valid Content-Range (%r)" % header[:80], "range_ignored")
        first, last, total = match.groups()
        if total != "*" and int(total) != self.size:
            raise AgentError(
                "the drive's file is %s bytes, expected %d" % (total, self.size),
                kind="blocked",
                error_class="integrity",
                hint="the drive's copy differs from the source: upload it again (`relayctl retry`)",
            )
        if (int(first), int(last)) != (offset, offset + length - 1):
            raise _Retry(
                "the drive sent bytes %s-%s for %d-%d" % (first, last, offset, offset + length - 1), "range"
            )
        declared = response.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) != length:
            raise _Retry("Content-Length %s for a %d-byte range" % (declared, length), "range")

    def _receive(self, response: http.client.HTTPResponse, offset: int, length: int) -> None:
        buffer = bytearray(min(CHUNK, length))
        view = memoryview(buffer)
        position, end = offset, offset + length
        reported, last = 0, time.monotonic()
        while position < end:
            if self.context.cancelled or self.failed.is_set():
                self._check_running()
            count = response.readinto(view[: min(len(buffer), end - position)])
            if not count:
                raise _Retry("the connection closed %d bytes early" % (end - position), "network")
            written = 0
            while written < count:
                written += os.pwrite(self.fd, view[written:count], position + written)
            position += count
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                self.context.emit("progress", bytes=position - offset - reported, offset=offset)
                reported, last = position - offset, now
        if position - offset > reported:
            self.context.emit("progress", bytes=position - offset - reported, offset=offset)


def _open_partial(partial: str, size: int, fresh: bool) -> int:
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


def _finalize(fd: int, partial: str, target: str) -> None:
    os.fsync(fd)
    os.replace(partial, target)
    _fsync_dir(os.path.dirname(target))


@op("pull")
def pull(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Fetch the *missing* pieces of *plan* from ``secrets["url"]`` into the partial file; when every
    piece is there, hash the file and rename it into place if its sha256 is ``expected_sha256``.
    Connections go through ``secrets["proxy"]`` (vm.proxy) when given, else the VM's proxy variables.

    Return ``{"path", "sha256", "sha1", "renamed", "fetched"}``; sha256/sha1 are None when the file
    is not complete (a piece failed: then an error is raised instead).
    """
    url = secrets.get("url") or ""
    target = resolve_target(params["root"], params["relpath"])
    partial = target + PARTIAL_SUFFIX
    size = int(params["size"])
    plan = _pieces(params["plan"])
    missing_set = set(int(i) for i in params["missing"])
    fresh = bool(params.get("fresh"))
    missing = [piece for piece in plan if piece[0] in missing_set]
    if not fresh and not os.path.exists(partial) and os.path.isfile(target):
        # Renamed into place just before the daemon died (its last pieces unrecorded): check it.
        sha256, sha1, found = hash_file(target, context, bool(params.get("sha1", True)))
        if found == size and sha256 == params.get("expected_sha256"):
            for piece in missing:
                context.emit("piece_done", index=piece[0])
            return {"path": target, "sha256": sha256, "sha1": sha1, "renamed": True, "fetched": 0}
    fd = _open_partial(partial, size, fresh)
    try:
        _check_space(partial, sum(piece[2] for piece in missing))
        with_sha1 = bool(params.get("sha1", True))
        hasher = PrefixHasher(fd, plan, {p[0] for p in plan} - missing_set, context, with_sha1)
        hasher.start()
        state = _Pull(params, url, context, fd, hasher, proxy=secrets.get("proxy") or "")
        empty = [piece for piece in missing if piece[2] == 0]
        for piece in empty:  # an empty file has one empty piece: nothing to fetch
            context.emit("piece_start", index=piece[0])
            context.emit("piece_done", index=piece[0])
            hasher.mark_done(piece[0])
        state.queue.extend(piece for piece in missing if piece[2] > 0)
        connections = max(1, min(int(params.get("connections") or 2), len(state.queue)))
        workers = [
            threading.Thread(target=state.worker, name="relayd-agent-pull-%d" % n, daemon=True)
            for n in range(connections)
        ]
        state.active = connections
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if state.error is not None:
            hasher.stop()
            raise state.error
        context.check_cancelled()
        sha256, sha1 = hasher.finish()
        renamed = False
        if sha256 == params.get("expected_sha256"):
            _finalize(fd, partial, target)
            renamed = True
        return {
            "path": target,
            "sha256": sha256,
            "sha1": sha1,
            "renamed": renamed,
            "fetched": state.fetched,
        }
    finally:
        os.close(fd)


@op("pull_finish")
def pull_finish(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Hash the complete partial file (or the target, if a crash came after its rename) and rename
    it into place when its sha256 is ``expected_sha256``. Return ``{"path", "sha256", "sha1",
    "size", "renamed"}``; raise ``partial_lost`` when neither file is there."""
    target = resolve_target(params["root"], params["relpath"])
    partial = target + PARTIAL_SUFFIX
    expected = params.get("expected_sha256")
    source = partial if os.path.isfile(partial) else target
    if not os.path.isfile(source):
        raise AgentError("neither %s nor its partial file is on the VM" % target, error_class="partial_lost")
    sha256, sha1, size = hash_file(source, context, bool(params.get("sha1", True)))
    renamed = source == target
    if sha256 == expected and size == int(params["size"]) and source == partial:
        fd = os.open(partial, os.O_RDONLY)
        try:
            _finalize(fd, partial, target)
        finally:
            os.close(fd)
        renamed = True
    return {
        "path": target,
        "sha256": sha256,
        "sha1": sha1,
        "size": size,
        "renamed": renamed and sha256 == expected,
    }


@op("piece_hashes")
def piece_hashes(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Return the sha256 of each given piece of the partial file (or *path*): ``{"hashes": {i: hex}}``."""
    if params.get("path"):
        path = str(params["path"])
    else:
        path = resolve_target(params["root"], params["relpath"]) + PARTIAL_SUFFIX
    hashes = {}
    fd = os.open(path, os.O_RDONLY)
    try:
        for index, offset, length in _pieces(params["pieces"]):
            context.check_cancelled()
            digest = hashlib.sha256()
            position, end = offset, offset + length
            while position < end:
                data = os.pread(fd, min(HASH_CHUNK, end - position), position)
                if not data:
                    break
                digest.update(data)
                position += len(data)
            hashes[str(index)] = digest.hexdigest()
    finally:
        os.close(fd)
    return {"hashes": hashes}


@op("place_file")
def place_file(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Put a file already on this machine (``source``) at the target: a hard link when the
    filesystem allows it, else a copy of the missing pieces (each fsynced before ``piece_done``);
    verified by sha256 before the rename. Return ``{"path", "sha256", "sha1", "renamed", "method"}``."""
    source = str(params["source"])
    target = resolve_target(params["root"], params["relpath"])
    partial = target + PARTIAL_SUFFIX
    size = int(params["size"])
    plan = _pieces(params["plan"])
    missing_set = set(int(i) for i in params["missing"])
    if not os.path.isfile(source) or os.stat(source).st_size != size:
        raise AgentError("the staged copy %s is gone or changed" % source, error_class="staging")
    method = "copy"
    if bool(params.get("fresh")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        try:
            os.link(source, partial)
            method = "link"
        except OSError:
            method = "copy"
    if method == "link":
        sha256, sha1, _ = hash_file(partial, context, bool(params.get("sha1", True)))
        for index in sorted(missing_set):
            context.emit("piece_done", index=index)
    else:
        fd = _open_partial(partial, size, bool(params.get("fresh")))
        source_fd = os.open(source, os.O_RDONLY)
        try:
            _check_space(partial, size if params.get("fresh") else 0)
            hasher = PrefixHasher(
                fd, plan, {p[0] for p in plan} - missing_set, context, bool(params.get("sha1", True))
            )
            hasher.start()
            try:
                for index, offset, length in plan:
                    if index not in missing_set:
                        continue
                    if context.cancelled:
                        hasher.stop()
                        context.check_cancelled()
                    context.emit("piece_start", index=index)
                    position, end = offset, offset + length
                    while position < end:
                        data = os.pread(source_fd, min(HASH_CHUNK, end - position), position)
                        if not data:
                            raise AgentError("the staged copy ended early", error_class="staging")
                        os.pwrite(fd, data, position)
                        position += len(data)
                    os.fdatasync(fd)
                    context.emit("progress", bytes=length)
                    context.emit("piece_done", index=index)
                    hasher.mark_done(index)
                sha256, sha1 = hasher.finish()
            except BaseException:
                hasher.stop()
                raise
        finally:
            os.close(source_fd)
            os.close(fd)
    renamed = False
    if sha256 == params.get("expected_sha256"):
        fd = os.open(partial, os.O_RDONLY)
        try:
            _finalize(fd, partial, target)
        finally:
            os.close(fd)
        renamed = True
    return {"path": target, "sha256": sha256, "sha1": sha1, "renamed": renamed, "method": method}
