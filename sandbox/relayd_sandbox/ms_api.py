"""ModelScope's HTTP upload API on the sandbox git + LFS server's origin, as the modelscope SDK drives it
(``HubApi.upload_folder``: a blob pre-check, one PUT per missing blob, then a commit API call), so a
client that needs no git lands its commits in the same bare repository that ``git clone`` and
``git lfs pull`` read back (docs/real-services.md, "ModelScope HTTP upload API").

Routes (``{type}`` is ``models`` or ``datasets``; both reach the one bare repo of ``owner/name``)::

    POST /api/v1/repos/{type}/{owner}/{name}/info/lfs/objects/batch   the pre-check
    PUT  /api/v1/repos/{type}/{owner}/{name}/info/lfs/objects/{oid}   one blob (the pre-check's href)
    POST /api/v1/repos/{type}/{owner}/{name}/commit/{revision}        one commit of up to 2000 actions

Every answer is ModelScope's envelope ``{"Code", "Data", "Message", "RequestId", "Success"}``; a
failure has ``Code`` equal to its HTTP status and ``Success`` false. Auth is the SDK's cookie
``m_session_id=<token>`` or ``Authorization: Bearer <token>``: none gives 401 ``用户未登录``, a wrong
one 403. A blob any repository of the server holds counts as present for every repository (the
pre-check's global dedupe); a commit naming it links it into the committing repo's LFS store, so
``git lfs pull`` finds it there. A blob PUT above ``max_object_size`` is refused as nginx refuses a
body over its limit (413 and its HTML page, before the body is read); its bytes are hashed while
stored and a mismatch stores nothing (400). Knobs live in ``MsApiKnobs`` (``server.modelscope``);
failures are injected with ``fail_next("ms_batch" | "ms_upload" | "ms_commit", status, …)``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayd_sandbox.gitlfs_body import BadRequest
from relayd_sandbox.gitlfs_lfs import LfsEndpoints
from relayd_sandbox.gitlfs_store import OID_RE, ObjectRejected, lfs_pointer

if TYPE_CHECKING:
    from relayd_sandbox.gitlfs import Endpoint

logger = logging.getLogger(__name__)

_API = re.compile(
    r"/api/v1/repos/(?P<type>models|datasets)/(?P<owner>[A-Za-z0-9][A-Za-z0-9_.-]*)/"
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)/(?P<rest>.+)"
)
_BLOB = re.compile(r"info/lfs/objects/(?P<oid>[0-9a-f]{64})")
_COMMIT = re.compile(r"commit/(?P<revision>[A-Za-z0-9][A-Za-z0-9_./-]{0,199})")
_MAX_REQUEST = 64 * 1024 * 1024
# The server's own words, as modelscope-hub's errors._CN_TO_EN translates them ("User not logged in.").
NOT_LOGGED_IN = "用户未登录"
MODEL_MISSING = "模型不存在"  # "Model does not exist." (the same table)


@dataclass
class MsApiKnobs:
    """Knobs and records of the ModelScope HTTP API (``GitLfsServer.modelscope``)."""

    #: The most objects one pre-check may name: the SDK's group size (UPLOAD_VALIDATE_BLOB_BATCH_SIZE);
    #: a larger request is refused with 400 (what the real server does with more is not known).
    max_precheck_objects: int = 64
    #: The most actions one commit may hold (modelscope-hub 0.5.1: more is answered 422).
    max_commit_actions: int = 2000
    prechecks: list[tuple[str, int]] = field(default_factory=list)
    """(repo, objects asked) of each authorized pre-check."""
    commits: list[tuple[str, str, int, str]] = field(default_factory=list)
    """(repo, revision, actions, commit sha) of each commit made."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_precheck(self, repo: str, count: int) -> None:
        with self.lock:
            self.prechecks.append((repo, count))

    def record_commit(self, repo: str, revision: str, actions: int, commit: str) -> None:
        with self.lock:
            self.commits.append((repo, revision, actions, commit))

    def reset(self) -> None:
        with self.lock:
            self.prechecks.clear()
            self.commits.clear()


