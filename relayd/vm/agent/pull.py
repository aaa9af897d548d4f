"""``pull``: ranged, resumable, verified downloads written on the VM (the vm_pull hop's transfer).

``pull`` fetches the missing pieces of a file from a signed download URL (in the secrets) into
``<target>.relayd-partial`` with positional writes, over several keep-alive connections; a piece is
reported (``piece_done``) only after it is fsynced. Every answer is checked: 206 with the exact
``Content-Range`` and length, 200 (Range ignored) is retried, 416 and a size mismatch are reported.
A 403 is read by its body (at most ERROR_BODY_LIMIT bytes of it): the drive's download cap
(``ExceedMaxConcurrency``) ends this connection while others still work, else backs off
(``rate_limit``: the daemon keeps its link); ``Request has expired.`` is an expired link
(``url_expired``: the daemon asks the drive for a new one); anything else (a Referer the drive does
not accept) is ``download_refused``. While pieces arrive, a hasher thread (files.py)
computes sha256 and sha1 over the growing contiguous prefix, so when the last piece lands the whole
file is already hashed; if it matches the expected sha256, the file is renamed into place.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import re
import socket
import ssl
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from .core import AgentError, Cancelled, Context, op
from .files import (
    PARTIAL_SUFFIX,
    Piece,
    PrefixHasher,
    as_pieces,
    check_space,
    finalize,
    hash_file,
    open_partial,
    resolve_target,
)
from .proxy import agent_route, client_context

CHUNK = 1024 * 1024
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
    plan = as_pieces(params["plan"])
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
    fd = open_partial(partial, size, fresh)
    try:
        check_space(partial, sum(piece[2] for piece in missing))
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
            finalize(fd, partial, target)
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
