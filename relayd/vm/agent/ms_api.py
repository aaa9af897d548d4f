"""ModelScope's HTTP upload API, the way its own SDK pushes (``HubApi.upload_folder``): no git at all.

A pre-check (``POST {endpoint}/api/v1/repos/{type}s/{owner}/{name}/info/lfs/objects/batch``, at most
64 objects a request) says which blobs ModelScope lacks: a blob any repository on ModelScope holds
comes back without an upload href (or is left out), and counts as present. Each missing blob goes up
in one ``PUT`` to its href, streamed from the file by the LFS client's hash-guarded uploader
(``LfsClient.send_file``). One commit per snapshot (``POST …/commit/{revision}``) then names every
file: LFS files as ``lfs`` actions (sha256 and size), small and metadata files inline in base64 as
``normal`` actions, files removed upstream as ``delete`` actions, in batches of at most 256 actions and
8 MiB of inline content. Every answer is ModelScope's envelope ``{Code, Data, Message}``; a ``Code``
other than 200 is a failure even under HTTP 200.

Small files are copied where the agent runs when their transfer is done (``ms_stash``), since the
commit is made later, when staging may have let the original go.

Auth is the SDK's: the cookie ``m_session_id=<token>`` and ``Authorization: Bearer <token>``, sent only
to the endpoint's own origin (a blob href elsewhere is a presigned URL and gets neither).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import tempfile
import time
from typing import Any

from .core import AgentError, Context, op
from .lfs_answers import HttpStatus, http_failure
from .lfs_client import LfsClient, Progress
from .lfs_files import LFS_ATTRIBUTES, OID, attribute_pattern, check_path, merge_attributes
from .lfs_upload import with_retries

#: Objects per pre-check (modelscope-hub ``UPLOAD_VALIDATE_BLOB_BATCH_SIZE``).
PRECHECK_LIMIT = 64
#: Actions per commit (modelscope-hub ``UPLOAD_COMMIT_BATCH_SIZE``; the server refuses over 2000).
COMMIT_ACTIONS = 256
#: Inline (base64) bytes per commit request (modelscope-hub 0.5.1 splits a commit there).
COMMIT_INLINE_BYTES = 8 * 1024 * 1024
JSON = "application/json"
#: The largest small file ms_stash keeps for the commit (the SDK warns above 500 MB of plain content).
INLINE_LIMIT = 64 * 1024 * 1024
STASH = "ms-inline"


class MsClient(LfsClient):
    """ModelScope's pre-check, blob PUT and commit API for one repository (``owner/name``)."""

    def __init__(
        self,
        endpoint: str,
        repo: str,
        repo_type: str,
        token: str,
        context: Context,
        *,
        activity_timeout: float = 3600.0,
        verify: str = "sha256",
        proxy: str = "",
    ) -> None:
        endpoint = endpoint.rstrip("/")
        check_path(repo)
        # The LFS client's plumbing (connections, proxy, scrubbing, the guarded PUT) over the
        # endpoint's origin: the token goes nowhere else.
        super().__init__(
            "%s/%s.git" % (endpoint, repo),
            token,
            context,
            activity_timeout=activity_timeout,
            verify=verify,
            proxy=proxy,
        )
        self.api = "%s/api/v1/repos/%ss/%s" % (endpoint, repo_type, repo)
        self._session = {"Cookie": "m_session_id=" + token, "Authorization": "Bearer " + token}

    def _call(self, path: str, document: dict[str, Any], what: str) -> Any:
        """POST *document* to the repo's API *path*; return the envelope's ``Data``."""
        try:
            reply = self._json(self.api + path, document, dict(self._session), what, JSON)
        except HttpStatus as answer:
            raise answer.failure(what, self.repo) from None
        if not isinstance(reply, dict):
            raise AgentError("%s answered no envelope" % what, kind="retryable", error_class="protocol")
        code = reply.get("Code")
        if str(code) != "200":
            status = int(code) if isinstance(code, int) and 400 <= code < 600 else 502
            message = self.scrub(str(reply.get("Message") or "no message"))[:300]
            raise http_failure(status, "Code %s: %s" % (code, message), what=what, repo=self.repo)
        return reply.get("Data")

    def precheck(self, objects: list[dict[str, Any]]) -> dict[str, str | None]:
        """Return {oid: upload href, or None when ModelScope already holds the blob} for *objects*."""
        found: dict[str, str | None] = {}
        for start in range(0, len(objects), PRECHECK_LIMIT) or [0]:  # asks once even for none
            group = [{"oid": o["oid"], "size": o["size"]} for o in objects[start : start + PRECHECK_LIMIT]]
            data = self._call(
                "/info/lfs/objects/batch", {"operation": "upload", "objects": group}, "the pre-check"
            )
            answers = data.get("objects") if isinstance(data, dict) else None
            if not isinstance(answers, list):
                raise AgentError(
                    "the pre-check answer has no objects", kind="retryable", error_class="protocol"
                )
            hrefs = {}
            for answer in answers:
                if isinstance(answer, dict):
                    upload = (answer.get("actions") or {}).get("upload") or {}
                    hrefs[answer.get("oid")] = upload.get("href") or None
            for item in group:
                found[item["oid"]] = hrefs.get(item["oid"])  # left out of the answer: present
        return found

    def put_blob(self, href: str, oid: str, size: int, path: str, progress: Progress) -> int:
        """PUT the blob from *path* to *href*; return the bytes sent."""
        headers = dict(self._session) if self._same_origin(href) else {}
        sent, refused = self.send_file(href, headers, oid, size, path, progress)
        if refused is None:
            return sent
        if refused.status in (400, 422):
            # The server's sha256 check (what it answers is not documented; the sandbox says 400).
            raise self.refused_bytes(path, oid, refused.message)
        raise refused.failure("the upload of %s" % oid[:12], self.repo)

    def commit(self, revision: str, message: str, actions: list[dict[str, Any]]) -> str:
        """Make one commit of *actions* on *revision*; return its sha."""
        data = self._call(
            "/commit/%s" % revision, {"commit_message": message, "actions": actions}, "the commit"
        )
        commit = data.get("oid") if isinstance(data, dict) else None
        if not isinstance(commit, str) or not commit:
            raise AgentError("the commit answer names no commit", kind="retryable", error_class="protocol")
        return commit