class MsApiEndpoints(LfsEndpoints):
    """``/api/v1/repos/…``: ModelScope's pre-check, blob PUT and commit API (see the module doc)."""

    def _ms_api(self, path: str) -> None:
        match = _API.fullmatch(path)
        if match is None:
            self._envelope(404, f"Not found: {path}")
            return
        owner, name, rest = match["owner"], match["name"], match["rest"]
        try:
            self.app.repo_path(owner, name)
        except ValueError as exc:
            self._envelope(400, str(exc))
            return
        blob = _BLOB.fullmatch(rest)
        commit = _COMMIT.fullmatch(rest)
        if rest == "info/lfs/objects/batch" and self.command == "POST":
            if self._ms_auth() and not self._ms_injected("ms_batch") and self._ms_repo(owner, name):
                self._precheck(owner, name)
        elif blob is not None and self.command == "PUT":
            self._put_blob(owner, name, blob["oid"])
        elif commit is not None and self.command == "POST":
            if self._ms_auth() and not self._ms_injected("ms_commit") and self._ms_repo(owner, name):
                self._commit(owner, name, commit["revision"])
        else:
            self._envelope(404, f"Not found: {self.command} {path}")

    # -- answers -----------------------------------------------------------------------------------

    def _envelope(
        self, status: int, message: str, data: object = None, headers: dict[str, str] | None = None
    ) -> None:
        """Answer *status* with ModelScope's envelope (``Code`` is the HTTP status)."""
        request_id = uuid.uuid4().hex
        document = {
            "Code": status,
            "Data": data,
            "Message": message,
            "RequestId": request_id,
            "Success": status == 200,
        }
        payload = json.dumps(document, ensure_ascii=False).encode()
        self._send_bytes(
            status, payload, "application/json;charset=UTF-8", {"x-request-id": request_id, **(headers or {})}
        )

    def _ms_auth(self) -> bool:
        """Return True when the request carries the token (cookie ``m_session_id`` or Bearer); otherwise
        answer 401 (none) or 403 (a wrong one)."""
        sent = []
        for part in (self.headers.get("Cookie") or "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == "m_session_id":
                sent.append(value)
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer":
            sent.append(value.strip())
        if any(self.app.credentials_ok(self.app.username, each) for each in sent):
            return True
        if sent:
            self._envelope(403, "Authentication token does not exist or invalid.")
        else:
            self._envelope(401, NOT_LOGGED_IN)
        return False

    def _ms_injected(self, endpoint: Endpoint) -> bool:
        failure = self.app.take_failure(endpoint)
        if failure is None:
            return False
        logger.info("injecting %d into %s %s", failure.status, self.command, self.path)
        self._envelope(failure.status, failure.message, None, self._failure_headers(failure.retry_after))
        return True

    def _ms_repo(self, owner: str, name: str) -> bool:
        app = self.app
        if app.has_repo(owner, name):
            return True
        if app.auto_create_repos:
            app.new_repo(owner, name)
            return True
        self._envelope(404, MODEL_MISSING)
        return False

    def _ms_json(self) -> dict[str, Any] | None:
        """Return the request's JSON object, or answer 400/413 and return None."""
        try:
            document = json.loads(self.body.read_all(_MAX_REQUEST))
        except BadRequest:
            self._envelope(413, f"Request body over {_MAX_REQUEST} bytes")
            return None
        except (ValueError, UnicodeDecodeError):
            self._envelope(400, "Request body is not JSON")
            return None
        if not isinstance(document, dict):
            self._envelope(400, "Request body must be a JSON object")
            return None
        return document

    # -- the pre-check -----------------------------------------------------------------------------

    def _precheck(self, owner: str, name: str) -> None:
        app, knobs = self.app, self.app.modelscope
        request = self._ms_json()
        if request is None:
            return
        objects = request.get("objects")
        if request.get("operation") != "upload" or not isinstance(objects, list):
            self._envelope(400, "Need operation 'upload' and an 'objects' list")
            return
        knobs.record_precheck(f"{owner}/{name}", len(objects))
        if len(objects) > knobs.max_precheck_objects:
            self._envelope(
                400, f"At most {knobs.max_precheck_objects} objects per request, not {len(objects)}"
            )
            return
        answers = []
        for item in objects:
            oid = item.get("oid") if isinstance(item, dict) else None
            size = item.get("size") if isinstance(item, dict) else None
            if not isinstance(oid, str) or not OID_RE.fullmatch(oid):
                self._envelope(400, f"Invalid oid {oid!r}: expected 64 lowercase hex digits (sha256)")
                return
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                self._envelope(400, f"Invalid size {size!r} for {oid}")
                return
            if self._global_blob(oid, size) is not None:
                if not app.omit_stored:
                    answers.append({"oid": oid, "size": size})  # no actions: "already exists globally"
                continue
            href = f"{app.base_url}/api/v1/repos/models/{owner}/{name}/info/lfs/objects/{oid}"
            answers.append({"oid": oid, "size": size, "actions": {"upload": {"href": href}}})
        self._envelope(200, "success", {"objects": answers})

    def _global_blob(self, oid: str, size: int) -> Path | None:
        """Return a stored copy of blob *oid* of *size* bytes in any repository, or None."""
        for path in self.app.store.root.glob(f"*/*/{oid}"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_size == size:
                    return path
        return None

    # -- one blob ----------------------------------------------------------------------------------

    def _put_blob(self, owner: str, name: str, oid: str) -> None:
        app = self.app
        body = self.body
        limit = app.max_object_size
        if limit is not None and (body.length or 0) > limit:
            self._too_large()  # before auth, as the nginx in front of the API answers it
            return
        if not self._ms_auth() or self._ms_injected("ms_upload") or not self._ms_repo(owner, name):
            return
        if body.length is None:
            self._envelope(411, "Content-Length required")
            return
        app.count("put")
        try:
            app.store.receive(owner, name, oid, body.length, self._paced_body(oid))
        except ObjectRejected as exc:
            logger.info("rejected blob %s for %s/%s: %s", oid, owner, name, exc)
            self._envelope(400, f"Blob {oid} rejected: {exc}")
            return
        app.count("stored")
        self._envelope(200, "success")

    # -- the commit API ----------------------------------------------------------------------------

    def _commit(self, owner: str, name: str, revision: str) -> None:
        app, knobs = self.app, self.app.modelscope
        request = self._ms_json()
        if request is None:
            return
        actions = request.get("actions")
        if not isinstance(actions, list) or not actions:
            self._envelope(400, "A commit needs a non-empty 'actions' list")
            return
        if len(actions) > knobs.max_commit_actions:
            self._envelope(
                422, f"Too many actions in one commit: {len(actions)} > {knobs.max_commit_actions}"
            )
            return
        files: dict[str, bytes | None] = {}
        links: list[tuple[str, Path]] = []
        for item in actions:
            problem = self._commit_action(item, files, links, owner, name)
            if problem:
                self._envelope(400, problem)
                return
        for oid, source in links:
            _link(source, app.store.path(owner, name, oid))
        message = str(request.get("commit_message") or f"Upload to {owner}/{name}")
        try:
            commit = app.commit_server_side(owner, name, files, branch=revision, message=message)
        except ValueError as exc:
            self._envelope(400, str(exc))
            return
        except RuntimeError as exc:  # the ref moved under the commit (git update-ref's compare-and-swap)
            self._envelope(409, f"Could not update refs, try again: {exc}")
            return
        knobs.record_commit(f"{owner}/{name}", revision, len(actions), commit)
        self._envelope(200, "success", {"oid": commit})

    def _commit_action(
        self,
        item: object,
        files: dict[str, bytes | None],
        links: list[tuple[str, Path]],
        owner: str,
        name: str,
    ) -> str | None:
        """Add one commit action to *files* (and the blobs it names to *links*); return the problem."""
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not item["path"]:
            return "Each action needs a path"
        path, kind, verb = item["path"], item.get("type"), item.get("action")
        if verb == "delete":
            files[path] = None
            return None
        if verb not in ("create", "update"):
            return f"Unknown action {verb!r} for {path}"
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return f"Invalid size for {path}"
        if kind == "lfs":
            return self._lfs_content(item, path, size, files, links, (owner, name))
        if kind == "normal":
            return _inline_content(item, path, size, files)
        return f"Unknown type {kind!r} for {path}"

    def _lfs_content(
        self,
        item: dict[str, Any],
        path: str,
        size: int,
        files: dict[str, bytes | None],
        links: list[tuple[str, Path]],
        repo: tuple[str, str],
    ) -> str | None:
        oid = item.get("sha256")
        if not isinstance(oid, str) or not OID_RE.fullmatch(oid):
            return f"Invalid sha256 for {path}"
        source = self._global_blob(oid, size)
        if source is None:
            return f"Blob {oid} of {path} has not been uploaded"
        if source != self.app.store.path(*repo, oid):
            links.append((oid, source))
        files[path] = lfs_pointer(oid, size)
        return None


def _inline_content(item: dict[str, Any], path: str, size: int, files: dict[str, bytes | None]) -> str | None:
    """Add a ``normal`` action's base64 content to *files*; return the problem."""
    if item.get("encoding") != "base64":
        return f"Unsupported encoding {item.get('encoding')!r} for {path}"
    try:
        content = base64.b64decode(str(item.get("content") or ""), validate=True)
    except binascii.Error:
        return f"Content of {path} is not base64"
    if len(content) != size:
        return f"Content of {path} is {len(content)} bytes, not {size}"
    files[path] = content
    return None


def _link(source: Path, target: Path) -> None:
    """Make blob *source* (another repository's) one of *target*'s repository's objects too."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".incoming-link-{uuid.uuid4().hex}")
    try:
        os.link(source, temp)
    except OSError:
        shutil.copyfile(source, temp)
    os.replace(temp, target)
