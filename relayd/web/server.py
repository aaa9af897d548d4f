"""The HTTP server of the page and the API: the standard library's threading server on ``web.listen``.

One thread per connection (HTTP/1.1 keep-alive, idle connections closed after ``IDLE_TIMEOUT``); every
request is answered by ``WebApp.answer``. The server runs beside the daemon's engine, started and
stopped with it, and restarted on reload when ``[web]`` changed.
"""

from __future__ import annotations

import logging
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import TYPE_CHECKING

from relayd.web.access import Access, resolve_token
from relayd.web.api import MAX_BODY, Answer, Request, WebApp, error
from relayd.web.documents import Documents

if TYPE_CHECKING:
    from relayd.catalogue.store import Store
    from relayd.config import Config
    from relayd.web.throughput import Throughput

#: A body over MAX_BODY up to this size is read and dropped before the 413 (see Handler._handle).
DRAIN_LIMIT = 1024 * 1024

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 30.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def split_listen(listen: str) -> tuple[str, int]:
    """Return the host and port of ``host:port`` (``[::1]:9109`` for IPv6)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class WebServer:
    """Serves *app* on *listen* ("host:port") in a thread of its own."""

    def __init__(self, app: WebApp, listen: str) -> None:
        self.app = app
        host, port = split_listen(listen)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = IDLE_TIMEOUT
            # Headers and body go out in two writes; with Nagle's algorithm the second waits for the
            # client's delayed ACK of the first (40 ms on Linux).
            disable_nagle_algorithm = True

            def version_string(self) -> str:
                return "relayd"

            def _handle(self) -> None:
                length_text = self.headers.get("Content-Length") or "0"
                if not length_text.isdigit():
                    self._send(error(400, "Content-Length must be a number"), head=False)
                    return
                length = int(length_text)
                if length > MAX_BODY:
                    self.close_connection = True
                    if length <= DRAIN_LIMIT:
                        # Take the body off the socket first: closing it with unread bytes makes the
                        # kernel reset the connection, which can destroy the 413 before it is read.
                        self._discard(length)
                    self._send(error(413, f"the body may be at most {MAX_BODY} bytes"), head=False)
                    return
                body = self.rfile.read(length) if length else b""
                request = Request(self.command, self.path, self.headers, body)
                self._send(app.answer(request), head=self.command == "HEAD")

            def _discard(self, length: int) -> None:
                while length > 0:
                    chunk = self.rfile.read(min(length, 65536))
                    if not chunk:
                        return
                    length -= len(chunk)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

            def _send(self, answer: Answer, *, head: bool) -> None:
                self.send_response(answer.status)
                if answer.status != 304:
                    self.send_header("Content-Type", answer.content_type)
                    self.send_header("Content-Length", str(len(answer.body)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                if self.close_connection:
                    # Say so (RFC 9112 §9.6): a client that reuses the connection meets a closed socket.
                    self.send_header("Connection", "close")
                self.end_headers()
                if not head and answer.status != 304:
                    self.wfile.write(answer.body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("web request: %s", format % args)

        server_class = _Server6 if ":" in host else _Server
        self.server = server_class((host, port), Handler)
        self._thread = Thread(target=self.server.serve_forever, name="relayd-web", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self.server.server_address[0])
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def start(self) -> None:
        self._thread.start()
        log.info("status page and API on %s", self.url)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.app.documents.close()


def serve(config: Config, store: Store, throughput: Throughput) -> WebServer:
    """Start the server ``config.web`` describes, reading and writing the catalogue through *store*.
    Raise ConfigError when its token is unusable, OSError when its address cannot be bound."""
    token = resolve_token(config.web)
    documents = Documents(config.catalogue.url)
    app = WebApp(config, store, documents, throughput, Access(config.web, token))
    try:
        server = WebServer(app, config.web.listen)
    except OSError:
        documents.close()
        raise
    server.start()
    return server