def _client(params: dict[str, Any], secrets: dict[str, str], context: Context) -> MsClient:
    return MsClient(
        str(params.get("endpoint") or ""),
        str(params.get("repo") or ""),
        str(params.get("repo_type") or "model"),
        secrets.get("token") or "",
        context,
        activity_timeout=float(params.get("activity_timeout") or 3600.0),
        verify="stat" if params.get("verify") == "stat" else "sha256",
        proxy=secrets.get("proxy") or "",
    )


def _objects(params: dict[str, Any]) -> list[dict[str, Any]]:
    objects = list(params.get("objects") or [])
    for item in objects:
        if not OID.match(str(item.get("oid"))) or not isinstance(item.get("size"), int):
            raise AgentError("bad object %r" % item.get("oid"), kind="permanent", error_class="protocol")
    return objects


@op("ms_precheck")
def ms_precheck(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Return ``{"present": [oid], "missing": [oid]}`` for ``objects`` ([{oid, size}])."""
    client = _client(params, secrets, context)
    objects = _objects(params)
    attempts = int(params.get("attempts") or 3)
    found = with_retries(context, attempts, lambda: client.precheck(objects), "pre-check")
    return {
        "present": [oid for oid, href in found.items() if href is None],
        "missing": [oid for oid, href in found.items() if href is not None],
    }


@op("ms_blobs")
def ms_blobs(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Upload the ``objects`` ([{oid, size, path}]) ModelScope lacks, one PUT each, with retries.

    Events: ``progress`` {oid, sent, size}, ``object`` {oid, skipped, sent}, ``retry``. Result:
    ``{"objects": [{oid, size, skipped, sent}]}`` (``skipped``: ModelScope already held it).
    """
    client = _client(params, secrets, context)
    objects = _objects(params)
    attempts = int(params.get("attempts") or 3)
    found = with_retries(context, attempts, lambda: client.precheck(objects), "pre-check")
    results = []
    for item in objects:
        oid, size = item["oid"], item["size"]
        progress = Progress(context, oid, size)
        href = found.get(oid)
        if href is not None:
            _upload_one(client, attempts, item, href, progress)
        skipped = href is None
        results.append({"oid": oid, "size": size, "skipped": skipped, "sent": progress.total})
        context.emit("object", oid=oid, size=size, skipped=skipped, sent=progress.total)
    return {"objects": results}


def _upload_one(client: MsClient, attempts: int, item: dict[str, Any], href: str, progress: Progress) -> None:
    """PUT one blob from its file with retries; a retry asks the pre-check again, since the blob may
    have arrived meanwhile (from this PUT, or anyone's)."""
    oid, size, path = item["oid"], item["size"], str(item.get("path") or "")
    given: list[str | None] = [href]

    def attempt() -> None:
        target, given[0] = given[0], None
        if target is None:
            target = client.precheck([{"oid": oid, "size": size}]).get(oid)
            if target is None:
                return
        if not os.path.isfile(path):
            raise AgentError(
                "blob %s is not on ModelScope and its file %s is not here" % (oid[:12], path),
                kind="blocked",
                error_class="missing",
                hint="the file must be here again (run `relayctl retry` on its earlier hops)",
            )
        progress.previous = 0
        client.put_blob(target, oid, size, path, progress)

    with_retries(client.context, attempts, attempt, "upload %s" % oid[:12])


@op("ms_stash")
def ms_stash(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Copy the small file ``path`` to ``<work_dir>/ms-inline/<sha256>`` for the commit to read later;
    refuse it unless it is ``expect_blob`` (its git blob id) when that is given. Result: {key, size}."""
    folder = os.path.join(str(params.get("work_dir") or ""), STASH)
    if not os.path.isabs(folder):
        raise AgentError("work_dir must be an absolute path", kind="permanent", error_class="config")
    os.makedirs(folder, exist_ok=True)
    path = str(params.get("path") or "")
    limit = int(params.get("limit") or INLINE_LIMIT)
    with open(path, "rb") as source:
        data = source.read(limit + 1)
    if len(data) > limit:
        raise AgentError(
            "%s is over %d bytes, too large to commit inline" % (path, limit),
            kind="blocked",
            error_class="too_large",
            hint="a metadata file this large cannot travel in a commit: leave it out with the repo's "
            "--exclude glob, then run `relayctl retry`",
        )
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id
    expected = params.get("expect_blob")
    if expected and expected != blob:
        raise AgentError(
            "%s is not the file upstream has (git blob %s, expected %s)" % (path, blob, expected),
            kind="blocked",
            error_class="integrity",
            hint="the copy here changed after it was verified: delete it and run `relayctl retry`",
        )
    key = hashlib.sha256(data).hexdigest()
    target = os.path.join(folder, key)
    if not os.path.isfile(target):
        descriptor, temp = tempfile.mkstemp(prefix=".stash-", dir=folder)
        try:
            with os.fdopen(descriptor, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
    return {"key": key, "size": len(data)}


def _inline(folder: str, entry: dict[str, Any]) -> bytes:
    key = str(entry.get("stash") or "")
    if not OID.match(key):
        raise AgentError("bad stash key for %s" % entry.get("path"), kind="permanent", error_class="protocol")
    try:
        with open(os.path.join(folder, key), "rb") as stashed:
            return stashed.read()
    except FileNotFoundError:
        raise AgentError(
            "the copy of %s kept for the commit is gone" % entry.get("path"),
            kind="blocked",
            error_class="missing",
            hint="run `relayctl retry` on the file's ms_upload transfer so it is kept again",
        ) from None


def commit_actions(files: list[dict[str, Any]], removed: list[str], folder: str) -> list[dict[str, Any]]:
    """Return the commit actions for the snapshot's *files* ({path, lfs, oid, size} or {path, stash})
    and the *removed* paths, with a ``.gitattributes`` that covers every LFS path."""
    actions: list[dict[str, Any]] = []
    lfs_paths = []
    attributes = ""
    for entry in files:
        path = check_path(str(entry.get("path") or ""))
        if entry.get("lfs"):
            lfs_paths.append(path)
            actions.append(
                {
                    "action": "create",
                    "path": path,
                    "type": "lfs",
                    "size": int(entry["size"]),
                    "sha256": str(entry["oid"]),
                    "content": "",
                    "encoding": "",
                }
            )
        elif path == ".gitattributes":
            attributes = _inline(folder, entry).decode("utf-8", "replace")
        else:
            actions.append(_normal(path, _inline(folder, entry)))
    if lfs_paths or attributes:
        covering = "\n".join("%s %s" % (attribute_pattern(p), LFS_ATTRIBUTES) for p in lfs_paths)
        merged = "\n".join(merge_attributes(attributes, covering)) + "\n"
        actions.append(_normal(".gitattributes", merged.encode("utf-8")))
    for path in removed:
        actions.append({"action": "delete", "path": check_path(path)})
    return actions


def _normal(path: str, data: bytes) -> dict[str, Any]:
    return {
        "action": "create",
        "path": path,
        "type": "normal",
        "size": len(data),
        "sha256": "",
        "content": base64.b64encode(data).decode("ascii"),
        "encoding": "base64",
    }


def batches(actions: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split *actions* into commits of at most COMMIT_ACTIONS actions and COMMIT_INLINE_BYTES of
    inline content (one larger file still goes alone)."""
    groups: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    inline = 0
    for action in actions:
        size = len(action.get("content") or "")
        if current and (len(current) >= COMMIT_ACTIONS or inline + size > COMMIT_INLINE_BYTES):
            groups.append(current)
            current, inline = [], 0
        current.append(action)
        inline += size
    if current:
        groups.append(current)
    return groups


@op("ms_commit")
def ms_commit(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Commit the snapshot's ``files`` and ``removed`` paths on ``revision`` (see commit_actions), in
    as few commits as the limits allow, each retried (``Retry-After`` honoured). Result:
    ``{"commit": the last sha, "commits": [sha], "actions": n}``."""
    client = _client(params, secrets, context)
    folder = os.path.join(str(params.get("work_dir") or ""), STASH)
    actions = commit_actions(list(params.get("files") or []), list(params.get("removed") or []), folder)
    revision = str(params.get("revision") or "master")
    message = str(params.get("message") or "Upload with relayd")
    attempts = int(params.get("attempts") or 5)
    commits = []
    groups = batches(actions)
    for number, group in enumerate(groups, 1):
        title = message if len(groups) == 1 else "%s (part %d of %d)" % (message, number, len(groups))
        started = time.monotonic()
        sha = with_retries(
            context, attempts, functools.partial(client.commit, revision, title, group), "commit"
        )
        context.emit("stage", stage="commit", part=number, parts=len(groups), took=time.monotonic() - started)
        commits.append(sha)
    return {"commit": commits[-1] if commits else "", "commits": commits, "actions": len(actions)}
