"""The HTTP side of the fake Aliyun Drive: its two loopback servers (the API host and the data host for
the signed part-upload and download URLs) and the handler that answers both, as the real hosts do
(JSON errors on the API host, OSS-style XML on the data host), streaming bodies to and from disk at a
bandwidth that may change while they flow. The state it answers from is ``drive_store``'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from relayd_sandbox._http import LoggedRequest, LoopbackServer, send_range
from relayd_sandbox.drive_records import (
    DOWNLOAD_PREFIX,
    JSON,
    UPLOAD_PREFIX,
    ApiError,
    DownloadTicket,
    Injection,
    PutTicket,
)
from relayd_sandbox.drive_store import DriveStore

if TYPE_CHECKING:
    from relayd_sandbox.drive import FakeDrive

_log = logging.getLogger(__name__)

_CHUNK = 256 * 1024
_MAX_API_BODY = 8 * 1024 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_TEXT_KINDS = (("<html", "text/html"), ("<", "application/xml"), ("{", "application/json;charset=UTF-8"))


class _ClientGoneError(Exception):
    """The client closed the connection before sending the whole body."""


class DriveServer(LoopbackServer):
    """A LoopbackServer that knows its FakeDrive and role, and cuts its open connections on stop,
    so a stopped fake really stops answering (even on keep-alive connections)."""

    def __init__(self, fake: FakeDrive, role: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(_Handler, port, tls)
        self.fake = fake
        self.role = role
        self.live: set[socket.socket] = set()
        self.live_lock = threading.Lock()

    def stop(self) -> None:
        super().stop()
        with self.live_lock:
            live, self.live = self.live, set()
        for conn in live:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """One connection to either server; keeps HTTP/1.1 connections alive as real hosts do."""

    protocol_version = "HTTP/1.1"
    timeout = 60
    status_sent = 0
    recorded = False
    body_cut = False
    _body_sent = 0  # body bytes of the download being answered, sent so far

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle plus the client's
        # delayed ACK add ~40 ms to every keep-alive exchange.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._srv.live_lock:
            self._srv.live.add(self.connection)

    def finish(self) -> None:
        with self._srv.live_lock:
            self._srv.live.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    @property
    def _srv(self) -> DriveServer:
        return cast(DriveServer, self.server)

    @property
    def _store(self) -> DriveStore:
        return self._srv.fake.store

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s %s", self._srv.role, format % args)

    def send_response(self, code: int, message: str | None = None) -> None:
        self.status_sent = code
        # Logged before any byte of the answer leaves, so a client that has its answer always
        # finds its request in the log.
        self._record()
        super().send_response(code, message)

    def _record(self) -> None:
        if not self.recorded:
            self.recorded = True
            self._srv.fake.requests.add(
                LoggedRequest(self.command, self.path, dict(self.headers.items()), self.status_sent)
            )

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self.status_sent = 0
        self.recorded = False
        url = urlsplit(self.path)
        try:
            if self._srv.role == "api":
                self._api(url.path)
            elif self.command == "PUT" and url.path.startswith(UPLOAD_PREFIX + "/"):
                self._put(url.path, url.query)
            elif self.command in {"GET", "HEAD"} and url.path.startswith(DOWNLOAD_PREFIX + "/"):
                self._download(url.path, url.query)
            else:
                self._drain()
                self._send_error(ApiError(404, "NoSuchKey", "The specified key does not exist."))
        except (ConnectionError, TimeoutError, _ClientGoneError) as exc:
            _log.debug("%s %s: connection ended: %r", self.command, url.path, exc)
            self.close_connection = True
        finally:
            self._record()  # a dropped connection is logged with status 0

    # -- bodies -----------------------------------------------------------------------------

    def _body(self, stop_after: int | None = None, paced: bool = False) -> Iterator[bytes]:
        """Yield the request body (Content-Length or chunked), at most *stop_after* bytes of it,
        at ``settings.upload_bandwidth`` when *paced*."""
        self.body_cut = False
        budget = stop_after if stop_after is not None else -1
        pacer = _Pacer()
        seen = 0
        for piece in self._raw_body():
            if budget >= 0 and seen + len(piece) > budget:
                self.body_cut = True
                if budget > seen:
                    yield piece[: budget - seen]
                return
            seen += len(piece)
            yield piece
            if paced:
                pacer.pace(len(piece), self._store.settings.upload_bandwidth)

    def _raw_body(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise _ClientGoneError("chunked body cut short")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    data = self.rfile.read(min(_CHUNK, left))
                    if not data:
                        raise _ClientGoneError("chunked body cut short")
                    left -= len(data)
                    yield data
                self.rfile.readline(16)
        left = int(self.headers.get("Content-Length") or 0)
        while left:
            data = self.rfile.read(min(_CHUNK, left))
            if not data:
                raise _ClientGoneError(f"body cut short with {left} bytes to go")
            left -= len(data)
            yield data

    def _drain(self) -> None:
        """Read and discard the request body; on a PUT, its bytes still count as received."""
        for data in self._raw_body():
            if self.command == "PUT":
                self._store.count("put_bytes", len(data))

    def _drop(self) -> None:
        """Close the connection at once, without (the rest of) an answer."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- answers ----------------------------------------------------------------------------

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        if body or status not in {204, 304}:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-ca-request-id", os.urandom(8).hex())
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_text(self, status: int, text: str, headers: dict[str, str]) -> None:
        """Send *text* verbatim (an empty 429, a plain "Bad Gateway", an HTML page, a huge error) in
        chunks, counting the bytes the client took as ``injected_bytes_sent``."""
        body = text.encode()
        self.send_response(status)
        if body:
            head = text.lstrip().lower()
            kind = next((kind for prefix, kind in _TEXT_KINDS if head.startswith(prefix)), "text/plain")
            self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-ca-request-id", os.urandom(8).hex())
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        for start in range(0, len(body), _CHUNK):
            chunk = body[start : start + _CHUNK]
            self.wfile.write(chunk)
            self._store.count("injected_bytes_sent", len(chunk))

    def _send_json(self, status: int, payload: JSON | None, headers: dict[str, str] | None = None) -> None:
        body = (
            b""
            if payload is None
            else json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        )
        self._send(status, body, "application/json;charset=UTF-8", headers)

    def _send_error(self, error: ApiError) -> None:
        if self._srv.role == "api":
            payload = {"code": error.code, "message": error.message, "requestId": os.urandom(8).hex()}
            self._send_json(error.status, payload, error.headers)
            return
        extra = "".join(f"  <{name}>{escape(value)}</{name}>\n" for name, value in error.extra.items())
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n'
            f"  <Code>{escape(error.code)}</Code>\n  <Message>{escape(error.message)}</Message>\n"
            f"  <RequestId>{os.urandom(12).hex().upper()}</RequestId>\n"
            f"  <HostId>cn-beijing-data.aliyundrive.net</HostId>\n{extra}</Error>\n"
        )
        self._send(error.status, xml.encode(), "application/xml", error.headers)

    def _send_injected(self, injection: Injection) -> None:
        """Answer with an injected failure: a given body as-is, or the default error for its role."""
        headers = dict(injection.headers)
        if isinstance(injection.body, str):
            self._send_text(injection.status, injection.body, headers)
        elif isinstance(injection.body, dict):
            self._send_json(injection.status, injection.body, headers)
        else:
            self._send_error(ApiError(injection.status, injection.code, injection.message, headers))

    # -- the API host -----------------------------------------------------------------------

    def _api(self, path: str) -> None:
        raw = b"".join(self._body(stop_after=_MAX_API_BODY))
        if self.body_cut:
            self.close_connection = True
        injection = self._store.take_injection(path)
        if injection is not None:
            if injection.drop_after is not None:
                self._drop()
            else:
                self._send_injected(injection)
            return
        if self.command != "POST":
            self._send_error(ApiError(405, "MethodNotAllowed", f"{self.command} is not allowed here."))
            return
        try:
            status, payload = self._store.handle_api(
                path, self.headers.get("Authorization"), raw, self.headers.get("x-device-id")
            )
        except ApiError as exc:
            self._send_error(exc)
            return
        self._send_json(status, payload)

    # -- the data host: part uploads ----------------------------------------------------------

    def _put(self, path: str, query: str) -> None:
        store = self._store
        injection = store.take_injection(path)
        if injection is not None and injection.drop_after is None:
            self._drain()
            self._send_injected(injection)
            return
        try:
            ticket = store.begin_put(path, query)
        except ApiError as exc:
            self._drain()
            self._send_error(exc)
            return
        stop_after = injection.drop_after if injection is not None else None
        try:
            received = self._receive_part(ticket, stop_after)
            if received is None:
                return
            try:
                etag = store.commit_put(ticket, received)
            except ApiError as exc:
                self._send_error(exc)
                return
            if stop_after is not None:
                # The whole part arrived and was kept, but the answer is lost on the way back.
                self._drop()
                return
            self._send(200, b"", "application/octet-stream", {"ETag": etag, "x-oss-request-id": etag[1:17]})
        finally:
            store.end_put(ticket)

    def _receive_part(self, ticket: PutTicket, stop_after: int | None) -> int | None:
        """Stream a part's body into the upload's file at its offset, hashing it; return its size.

        Return None after dropping the connection at *stop_after* bytes. Unless the whole body
        arrived, the file is cut back to the offset: nothing of a broken part is kept.
        """
        received = 0
        kept = False
        with ticket.data_path.open("r+b") as out:
            out.seek(ticket.offset)
            try:
                damage = self._store.take_part_corruption()
                for chunk in self._body(stop_after, paced=True):
                    data = chunk
                    if damage and data:
                        # Damaged in transit: stored, hashed and acknowledged as received.
                        data, damage = bytes([data[0] ^ 0xFF]) + data[1:], False
                    out.write(data)
                    ticket.sha1.update(data)
                    ticket.md5.update(data)
                    received += len(data)
                    self._store.count_put_bytes(ticket.upload_id, len(data))
                if self.body_cut:
                    self._drop()
                    return None
                kept = True
            finally:
                if not kept:
                    out.truncate(ticket.offset)
        return received

    # -- the data host: downloads -------------------------------------------------------------

    def _download(self, path: str, query: str) -> None:
        store = self._store
        injection = store.take_injection(path)
        if injection is not None and injection.drop_after is None:
            self._send_injected(injection)
            return
        try:
            ticket = store.open_download(
                path, query, self.headers.get("Referer"), counted=self.command == "GET"
            )
        except ApiError as exc:
            self._send_error(exc)
            return
        self._body_sent = 0
        try:
            self._send_file(ticket, injection.drop_after if injection is not None else None)
        finally:
            # Test instrumentation: the body bytes handed to the kernel, a body cut short included.
            store.close_download(ticket, self._body_sent)

    def _send_file(self, ticket: DownloadTicket, drop_after: int | None) -> None:
        """Answer a download GET/HEAD (Range → 206, past EOF → 416), adding the body bytes sent to
        ``_body_sent`` as they go (with sendfile, once it returns: unthrottled, nothing is counted of
        a body the client cut)."""
        settings = self._store.settings
        size = ticket.size
        first, last = 0, size - 1
        status = 200
        header = self.headers.get("Range")
        if header and not settings.ignore_range:
            try:
                wanted = _parse_range(header, size)
            except ApiError as exc:
                self._send_error(exc)
                return
            if wanted is not None:
                first, last = wanted
                status = 206
        length = max(0, last - first + 1)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", ticket.etag)
        self.send_header("x-oss-hash-sha1", ticket.content_hash)
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return
        self._store.count("downloads")
        with ticket.path.open("rb") as source:
            if drop_after is None and not settings.download_bandwidth:
                self.wfile.flush()
                self._body_sent = _send_all(self.connection, source.fileno(), first, length)
                if self._body_sent < length:
                    self._drop()
                return
            source.seek(first)
            self._send_paced(source, length, drop_after)

    def _send_paced(self, source: BinaryIO, length: int, drop_after: int | None) -> None:
        """Send *length* bytes of *source* at ``settings.download_bandwidth`` (re-read per chunk),
        dropping the connection after *drop_after* bytes; count them in ``_body_sent``."""
        pacer = _Pacer()
        sent = 0
        while sent < length:
            bandwidth = self._store.settings.download_bandwidth
            data = source.read(min(pacer.chunk(bandwidth), length - sent))
            if not data:
                break
            if drop_after is not None and sent + len(data) >= drop_after:
                self.wfile.write(data[: max(0, drop_after - sent)])
                sent = drop_after
                self._body_sent = sent
                break
            self.wfile.write(data)
            sent += len(data)
            self._body_sent = sent
            pacer.pace(len(data), bandwidth)
        if sent < length:
            self._drop()


