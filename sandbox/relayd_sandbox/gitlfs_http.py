"""The HTTP side of the sandbox git + LFS server: routing, Basic auth, the CGI bridge to
``git http-backend``, and the LFS batch, basic-transfer and verify endpoints.

Speaks HTTP/1.1 with keep-alive, as git (libcurl) and git-lfs (Go) expect. Request bodies may be
``Transfer-Encoding: chunked`` (git sends its packs that way once they exceed ``http.postBuffer``);
http.server does not decode that, so ``RequestBody`` does.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import logging
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import parse_qs, urlsplit

from relayd_sandbox._http import LoggedRequest
from relayd_sandbox.gitlfs_store import OID_RE, Grant, ObjectRejected, TokenError

if TYPE_CHECKING:
    from relayd_sandbox.gitlfs import Endpoint, GitLfsServer, _Listener

logger = logging.getLogger(__name__)

LFS_JSON = "application/vnd.git-lfs+json"
_REPO_PATH = re.compile(
    r"(?:/models)?/(?P<owner>[A-Za-z0-9][A-Za-z0-9_.-]*)/(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*?)\.git(?P<rest>/.*)?"
)
_OBJECT_PATH = re.compile(r"/objects/(?P<oid>[0-9a-f]{64})")
_RANGE = re.compile(r"bytes=(?P<start>\d*)-(?P<end>\d*)")
_MAX_JSON_BODY = 16 * 1024 * 1024
_DRAIN_LIMIT = 64 * 1024 * 1024
_CHUNK = 64 * 1024
_NGINX_413 = (
    b"<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
    b"<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


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

    def read(self, size: int = _CHUNK) -> bytes:
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

    def chunks(self, size: int = _CHUNK) -> Iterator[bytes]:
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


class GitLfsHandler(BaseHTTPRequestHandler):
    """Serve one connection of the sandbox git + LFS server."""

    protocol_version = "HTTP/1.1"
    server_version = "relayd-sandbox-git/1"
    timeout = 120  # idle keep-alive connections give their thread back eventually

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
        return cast("_Listener", self.server).app

    # -- plumbing ----------------------------------------------------------------------------------

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
            cast("_Listener", self.server).request_log.add(
                LoggedRequest(self.command, self.path, self._redacted_headers(), self._status)
            )

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
            if cast("_Listener", self.server).closing:
                self.close_connection = True
            app.request_finished()
            self._log_request()  # no answer was sent (the connection was lost)

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
        blank = b" " * _CHUNK
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

    # -- routing and auth --------------------------------------------------------------------------

    def _route(self) -> None:
        split = urlsplit(self.path)
        storage = cast("_Listener", self.server).storage
        redirect = self.app.redirect
        if redirect is not None and not storage:
            status, target = redirect
            self._send_text(status, "Moved", {"Location": target.rstrip("/") + self.path})
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

    # -- git: CGI bridge to git http-backend -------------------------------------------------------

    def _git(self, owner: str, name: str, rest: str, query: str) -> None:
        app = self.app
        if self.command not in ("GET", "POST"):
            self._send_text(405, "Method not allowed")
            return
        if not self._basic_auth(lfs=False):
            return
        app.count("git")
        if self._injected("git", lfs=False):
            return
        hook = app.before_git
        if hook is not None:
            hook(owner, name, rest, parse_qs(query).get("service", [""])[0])
        if not app.has_repo(owner, name):
            service = parse_qs(query).get("service", [""])[0]
            pushing = rest == "/git-receive-pack" or (rest == "/info/refs" and service == "git-receive-pack")
            if not (pushing and app.auto_create_repos):
                self._send_text(404, f"Repository {owner}/{name} not found")
                return
            app.new_repo(owner, name)
        body = self.body
        with (
            tempfile.TemporaryFile(dir=app.tmp_dir) as stdin,
            tempfile.TemporaryFile(dir=app.tmp_dir) as stderr,
        ):
            for data in body.chunks():
                stdin.write(data)
            length = stdin.tell()
            stdin.seek(0)
            env = app.git_env()
            env.update(
                {
                    "GIT_PROJECT_ROOT": str(app.repos_root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "REMOTE_USER": app.username,
                    "REMOTE_ADDR": self.client_address[0],
                    "GATEWAY_INTERFACE": "CGI/1.1",
                    "SERVER_PROTOCOL": self.request_version,
                    "SERVER_SOFTWARE": self.server_version,
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": f"/{owner}/{name}.git{rest}",
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type") or "",
                    "CONTENT_LENGTH": str(length),
                }
            )
            for header, variable in (
                ("Git-Protocol", "GIT_PROTOCOL"),
                ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
                ("Accept", "HTTP_ACCEPT"),
            ):
                if value := self.headers.get(header):
                    env[variable] = value
            if protocol := self.headers.get("Git-Protocol"):
                env["HTTP_GIT_PROTOCOL"] = protocol
            proc = subprocess.Popen(
                [str(app.http_backend)],
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=app.root,
            )
            stdout = cast(io.BufferedReader, proc.stdout)
            try:
                self._relay_cgi(stdout)
            except BaseException:
                proc.kill()  # the client went away; do not leave http-backend blocked on its pipe
                raise
            finally:
                stdout.close()
                returncode = proc.wait()
                stderr.seek(0)
                errors = stderr.read().decode(errors="replace").strip()
                if returncode or errors:
                    logger.log(
                        logging.WARNING if returncode else logging.DEBUG,
                        "git http-backend %s %s exited %d: %s",
                        self.command,
                        rest,
                        returncode,
                        errors,
                    )

    def _relay_cgi(self, stdout: io.BufferedReader) -> None:
        """Turn http-backend's CGI output (headers, blank line, body) into the HTTP response."""
        status = 200
        headers: list[tuple[str, str]] = []
        while True:
            line = stdout.readline(65536)
            if not line:
                self._send_text(502, "git http-backend ended without a response")
                return
            text = line.decode("latin-1").rstrip("\r\n")
            if not text:
                break
            key, _, value = text.partition(":")
            if key.strip().lower() == "status":
                status = int(value.strip().split(" ", 1)[0])
            else:
                headers.append((key.strip(), value.strip()))
        sized = any(key.lower() == "content-length" for key, _ in headers)
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        if not sized:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while data := stdout.read1(_CHUNK):
            if sized:
                self.wfile.write(data)
            else:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        if not sized:
            self.wfile.write(b"0\r\n\r\n")

    # -- LFS ---------------------------------------------------------------------------------------

    def _lfs(self, owner: str, name: str, rest: str) -> None:
        if rest == "/objects/batch" and not cast("_Listener", self.server).storage:
            if self.command != "POST":
                self._lfs_error(405, "Use POST for the batch API")
            elif self._basic_auth(lfs=True):
                self._batch(owner, name)
            return
        if rest == "/verify":
            if self.command == "POST":
                self._verify(owner, name)
            else:
                self._lfs_error(405, "Use POST to verify")
            return
        match = _OBJECT_PATH.fullmatch(rest)
        if match is not None and self.command == "PUT":
            self._upload(owner, name, match["oid"])
            return
        if match is not None and self.command == "GET":
            self._download(owner, name, match["oid"])
            return
        # Locking (/locks, /locks/verify, …) is not implemented, like on the servers relayd targets;
        # git-lfs warns and carries on, and relayd sets lfs.locksverify=false anyway.
        if cast("_Listener", self.server).storage:
            self._lfs_error(404, f"Not found: {rest}")
        elif self._basic_auth(lfs=True):
            self._lfs_error(404, f"Not found: {rest} (this server implements no LFS locking API)")

    def _repo_missing(self, owner: str, name: str) -> bool:
        if self.app.has_repo(owner, name):
            return False
        self._lfs_error(404, f"Repository {owner}/{name} not found")
        return True

    def _action(self, path: str, grant: Grant) -> dict[str, object]:
        """Return the action for *grant* at *path* (under the repo's ``/info/lfs``) in the server's shape."""
        app = self.app
        token, expires = app.signer.issue(grant, app.action_lifetime)
        lfs_path = f"/{grant.owner}/{grant.name}.git/info/lfs{path}"
        action: dict[str, object]
        if app.action_auth == "signed_url":
            action = {"href": f"{app.storage_url}{lfs_path}?token={token}"}
        else:
            action = {"href": app.base_url + lfs_path}
        if app.action_auth == "header":
            action["header"] = {"Authorization": f"Bearer {token}"}
        if app.action_expiry in ("expires_in", "both"):
            action["expires_in"] = int(app.action_lifetime)
        if app.action_expiry in ("expires_at", "both"):
            action["expires_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        return action

    def _batch(self, owner: str, name: str) -> None:
        app = self.app
        body = self.body
        try:
            request = json.loads(body.read_all(_MAX_JSON_BODY))
        except (ValueError, UnicodeDecodeError):
            self._lfs_error(400, "Batch request body is not JSON")
            return
        if not isinstance(request, dict) or not isinstance(request.get("objects"), list):
            self._lfs_error(422, "Batch request needs an 'objects' list")
            return
        operation = request.get("operation")
        if operation not in ("upload", "download"):
            self._lfs_error(422, f"Unknown operation {operation!r}")
            return
        ref = request.get("ref")
        ref_name = ref.get("name") if isinstance(ref, dict) and isinstance(ref.get("name"), str) else None
        items = [item if isinstance(item, dict) else {} for item in request["objects"]]
        app.record_batch(owner, name, operation, tuple(str(item.get("oid", "")) for item in items), ref_name)
        if self._injected("batch", lfs=True):
            return
        most = app.max_batch_objects
        if most is not None and len(items) > most:
            self._lfs_error(413, f"A batch request may name at most {most} objects, not {len(items)}")
            return
        if request.get("hash_algo", "sha256") != "sha256":
            self._lfs_error(409, "Only hash_algo sha256 is supported")
            return
        transfers = request.get("transfers") or ["basic"]
        if "basic" not in transfers:
            self._lfs_error(422, "Only the basic transfer adapter is supported")
            return
        if not app.has_repo(owner, name):
            if operation == "upload" and app.auto_create_repos:
                app.new_repo(owner, name)
            else:
                self._lfs_error(404, f"Repository {owner}/{name} not found")
                return
        answers = [self._batch_object(owner, name, operation, item) for item in items]
        if app.omit_stored and operation == "upload":
            # The spec's other way to say "already there": the object is left out of the answer.
            answers = [a for a in answers if "actions" in a or "error" in a]
        self._send_json(200, {"transfer": "basic", "objects": answers, "hash_algo": "sha256"})

    def _batch_object(self, owner: str, name: str, operation: str, item: dict[str, Any]) -> dict[str, Any]:
        oid, size = item.get("oid"), item.get("size")
        answer: dict[str, Any] = {"oid": oid, "size": size}
        if not isinstance(oid, str) or not OID_RE.fullmatch(oid):
            answer["error"] = {"code": 422, "message": "oid must be 64 lowercase hex digits (sha256)"}
            return answer
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            answer["error"] = {"code": 422, "message": "size must be a non-negative integer"}
            return answer
        stored = self.app.store.size(owner, name, oid)
        if stored is not None and stored != size:
            answer["error"] = {
                "code": 422,
                "message": f"Object {oid} is stored with size {stored}, not {size}",
            }
            return answer
        app = self.app
        limit = app.max_object_size
        if operation == "upload":
            if stored is not None:
                return answer  # the spec's skip rule: no actions at all
            if limit is not None and size > limit and app.size_limit_at == "batch":
                answer["error"] = {
                    "code": 413,
                    "message": f"Object {oid} is {size} bytes, over the maximum object size of {limit} bytes",
                }
                return answer
            actions = {"upload": self._action(f"/objects/{oid}", Grant("upload", owner, name, oid, size))}
            if app.verify_action:
                actions["verify"] = self._action("/verify", Grant("verify", owner, name, oid, size))
            answer["actions"] = actions
        elif stored is None:
            answer["error"] = {"code": 404, "message": f"Object {oid} does not exist"}
            return answer
        else:
            answer["actions"] = {
                "download": self._action(f"/objects/{oid}", Grant("download", owner, name, oid, size))
            }
        if app.action_auth != "basic":
            answer["authenticated"] = True  # the action carries its own credentials
        return answer

    def _grant(self, operation: str, owner: str, name: str, oid: str, size: int | None) -> Grant | None:
        """Return what the request may do: its action token's Grant (from the header or the signed
        URL), or, for ``basic`` actions, a Grant for *size* bytes on valid user credentials. Otherwise
        answer 401/403 (411 without a size) and return None."""
        app = self.app
        header = self.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        signed = parse_qs(urlsplit(self.path).query).get("token", [""])[0]
        if signed or scheme.lower() == "bearer":
            try:
                return app.signer.check((signed or token).strip(), operation, owner, name, oid)
            except TokenError as exc:
                self._lfs_error(403, str(exc))
                return None
        if app.action_auth == "basic" and not cast("_Listener", self.server).storage:
            if not self._basic_auth(lfs=True):
                return None
            if size is None:
                self._lfs_error(411, "Content-Length required")
                return None
            return Grant(operation, owner, name, oid, size)
        if not header:
            self._lfs_error(401, "This URL needs the Authorization header from the batch response's action")
            return None
        self._lfs_error(
            403, "Object transfers take the action's own Authorization header, not user credentials"
        )
        return None

    def _upload(self, owner: str, name: str, oid: str) -> None:
        app = self.app
        body = self.body
        limit = app.max_object_size
        if limit is not None and app.size_limit_at == "upload" and (body.length or 0) > limit:
            self._too_large()
            return
        grant = self._grant("upload", owner, name, oid, body.length)
        if grant is None or self._repo_missing(owner, name) or self._injected("upload", lfs=True):
            return
        if body.length is not None and body.length != grant.size:
            self._lfs_error(422, f"Content-Length {body.length} differs from the object size {grant.size}")
            return
        app.count("put")
        try:
            app.store.receive(owner, name, oid, grant.size, self._paced_body(oid))
        except ObjectRejected as exc:
            logger.info("rejected upload of %s to %s/%s: %s", oid, owner, name, exc)
            self._lfs_error(422, f"Object {oid} rejected: {exc}")
            return
        app.count("stored")
        logger.info("stored %s (%d bytes) for %s/%s", oid, grant.size, owner, name)
        self._send_json(200, {})

    def _paced_body(self, oid: str) -> Iterator[bytes]:
        """Yield the request body, counting it and pacing it to ``put_bytes_per_second``; with
        ``corrupt_puts``, its first byte arrives inverted (same size, wrong content)."""
        body = self.body
        app = self.app
        damage = app.take_put_corruption()
        while True:
            rate = app.put_bytes_per_second
            size = min(_CHUNK, max(1024, int(rate / 20))) if rate else _CHUNK
            started = time.monotonic()
            data = body.read(size)
            if not data:
                return
            app.count_put_bytes(oid, len(data))
            if damage:
                data, damage = bytes([data[0] ^ 0xFF]) + data[1:], False
            yield data
            if rate:
                time.sleep(max(0.0, len(data) / rate - (time.monotonic() - started)))

    def _download(self, owner: str, name: str, oid: str) -> None:
        app = self.app
        grant = self._grant("download", owner, name, oid, app.store.size(owner, name, oid))
        if grant is None or self._repo_missing(owner, name) or self._injected("download", lfs=True):
            return
        path = app.store.path(owner, name, oid)
        try:
            source = path.open("rb")
        except FileNotFoundError:
            self._lfs_error(404, f"Object {oid} does not exist")
            return
        app.count("download")
        with source:
            total = path.stat().st_size
            start, end = 0, total - 1
            status = 200
            extra: dict[str, str] = {"Accept-Ranges": "bytes"}
            wanted = self.headers.get("Range")
            if wanted:
                span = _parse_range(wanted, total)
                if span is None:
                    self._lfs_error(
                        416, f"Unsatisfiable range {wanted!r}", {"Content-Range": f"bytes */{total}"}
                    )
                    return
                start, end = span
                status = 206
                extra["Content-Range"] = f"bytes {start}-{end}/{total}"
            self._finish_body()
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start + 1))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            source.seek(start)
            left = end - start + 1
            while left > 0:
                rate = app.get_bytes_per_second
                size = min(_CHUNK, left, max(1024, int(rate / 20)) if rate else _CHUNK)
                started = time.monotonic()
                data = source.read(size)
                if not data:
                    raise ConnectionError("object shrank while being served")
                self.wfile.write(data)
                left -= len(data)
                if rate:
                    time.sleep(max(0.0, len(data) / rate - (time.monotonic() - started)))

    def _verify(self, owner: str, name: str) -> None:
        app = self.app
        body = self.body
        try:
            request = json.loads(body.read_all(_MAX_JSON_BODY))
        except (ValueError, UnicodeDecodeError):
            self._lfs_error(400, "Verify request body is not JSON")
            return
        oid = request.get("oid") if isinstance(request, dict) else None
        size = request.get("size") if isinstance(request, dict) else None
        if not isinstance(oid, str) or not OID_RE.fullmatch(oid) or not isinstance(size, int):
            self._lfs_error(422, "Verify request needs a sha256 oid and an integer size")
            return
        grant = self._grant("verify", owner, name, oid, size)
        if grant is None or self._repo_missing(owner, name) or self._injected("verify", lfs=True):
            return
        app.count("verify")
        stored = app.store.size(owner, name, oid)
        if stored is None:
            self._lfs_error(404, f"Object {oid} is not stored")
        elif stored != size:
            self._lfs_error(422, f"Object {oid} is stored with size {stored}, not {size}")
        else:
            self._send_json(200, {"message": "ok"})


def _parse_range(header: str, total: int) -> tuple[int, int] | None:
    """Return the inclusive byte span of a single-range *header* for a *total*-byte object, or None."""
    match = _RANGE.fullmatch(header.strip())
    if match is None or (not match["start"] and not match["end"]):
        return None
    if not match["start"]:  # suffix: the last N bytes
        suffix = int(match["end"])
        if suffix == 0:
            return None
        return max(0, total - suffix), total - 1
    start = int(match["start"])
    end = min(int(match["end"]), total - 1) if match["end"] else total - 1
    if start >= total or end < start:
        return None
    return start, end
