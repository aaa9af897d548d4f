"""git's side of the sandbox git + LFS server: a CGI bridge to the real ``git http-backend`` (the request
body buffered to a file, the CGI answer relayed, chunked when it has no length), creating a repository
on its first push when ``auto_create_repos`` says so."""

from __future__ import annotations

import io
import logging
import subprocess
import tempfile
from typing import cast
from urllib.parse import parse_qs

from relayd_sandbox.gitlfs_base import HandlerBase
from relayd_sandbox.gitlfs_body import CHUNK

logger = logging.getLogger(__name__)


class GitBackend(HandlerBase):
    """``/<owner>/<name>.git/*`` (but ``info/lfs``) through ``git http-backend``."""

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
        while data := stdout.read1(CHUNK):
            if sized:
                self.wfile.write(data)
            else:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        if not sized:
            self.wfile.write(b"0\r\n\r\n")