def _send_all(connection: socket.socket, fd: int, offset: int, length: int) -> int:
    """Send *length* bytes of *fd* from *offset*; return how many went (fewer: the file is shorter)."""
    sent = 0
    while sent < length:
        count = send_range(connection, fd, offset + sent, length - sent)
        if count == 0:
            return sent
        sent += count
    return sent


class _Pacer:
    """Sleeps so that bytes flow at a bandwidth that may change between calls."""

    def __init__(self) -> None:
        self._bandwidth: float | None = None
        self._started = time.monotonic()
        self._moved = 0

    @staticmethod
    def chunk(bandwidth: float | None) -> int:
        """Return a chunk size that keeps pacing smooth (about 20 chunks a second)."""
        return _CHUNK if not bandwidth else max(1024, min(_CHUNK, int(bandwidth / 20)))

    def pace(self, amount: int, bandwidth: float | None) -> None:
        if bandwidth != self._bandwidth:
            self._bandwidth, self._started, self._moved = bandwidth, time.monotonic(), 0
        self._moved += amount
        if bandwidth:
            ahead = self._moved / bandwidth - (time.monotonic() - self._started)
            if ahead > 0:
                time.sleep(ahead)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Given a Range header, return (first, last), or None to ignore it (RFC 9110).

    Raise ApiError 416 when the range starts at or past the end.
    """
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    start, end = match.groups()
    unsatisfiable = ApiError(
        416, "InvalidRange", "The requested range is not satisfiable", {"Content-Range": f"bytes */{size}"}
    )
    if not start:
        if not end or int(end) == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - int(end)), size - 1
    first = int(start)
    if first >= size:
        raise unsatisfiable
    last = min(int(end), size - 1) if end else size - 1
    if last < first:
        return None
    return first, last
