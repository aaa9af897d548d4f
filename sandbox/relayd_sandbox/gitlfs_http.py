"""The HTTP side of the sandbox git + LFS server: a listener per origin that can cut its open
connections, and one handler per connection, speaking HTTP/1.1 with keep-alive as git (libcurl) and
git-lfs (Go) expect, that routes each request to git's CGI bridge (``gitlfs_git``), to the LFS
endpoints (``gitlfs_lfs``) or to ModelScope's HTTP upload API (``ms_api``); the plumbing they share
is ``gitlfs_base``, the request body's framing ``gitlfs_body``."""

from __future__ import annotations

import logging
import re
import socket
import threading
from typing import TYPE_CHECKING, BinaryIO, cast
from urllib.parse import urlsplit

from relayd_sandbox._http import LoopbackServer
from relayd_sandbox.gitlfs_body import BadRequest, ClientGone, RequestBody
from relayd_sandbox.gitlfs_git import GitBackend
from relayd_sandbox.ms_api import MsApiEndpoints

if TYPE_CHECKING:
    from relayd_sandbox.gitlfs import GitLfsServer

logger = logging.getLogger(__name__)

_REPO_PATH = re.compile(
    r"(?:/models)?/(?P<owner>[A-Za-z0-9][A-Za-z0-9_.-]*)/(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*?)\.git(?P<rest>/.*)?"
)


class GitLfsHandler(GitBackend, MsApiEndpoints):
    """Serve one connection of the sandbox git + LFS server."""

    protocol_version = "HTTP/1.1"
    server_version = "relayd-sandbox-git/1"
    timeout = 120  # idle keep-alive connections give their thread back eventually

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        app = self.app
        app.request_started()
        self._status = 0
        self._logged = False
        self._body = None
        try:
            self._body = RequestBody(cast(BinaryIO, self.rfile), self.headers)
            self._route()
        except BadRequest as exc:
            self.close_connection = True  # the body's framing is unknown: never reuse the connection
            self._send_text(400, str(exc))
        except (ClientGone, ConnectionError, TimeoutError) as exc:
            logger.info("%s %s: connection lost: %s", self.command, self.path, exc)
            self.close_connection = True
        finally:
            if cast("GitLfsListener", self.server).closing:
                self.close_connection = True
            app.request_finished()
            self._log_request()  # no answer was sent (the connection was lost)

    def _route(self) -> None:
        split = urlsplit(self.path)
        storage = cast("GitLfsListener", self.server).storage
        redirect = self.app.redirect
        if redirect is not None and not storage:
            status, target = redirect
            self._send_text(status, "Moved", {"Location": target.rstrip("/") + self.path})
            return
        if split.path.startswith("/api/v1/") and not storage:
            self._ms_api(split.path)  # ModelScope's HTTP upload API (relayd_sandbox.ms_api)
            return
        match = _REPO_PATH.fullmatch(split.path)
        if match is None or (storage and not (match["rest"] or "").startswith("/info/lfs/")):
            if storage:
                self._lfs_error(404, "Not found: this host serves LFS objects only")
            elif self._basic_auth(lfs=False):
                self._send_text(404, "Not found: expected /<owner>/<name>.git/...")
            return
        owner, name, rest = match["owner"], match["name"], match["rest"] or "/"
        try:
            self.app.repo_path(owner, name)
        except ValueError as exc:
            self._send_text(400, str(exc))
            return
        if rest.startswith("/info/lfs/"):
            self._lfs(owner, name, rest[len("/info/lfs") :])
        else:
            self._git(owner, name, rest, split.query)


class GitLfsListener(LoopbackServer):
    """The HTTP listener of one start()…stop() period; it knows its open connections so that stop()
    can cut them the way a crashed server would."""

    def __init__(self, app: GitLfsServer, port: int, *, storage: bool = False) -> None:
        self.app = app
        # The storage origin serves only object transfers (signed_url actions), as a separate host would.
        self.storage = storage
        self.request_log = app.storage_log if storage else app.request_log
        self.closing = False
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(GitLfsHandler, port)

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        if isinstance(request, socket.socket):
            with self._open_lock:
                self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        if isinstance(request, socket.socket):
            with self._open_lock:
                self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Reset every open client connection; their handlers fail on their next read or write."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                logger.debug("connection already closed while dropping it")
