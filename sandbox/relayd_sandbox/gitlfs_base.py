"""What every answer of the sandbox git + LFS server goes through: the request log (Authorization
redacted), the body finished before an early answer, plain, JSON and nginx-style answers, HTTP Basic
``oauth2:<token>`` auth with its challenges, and the failures a test injected."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, cast

from relayd_sandbox._http import LoggedRequest
from relayd_sandbox.gitlfs_body import CHUNK, BadRequest, ClientGone, RequestBody

if TYPE_CHECKING:
    from relayd_sandbox.gitlfs import Endpoint, GitLfsServer
    from relayd_sandbox.gitlfs_http import GitLfsListener

logger = logging.getLogger(__name__)

LFS_JSON = "application/vnd.git-lfs+json"
_NGINX_413 = (
    b"<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
    b"<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


class HandlerBase(BaseHTTPRequestHandler):
    """The plumbing of one connection to the sandbox git + LFS server; ``GitLfsHandler`` routes."""

    _status = 0
    _logged = False
    _body: RequestBody | None = None

    @property
    def body(self) -> RequestBody:
        """The reader of the current request's body."""
        if self._body is None:
            raise RuntimeError("no request is being handled")
        return self._body

    @property
    def app(self) -> GitLfsServer:
        return cast("GitLfsListener", self.server).app

    def log_message(self, format: str, *args: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s", self.address_string(), format % args)

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def end_headers(self) -> None:
        # Log before the answer leaves, so a client that has its answer always finds it in the log.
        self._log_request()
        super().end_headers()

    def _log_request(self) -> None:
        if not self._logged:
            self._logged = True
            cast("GitLfsListener", self.server).request_log.add(
                LoggedRequest(self.command, self.path, self._redacted_headers(), self._status)
            )

    def _redacted_headers(self) -> dict[str, str]:
        headers = dict(self.headers.items())
        for key in list(headers):
            if key.lower() == "authorization":
                headers[key] = headers[key].split(" ", 1)[0] + " [redacted]"
        return headers

    def _finish_body(self) -> None:
        """Before answering early: read the rest of the request body, or close after the answer."""
        body = self._body
        if body is not None and not body.done:
            try:
                drained = body.drain()
            except (ClientGone, BadRequest):
                drained = False
            if not drained:
                self.close_connection = True

    def _send_bytes(
        self, status: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self._finish_body()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_text(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, (text + "\n").encode(), "text/plain; charset=utf-8", headers)

    def _send_json(self, status: int, document: object, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(document).encode()
        padding = self.app.answer_padding
        if not padding:
            self._send_bytes(status, payload, LFS_JSON, headers)
            return
        # A server that answers too much: the JSON, then *padding* bytes of whitespace, sent chunked.
        self._finish_body()
        self.send_response(status)
        self.send_header("Content-Type", LFS_JSON)
        self.send_header("Transfer-Encoding", "chunked")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        blank = b" " * CHUNK
        while padding > 0:
            piece = blank[:padding]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            padding -= len(piece)
        self.wfile.write(b"0\r\n\r\n")

    def _too_large(self) -> None:
        """Answer a PUT over ``max_object_size`` as an nginx front does: 413 with its HTML page at once,
        before the body is read, then read and discard what the client still sends (nginx's lingering
        close) and close the connection."""
        self.close_connection = True
        self.send_response(413, "Request Entity Too Large")
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(_NGINX_413)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(_NGINX_413)
        self.wfile.flush()
        with contextlib.suppress(ClientGone, BadRequest, OSError):
            self.body.drain()

    def _lfs_error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"message": message}, headers)

    def _failure_headers(self, retry_after: float | None) -> dict[str, str]:
        return {"Retry-After": str(max(0, round(retry_after)))} if retry_after is not None else {}

    def _basic_auth(self, *, lfs: bool) -> bool:
        """Return True when the request carries valid Basic credentials; otherwise answer 401."""
        header = self.headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                username, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                username, password = "", ""
            if self.app.credentials_ok(username, password):
                return True
            reason = "Bad credentials: use username oauth2 and your access token as the password"
        else:
            reason = "Authentication required"
        challenge = {"WWW-Authenticate": f'Basic realm="{self.app.realm}"'}
        if lfs:
            challenge["LFS-Authenticate"] = challenge["WWW-Authenticate"]
            self._lfs_error(401, reason, challenge)
        else:
            self._send_text(401, reason, challenge)
        return False

    def _injected(self, endpoint: Endpoint, *, lfs: bool) -> bool:
        """Answer with a queued injected failure for *endpoint*; return whether one fired."""
        failure = self.app.take_failure(endpoint)
        if failure is None:
            return False
        logger.info("injecting %d into %s %s", failure.status, self.command, self.path)
        headers = self._failure_headers(failure.retry_after)
        if lfs:
            self._lfs_error(failure.status, failure.message, headers)
        else:
            self._send_text(failure.status, failure.message, headers)
        return True
