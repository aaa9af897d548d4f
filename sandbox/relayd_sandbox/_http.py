"""Shared plumbing for the sandbox's HTTP servers: a threaded server on a loopback port, a request
log, and a per-connection bandwidth cap."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO


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
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, handler_class: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), handler_class)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
