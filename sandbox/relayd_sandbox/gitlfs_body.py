"""The body of one request to the sandbox git + LFS server, read incrementally: ``Content-Length`` or
``Transfer-Encoding: chunked`` (git sends its packs that way once they exceed ``http.postBuffer``;
http.server does not decode it), never past its end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

_DRAIN_LIMIT = 64 * 1024 * 1024
CHUNK = 64 * 1024


class ClientGone(Exception):
    """The client closed the connection before sending the whole request body."""


class BadRequest(Exception):
    """A request that cannot be framed (bad Content-Length or chunk header)."""


class RequestBody:
    """The body of one request, read incrementally: Content-Length or chunked, never past its end."""

    def __init__(self, rfile: BinaryIO, headers: Any) -> None:
        self._rfile = rfile
        self.chunked = "chunked" in (headers.get("Transfer-Encoding") or "").lower()
        declared = headers.get("Content-Length")
        self.length: int | None = None
        if not self.chunked:
            try:
                self.length = int(declared) if declared else 0
            except ValueError as exc:
                raise BadRequest(f"bad Content-Length {declared!r}") from exc
            if self.length < 0:
                raise BadRequest("negative Content-Length")
        self._left = self.length or 0
        self._chunk_left = 0
        self.done = not self.chunked and self._left == 0

    def read(self, size: int = CHUNK) -> bytes:
        """Return up to *size* bytes; b"" only at the end of the body. Raise ClientGone on EOF."""
        if self.done:
            return b""
        if not self.chunked:
            data = self._rfile.read(min(size, self._left))
            if not data:
                raise ClientGone(f"body ended {self._left} bytes early")
            self._left -= len(data)
            self.done = self._left == 0
            return data
        if self._chunk_left == 0:
            line = self._rfile.readline(1024)
            if not line:
                raise ClientGone("body ended inside chunked framing")
            try:
                self._chunk_left = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise BadRequest(f"bad chunk size line {line[:40]!r}") from exc
            if self._chunk_left == 0:
                while True:  # trailers, up to the blank line
                    trailer = self._rfile.readline(8192)
                    if not trailer:
                        raise ClientGone("body ended inside chunked trailers")
                    if trailer in (b"\r\n", b"\n"):
                        break
                self.done = True
                return b""
        data = self._rfile.read(min(size, self._chunk_left))
        if not data:
            raise ClientGone("body ended inside a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and self._rfile.readline(8) not in (b"\r\n", b"\n"):
            raise BadRequest("chunk not followed by CRLF")
        return data

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        while data := self.read(size):
            yield data

    def read_all(self, limit: int) -> bytes:
        """Return the whole body. Raise BadRequest when it exceeds *limit* bytes."""
        parts: list[bytes] = []
        total = 0
        for data in self.chunks():
            total += len(data)
            if total > limit:
                raise BadRequest(f"request body over {limit} bytes")
            parts.append(data)
        return b"".join(parts)

    def drain(self, limit: int = _DRAIN_LIMIT) -> bool:
        """Discard the rest of the body; return False (leaving it unread) if that exceeds *limit*."""
        if self.done:
            return True
        if self.length is not None and self._left > limit:
            return False
        total = 0
        for data in self.chunks():
            total += len(data)
            if total > limit:
                return False
        return True
