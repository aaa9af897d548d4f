"""The LFS side of the sandbox git + LFS server: the batch API (actions in each shape the spec allows),
the basic transfer's object PUT and GET (with Range) authorised by the action's own token, and verify."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, urlsplit

from relayd_sandbox.gitlfs_base import HandlerBase
from relayd_sandbox.gitlfs_body import CHUNK
from relayd_sandbox.gitlfs_store import OID_RE, Grant, ObjectRejected, TokenError

if TYPE_CHECKING:
    from relayd_sandbox.gitlfs_http import GitLfsListener

logger = logging.getLogger(__name__)

_OBJECT_PATH = re.compile(r"/objects/(?P<oid>[0-9a-f]{64})")
_RANGE = re.compile(r"bytes=(?P<start>\d*)-(?P<end>\d*)")
_MAX_JSON_BODY = 16 * 1024 * 1024


class LfsEndpoints(HandlerBase):
    """``/<owner>/<name>.git/info/lfs/*``, on the main origin or the storage origin."""

    def _lfs(self, owner: str, name: str, rest: str) -> None:
        if rest == "/objects/batch" and not cast("GitLfsListener", self.server).storage:
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
        if cast("GitLfsListener", self.server).storage:
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
        if app.action_auth == "basic" and not cast("GitLfsListener", self.server).storage:
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
            size = min(CHUNK, max(1024, int(rate / 20))) if rate else CHUNK
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
                size = min(CHUNK, left, max(1024, int(rate / 20)) if rate else CHUNK)
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
