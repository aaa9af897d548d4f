"""Shared plumbing for the sandbox's HTTP servers: a threaded server on a loopback port (plain HTTP, or
HTTPS with a certificate of the sandbox's throwaway CA), a request log, sending file ranges, and a
per-connection bandwidth cap."""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO

_TLS_CHUNK = 1024 * 1024  # one write of a file range over TLS


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class LoggedRequest:
    """One request as a server saw it, for tests to assert on."""

    method: str
    path: str
    headers: dict[str, str]
    status: int = 0

    def header(self, name: str) -> str | None:
        """Return the header *name* (case-insensitive), or None."""
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


@dataclass
class RequestLog:
    """A thread-safe list of the requests a server answered."""

    entries: list[LoggedRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.entries.append(entry)

    def snapshot(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self.entries)

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()


class LoopbackServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer bound to 127.0.0.1 that runs in a daemon thread.

    Subclasses set ``handler_class``; the handler reaches the owning object through ``self.server``.
    With *tls* (a server context, ``relayd_sandbox.tls.ThrowawayCA.server_context``) it speaks HTTPS:
    each accepted socket is wrapped at once and shakes hands in its own thread, so a client that
    refuses the certificate costs that thread only.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self, handler_class: type[BaseHTTPRequestHandler], port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        super().__init__(("127.0.0.1", port), handler_class)
        self.tls = tls
        self._thread: threading.Thread | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def finish_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except OSError:  # ssl.SSLError included: the client refused the certificate, or left
                return
        super().finish_request(request, client_address)

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls is not None else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Serve in a background thread until stop()."""
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def send_range(connection: socket.socket, fd: int, offset: int, count: int) -> int:
    """Send up to *count* bytes of the file *fd* from *offset* on *connection*; return how many went.

    A plain socket gets them by ``os.sendfile`` (no copy through Python); a TLS socket by pread and one
    write (sendfile would bypass the encryption, and ``socket.sendfile`` falls back to 8 KiB writes).
    """
    if not isinstance(connection, ssl.SSLSocket):
        while True:
            try:
                return os.sendfile(connection.fileno(), fd, offset, count)
            except BlockingIOError:
                # A socket with a timeout is non-blocking underneath: when the client reads slower than
                # the file goes out, wait (up to that timeout) until the socket takes more.
                _, writable, _ = select.select([], [connection], [], connection.gettimeout())
                if not writable:
                    raise TimeoutError("the client stopped reading") from None
    data = os.pread(fd, min(count, _TLS_CHUNK), offset)
    connection.sendall(data)
    return len(data)


def throttled_chunks(
    source: BinaryIO, length: int, bytes_per_second: float | None, chunk: int = 256 * 1024
) -> Iterator[bytes]:
    """Yield *length* bytes from *source*, paced to *bytes_per_second* when it is set."""
    started = time.monotonic()
    sent = 0
    while sent < length:
        data = source.read(min(chunk, length - sent))
        if not data:
            return
        sent += len(data)
        yield data
        if bytes_per_second:
            ahead = sent / bytes_per_second - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
