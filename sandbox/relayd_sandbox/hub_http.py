"""What the fake Hub's two origins (the Hub and its CDN) share: a server that can drop its open
connections, and a request handler with HTTP/1.1 keep-alive, the request log, injected faults and the
strict Range rules, sending blobs with ``os.sendfile`` unless a fault or a bandwidth cap says otherwise.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from relayd_sandbox._http import LoggedRequest, LoopbackServer, RequestLog, send_range
from relayd_sandbox.hub_faults import FaultKind, FaultRule, Where
from relayd_sandbox.hub_store import Blob

if TYPE_CHECKING:
    from relayd_sandbox.hub import FakeHub

logger = logging.getLogger(__name__)

_SENDFILE_CHUNK = 16 * 1024 * 1024
_SLOW_CHUNK = 256 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(value: str, total: int) -> tuple[int, int] | None:
    """Return the inclusive (first, last) byte span a single ``Range`` asks of *total* bytes, or None
    when it is malformed or unsatisfiable (the caller answers 416).

    Accepts ``bytes=a-b`` (b clamped to the end), ``bytes=a-`` and ``bytes=-n``; a list of ranges
    is refused, as relayd never needs one.
    """
    match = _RANGE.fullmatch(value.strip())
    if match is None or total <= 0:
        return None
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0:
            return None
        return max(0, total - int(last)), total - 1
    start = int(first)
    end = int(last) if last else total - 1
    if end < start or start >= total:
        return None
    return start, min(end, total - 1)


def xet_hash_of(sha256: str) -> str:
    """Return the Xet hash this fake gives the content *sha256* (``X-Xet-Hash``, ``xetHash``, the CDN's
    ETag)."""
    return hashlib.sha256(b"xet:" + bytes.fromhex(sha256)).hexdigest()


class OriginServer(LoopbackServer):
    """A LoopbackServer that knows its FakeHub and its open connections (to drop them on stop)."""

    def __init__(
        self,
        hub: FakeHub,
        handler_class: type[BaseHTTPRequestHandler],
        log: RequestLog,
        port: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(handler_class, port, tls)
        self.hub = hub
        self.log = log
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class OriginHandler(BaseHTTPRequestHandler, abc.ABC):
    """What both origins share: HTTP/1.1 keep-alive, the request log, faults and serving blobs."""

    protocol_version = "HTTP/1.1"

    _status = 0
    _logged = False
    _target = ""
    _query: dict[str, list[str]]
    _body = b""
    _sent: set[str]

    @property
    def hub(self) -> FakeHub:
        return self._server.hub

    @property
    def _server(self) -> OriginServer:
        server = self.server
        if not isinstance(server, OriginServer):
            raise TypeError("fake hub handlers run only under the fake hub's servers")
        return server

    def setup(self) -> None:
        super().setup()
        self._sent = set()  # also for answers the base class sends before _handle (send_error)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        message = format % args
        logger.debug("%s: %s", self.address_string(), message)

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_GET
    do_POST = do_GET
    do_PUT = do_GET
    do_DELETE = do_GET

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def end_headers(self) -> None:
        self._record()  # before the client can see the response, so tests never race the log
        super().end_headers()

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() in {name.lower() for name in self.hub.suppressed_headers}:
            return
        self._sent.add(keyword.lower())
        super().send_header(keyword, value)

    @abc.abstractmethod
    def _route(self, path: str) -> None:
        """Answer the request for the (still percent-encoded) *path*."""

    @abc.abstractmethod
    def _throttled(self, rule: FaultRule) -> None:
        """Answer 429 as this origin does, for an injected RATE_LIMIT fault."""

    def _handle(self) -> None:
        self._status = 0
        self._logged = False
        self._sent = set()
        length = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        self._query = parse_qs(split.query, keep_blank_values=True)
        self._target = unquote(self.path)
        try:
            self._route(split.path)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, ssl.SSLEOFError) as exc:
            logger.debug("client left during %s %s: %s", self.command, self.path, exc)
            self.close_connection = True
        except Exception:
            logger.exception("fake hub failed on %s %s", self.command, self.path)
            if self._status == 0:
                self._reply(500, b'{"error": "fake hub internal error"}')
            else:
                self.close_connection = True
        finally:
            self._record()

    def _record(self) -> None:
        """Add this request to its origin's log, once (status 0 if it got no status line)."""
        if not self._logged:
            self._logged = True
            entry = LoggedRequest(self.command, self.path, dict(self.headers.items()), self._status)
            self._server.log.add(entry)

    # -- replies ------------------------------------------------------------------------------------

    def _reply(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json; charset=utf-8",
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _reset_connection(self) -> None:
        """Drop the connection with a TCP RST, as a crashing proxy or a flaky link would."""
        self._record()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.wfile.close()
            self.connection.close()

    def _early_faults(self, where: Where) -> bool:
        """Apply the faults that replace a whole response; return True if one did."""
        faults = self.hub.faults
        if faults.take(FaultKind.RESET, where, self._target, accept=lambda rule: rule.after is None):
            self._reset_connection()
            return True
        limited = faults.take(FaultKind.RATE_LIMIT, where, self._target)
        if limited is not None:
            self._throttled(limited)
            return True
        failed = faults.take(FaultKind.SERVER_ERROR, where, self._target)
        if failed is not None:
            self._reply(
                failed.status,
                json.dumps({"error": "Internal Error - We're working hard to fix this"}).encode(),
            )
            return True
        return False

    def _serve_content(self, where: Where, blob: Blob, headers: Mapping[str, str]) -> None:
        """Answer with *blob*'s bytes under the strict Range rules, then any body fault."""
        faults = self.hub.faults
        total = blob.size
        requested = self.headers.get("Range")
        if requested is not None and faults.take(FaultKind.STALE_RANGE, where, self._target):
            self._reply_416(total, headers)
            return
        if requested is not None and faults.take(FaultKind.IGNORE_RANGE, where, self._target):
            requested = None
        if requested is not None:
            span = parse_range(requested, total)
            if span is None:
                self._reply_416(total, headers)
                return
            start, end = span
        else:
            start, end = 0, total - 1
        length = end - start + 1
        self.send_response(206 if requested is not None else 200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        if requested is not None:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return
        self._send_body(where, blob, start, length)

    def _reply_416(self, total: int, headers: Mapping[str, str]) -> None:
        self._reply(
            416,
            b"Requested Range Not Satisfiable",
            {**headers, "Content-Range": f"bytes */{total}"},
            content_type="text/plain; charset=utf-8",
        )

    def _send_body(self, where: Where, blob: Blob, start: int, length: int) -> None:
        faults = self.hub.faults
        target = self._target
        stop = start + length
        cut = faults.take(FaultKind.TRUNCATE, where, target)
        reset = faults.take(FaultKind.RESET, where, target, accept=lambda rule: rule.after is not None)
        flip = faults.take(
            FaultKind.FLIP, where, target, accept=lambda rule: rule.at is None or start <= rule.at < stop
        )
        stall = faults.take(FaultKind.STALL, where, target)
        limit = length
        for rule in (cut, reset):
            if rule is not None and rule.after is not None:
                limit = min(limit, rule.after)
        with blob.path.open("rb") as source:
            if (
                cut is None
                and reset is None
                and flip is None
                and stall is None
                and self.hub.bandwidth_cap is None
            ):
                self._sendfile(source, blob.sha256, start, length)
                return
            flip_at = None if flip is None else (flip.at if flip.at is not None else start)
            self._send_slowly(
                source=source, sha256=blob.sha256, start=start, limit=limit, flip_at=flip_at, stall=stall
            )
        if reset is not None and (cut is None or (reset.after or 0) <= (cut.after or 0)):
            self._reset_connection()
        elif limit < length:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_WR)

    def _sendfile(self, source: BinaryIO, sha256: str, offset: int, length: int) -> None:
        while length > 0:
            chunk = min(length, _SENDFILE_CHUNK)
            self.hub._count(sha256, chunk)  # counted before the client can have it; undone below
            try:
                sent = send_range(self.connection, source.fileno(), offset, chunk)
            except OSError:
                self.hub._count(sha256, -chunk)
                raise
            self.hub._count(sha256, sent - chunk)
            if sent == 0:
                raise ConnectionError(f"blob {sha256} is shorter than announced")
            offset += sent
            length -= sent

    def _send_slowly(
        self,
        *,
        source: BinaryIO,
        sha256: str,
        start: int,
        limit: int,
        flip_at: int | None,
        stall: FaultRule | None,
    ) -> None:
        """Send *limit* bytes from *start*, chunk by chunk: paced to the bandwidth cap read before
        every chunk, one byte inverted at *flip_at*, and a stall after ``stall.after`` bytes."""
        if stall is not None and (stall.after or 0) > limit:
            stall = None  # this body ends before the stall point
        position = 0
        paced_since, paced_bytes, paced_cap = time.monotonic(), 0, self.hub.bandwidth_cap
        while position < limit or (stall is not None and position == limit):
            if stall is not None and position >= (stall.after or 0):
                stall.wait_released()
                stall = None
                paced_since, paced_bytes = time.monotonic(), 0
                continue
            cap = self.hub.bandwidth_cap
            if cap != paced_cap:
                paced_since, paced_bytes, paced_cap = time.monotonic(), 0, cap
            size = min(_SLOW_CHUNK, limit - position)
            if cap:
                size = min(size, max(4096, int(cap / 20)))
            if stall is not None:
                size = min(size, (stall.after or 0) - position)
            data = os.pread(source.fileno(), size, start + position)
            if not data:
                raise ConnectionError(f"blob {sha256} is shorter than announced")
            if flip_at is not None and start + position <= flip_at < start + position + len(data):
                changed = bytearray(data)
                changed[flip_at - start - position] ^= 0xFF
                data = bytes(changed)
            self.hub._count(sha256, len(data))
            try:
                self.wfile.write(data)
            except OSError:
                self.hub._count(sha256, -len(data))
                raise
            position += len(data)
            if cap:
                paced_bytes += len(data)
                ahead = paced_bytes / cap - (time.monotonic() - paced_since)
                if ahead > 0:
                    time.sleep(ahead)
