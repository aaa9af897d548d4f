"""Git LFS on the VM: upload objects straight from the VM's files, publish one commit per snapshot.

Objects go up through the LFS batch API with relayd's own client (``lfs_upload``): one batch request
says which objects the server lacks (it omits ``actions`` for the ones it has, or leaves them out),
each missing object is streamed with one ``PUT`` from the file itself, hashed on the way (the last
chunk is held back unless the bytes match the oid, so a changed file never completes an upload), then
verified when the server asks for it. An action about to expire is asked for again; a 413 blocks the
file ("split the file"); answers are read bounded. Nothing is copied: there is no
``.git/lfs/objects`` and no ``git add``.

The commit (``git_publish``) is built with plumbing in a small scratch bare repository: fetch the
branch tip (depth 1), read its tree into a private index, write LFS pointers and small files as
blobs, merge ``.gitattributes`` so every pointer is covered by ``filter=lfs``, drop the paths removed
upstream, ``write-tree``, ``commit-tree``, check that the commit holds every path of the snapshot
(git drops a path it refuses with only a warning), and push, with git-lfs's pre-push hook installed as
a safety net. A rejected non-fast-forward is rebuilt on the new tip. Before reporting success every object of
the snapshot is confirmed present with a batch ``download`` request.

The token never leaves the agent's memory except through the environment of git children, where a
credential helper reads it and gives it only for the remote's scheme, host and port (never in a URL,
argv, ``.git/config``, an event or an error message); git follows no redirect, and the LFS client sends
the token only to the remote's origin.
Every git child runs in its own process group, killed as a group on cancel or when the link dies.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import fcntl
import functools
import hashlib
import http.client
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from .core import AgentError, Cancelled, Context, op, track_child_group, untrack_child_group
from .proxy import PROXY_VARIABLES, agent_route

TOKEN_ENV = "RELAYD_MS_TOKEN"  # noqa: S105 - the name of the variable, not a secret
# The origin the token belongs to, as git and git-lfs name it to a credential helper.
PROTOCOL_ENV = "RELAYD_MS_PROTOCOL"
HOST_ENV = "RELAYD_MS_HOST"
# Answers only "get", and only for the remote's own scheme and host[:port] (git passes protocol=,
# host= and maybe path= lines on stdin), with the token read from the child's environment then.
CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || return 0; p=; h=; while IFS= read -r l; do case "$l" in '
    'protocol=*) p="${l#protocol=}";; host=*) h="${l#host=}";; esac; done; '
    'test -n "$p" && test "$p" = "$%s" && test "$h" = "$%s" && '
    'echo username=oauth2 && echo "password=$%s"; }; f' % (PROTOCOL_ENV, HOST_ENV, TOKEN_ENV)
)
LFS_JSON = "application/vnd.git-lfs+json"
POINTER_VERSION = "https://git-lfs.github.com/spec/v1"
LFS_ATTRIBUTES = "filter=lfs diff=lfs merge=lfs -text"
SMALL_FILE_LIMIT = 64 * 1024
# Files the hub parses must stay plain text, whatever their size (reference §2).
PLAIN_NAMES = frozenset(
    {
        "README.md",
        ".gitattributes",
        ".gitignore",
        "configuration.json",
        "configuration.yaml",
        "configuration.yml",
        "dataset_infos.json",
        "config.json",
        ".msc",
        ".mdl",
    }
)
# fmt: off
LFS_SUFFIXES = (
    ".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gz", ".h5", ".joblib", ".mlmodel", ".model",
    ".msgpack", ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb", ".pickle", ".pkl", ".pt", ".pth",
    ".rar", ".safetensors", ".tar", ".tflite", ".tgz", ".wasm", ".xz", ".zip", ".zst",
)
# fmt: on
CHUNK = 1024 * 1024
BATCH_LIMIT = 100
# The most relayd reads of an answer from the LFS server: a batch answer (100 objects of a few hundred
# bytes each) and an error body; anything longer is not read into memory.
MAX_ANSWER = 8 * 1024 * 1024
MAX_ERROR_BODY = 64 * 1024
# An action that expires within this many seconds is asked for again instead of used, as git-lfs does
# (tq/api.go objectExpirationToTransfer).
EXPIRY_MARGIN = 5.0
CONNECT_TIMEOUT = 30.0
PROGRESS_EVERY = 0.5
#: The error class of an object the server measured wrong (a refused PUT, a failed verify); the
#: lfs_push hop turns it into relayd.errors.IntegrityMismatch.
MISMATCH = "mismatch"
KILL_GRACE = 5.0
NULL_SHA = "0" * 40
_OID = re.compile(r"^[0-9a-f]{64}$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


# -- what is LFS, and what a pointer looks like ------------------------------------------------------


def wants_lfs(path: str, size: int, upstream_lfs: bool) -> bool:
    """Given a file's *path*, *size* and whether upstream stores it in LFS, return whether it goes to
    ModelScope as an LFS pointer (True) or as plain content (False)."""
    name = path.rsplit("/", 1)[-1]
    if name in PLAIN_NAMES or size == 0:
        return False
    return upstream_lfs or size > SMALL_FILE_LIMIT or name.lower().endswith(LFS_SUFFIXES)


def pointer(oid: str, size: int) -> bytes:
    """Return the Git LFS pointer file of object *oid* of *size* bytes, byte for byte."""
    return ("version %s\noid sha256:%s\nsize %d\n" % (POINTER_VERSION, oid, size)).encode("ascii")


def lfs_endpoint(remote: str) -> str:
    """Return the LFS endpoint git-lfs derives from a git remote URL."""
    remote = remote.rstrip("/")
    return (remote if remote.endswith(".git") else remote + ".git") + "/info/lfs"


def check_path(path: str) -> str:
    """Return *path* if it is a safe relative path for a git tree; raise a permanent AgentError."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or any(part in ("", ".", "..", ".git") for part in parts)
        or any(c in path for c in "\0\n\r")
    ):
        raise AgentError("unsafe path %r in the snapshot" % path, kind="permanent", error_class="integrity")
    return path


class Scrubber:
    """Remove the token, and anything that looks like a credential, from text meant for a person."""

    _PATTERNS = (
        (re.compile(r"(?i)(authorization:\s*)[^\r\n]*"), r"\1***"),
        (re.compile(r"(://[^/@\s:]*:)[^@\s/]+@"), r"\1***@"),
        (re.compile(r"(?i)\b(bearer|basic|token)([ =:]+)[A-Za-z0-9._~+/=-]{8,}"), r"\1\2***"),
    )

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, text: str) -> str:
        if self.token:
            text = text.replace(self.token, "***")
        for pattern, replacement in self._PATTERNS:
            text = pattern.sub(replacement, text)
        return text


def _tail(text: str, limit: int = 600) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


# -- HTTP errors as the daemon should treat them -----------------------------------------------------


def http_failure(
    status: int, message: str, *, what: str, repo: str, retry_after: float | None = None
) -> AgentError:
    """Return the AgentError for an HTTP *status* answered to *what* (e.g. "the batch request")."""
    detail = "%s got HTTP %d: %s" % (what, status, message or "no message")
    if status == 401:
        return AgentError(
            detail,
            kind="blocked",
            error_class="auth",
            hint="ModelScope refused the access token for %s: put a valid token with write access in "
            "[modelscope] token, token_env or token_file, then run `relayctl retry`" % repo,
        )
    if status == 403:
        return AgentError(
            detail,
            kind="blocked",
            error_class="auth",
            hint="the token may not write to %s: use a token of an owner or collaborator of that repo, "
            "then run `relayctl retry`" % repo,
        )
    if status == 404:
        return AgentError(
            detail,
            kind="blocked",
            error_class="not_found",
            hint="create the model repo %s on ModelScope (or fix [modelscope] remote or the repo's "
            "modelscope_repo destination), then run `relayctl retry`" % repo,
        )
    if status == 413:
        return too_large(detail)
    if status == 507:
        return AgentError(
            detail,
            kind="blocked",
            error_class="quota",
            hint="the ModelScope account or repo %s is over its storage quota: free space or raise "
            "the quota, then run `relayctl retry`" % repo,
        )
    if 300 <= status < 400:
        return AgentError(
            detail,
            kind="blocked",
            error_class="redirect",
            hint="relayd follows no redirect, so the token never goes to an address it was not given: "
            "set [modelscope] remote to the address the server redirects to, then run `relayctl retry`",
        )
    if status == 429:
        return AgentError(detail, kind="retryable", error_class="rate_limit", retry_after=retry_after)
    if status >= 500 or status in (408, 409, 423):
        return AgentError(detail, kind="retryable", error_class="server", retry_after=retry_after)
    return AgentError(detail, kind="permanent", error_class="protocol")


def too_large(detail: str) -> AgentError:
    """Return the AgentError for an object (or request) the server refuses as too large (413)."""
    return AgentError(
        "the object is larger than the server accepts: split the file (%s)" % detail,
        kind="blocked",
        error_class="too_large",
        hint="ModelScope refuses objects this large (reports put the limit near 100 GB): split the file "
        "into smaller shards upstream (say 5-10 GB each, as safetensors shards are), or leave it out "
        "with the repo's --exclude glob, then run `relayctl retry`",
    )


def _size_text(size: int) -> str:
    value, unit = float(size), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return "%d bytes" % size if unit == "bytes" else "%d bytes (%.1f %s)" % (size, value, unit)


def _read_bounded(response: http.client.HTTPResponse, limit: int) -> tuple[bytes, bool]:
    """Return at most *limit* bytes of *response*'s body, and whether it had more (left unread)."""
    parts = []
    total = 0
    while total <= limit:
        chunk = response.read(min(CHUNK, limit + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)[:limit], total > limit


def _location(response: http.client.HTTPResponse) -> str:
    """Return where a redirect points, without its query (which may hold a signature)."""
    parts = urlsplit(response.getheader("Location") or "")
    return "%s://%s%s" % (parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path) if parts.netloc else "?"


def origin(url: str) -> tuple[str, str, int | None]:
    """Return the (scheme, host, port) of *url*, the port filled in from the scheme when implied."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.\d+)?(?:([Zz])|([+-])(\d\d):(\d\d))"
)


def expires_at(text: object) -> float | None:
    """Return the Unix time of an RFC 3339 ``expires_at``, or None when it is absent, unreadable or
    Go's zero time (``0001-01-01T00:00:00Z``, which servers in Go send for "never")."""
    match = _RFC3339.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None or int(match.group(1)) < 1970:
        return None
    moment = calendar.timegm(tuple(int(match.group(i)) for i in range(1, 7)))
    if match.group(8):
        offset = (int(match.group(9)) * 60 + int(match.group(10))) * 60
        moment -= offset if match.group(8) == "+" else -offset
    return float(moment)


def expiring(action: dict[str, Any], received: float, margin: float) -> bool:
    """Return whether *action*, received at *received* (time.monotonic()), expires within *margin*
    seconds: ``expires_in`` (seconds from when it was received) wins over ``expires_at``, as the batch
    API says; an action with neither never expires."""
    expires_in = action.get("expires_in")
    if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) and expires_in:
        return time.monotonic() + margin >= received + expires_in
    moment = expires_at(action.get("expires_at"))
    return moment is not None and time.time() + margin >= moment


def _message_of(body: bytes, scrub: Scrubber) -> str:
    text = body[:4096].decode("utf-8", "replace")
    try:
        document = json.loads(text)
        if isinstance(document, dict) and isinstance(document.get("message"), str):
            text = document["message"]
    except ValueError:
        title = _HTML_TITLE.search(text)  # an error page from a proxy in front (nginx's 413 is one)
        if title:
            text = title.group(1)
    return scrub(_tail(" ".join(text.split()), 300))


_HTML_TITLE = re.compile(r"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


# -- the LFS client ----------------------------------------------------------------------------------


class LfsClient:
    """The batch API, basic transfer and verify against one repository's LFS endpoint."""

    def __init__(
        self,
        remote: str,
        token: str,
        context: Context,
        *,
        activity_timeout: float = 3600.0,
        verify: str = "sha256",
        proxy: str = "",
    ) -> None:
        if not remote.startswith(("http://", "https://")) or "@" in urlsplit(remote).netloc:
            raise AgentError(
                "the remote must be an http(s) URL without credentials",
                kind="permanent",
                error_class="config",
            )
        if not token:
            raise AgentError(
                "no ModelScope token was sent to the agent",
                kind="blocked",
                error_class="auth",
                hint="set [modelscope] token_env (default MODELSCOPE_TOKEN), token_file or token",
            )
        self.remote = remote
        self.endpoint = lfs_endpoint(remote)
        self.repo = urlsplit(remote).path.strip("/")
        if self.repo.endswith(".git"):
            self.repo = self.repo[:-4]
        self.context = context
        self.scrub = Scrubber(token)
        self.activity_timeout = activity_timeout
        # How a file is checked while it is sent: "sha256" hashes it (the last chunk is held back
        # unless it matches the oid); "stat" (for a file sha256-verified where it landed) only checks
        # that its size, mtime and inode did not change, and hashes it only if the server refuses.
        self.verify = verify
        # modelscope.proxy; else the VM's proxy variables (relayd/vm/agent/proxy.py).
        self.proxy = proxy
        self._basic = "Basic " + base64.b64encode(("oauth2:" + token).encode()).decode()

    # -- plumbing --------------------------------------------------------------------------------

    def _connect(self, url: str) -> tuple[http.client.HTTPConnection, str]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AgentError("the server sent an unusable URL", kind="permanent", error_class="protocol")
        route = agent_route(url, self.proxy, "modelscope.proxy")
        connection = route.connection(CONNECT_TIMEOUT)
        try:
            connection.connect()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise AgentError(
                "cannot reach %s: %s" % (route.describe(), self.scrub(str(exc))),
                kind="retryable",
                error_class="network",
            ) from None
        if connection.sock is not None:
            connection.sock.settimeout(self.activity_timeout)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return connection, target

    def _same_origin(self, url: str) -> bool:
        """Return whether *url* has the remote's scheme, host and port (the token's only address)."""
        return origin(url) == origin(self.remote)

    def _json(self, url: str, document: dict[str, Any], headers: dict[str, str], what: str) -> Any:
        """POST *document* to *url* and return the decoded JSON answer. Raise _Status for an answer
        other than 2xx, AgentError when the server is unreachable or answers too much or no JSON."""
        body = json.dumps(document).encode()
        connection, target = self._connect(url)
        try:
            connection.request(
                "POST",
                target,
                body=body,
                headers=dict(headers, **{"Content-Type": LFS_JSON, "Accept": LFS_JSON}),
            )
            response = connection.getresponse()
            failed = response.status >= 300
            payload, more = _read_bounded(response, MAX_ERROR_BODY if failed else MAX_ANSWER)
        except (OSError, http.client.HTTPException) as exc:
            raise AgentError(
                "%s failed: %s" % (what, self.scrub(str(exc) or type(exc).__name__)),
                kind="retryable",
                error_class="network",
            ) from None
        finally:
            connection.close()
        if failed:
            raise _Status(response, _message_of(payload, self.scrub))
        if more:
            raise AgentError(
                "%s was answered with more than %d bytes; relayd reads no more" % (what, MAX_ANSWER),
                kind="retryable",
                error_class="protocol",
            )
        try:
            return json.loads(payload.decode("utf-8"))
        except ValueError:
            raise AgentError(
                "%s answered something that is not JSON" % what, kind="retryable", error_class="protocol"
            ) from None

    # -- the batch API ---------------------------------------------------------------------------

    def batch(self, operation: str, objects: list[dict[str, Any]], ref: str | None) -> list[dict[str, Any]]:
        """Ask the batch API about *objects* ({oid, size}); return the server's object answers, each
        with the moment it arrived under RECEIVED (for its actions' ``expires_in``)."""
        answers: list[dict[str, Any]] = []
        for start in range(0, len(objects), BATCH_LIMIT) or [0]:
            answers.extend(self._batch_group(operation, objects[start : start + BATCH_LIMIT], ref))
        return answers

    def _batch_group(
        self, operation: str, group: list[dict[str, Any]], ref: str | None
    ) -> list[dict[str, Any]]:
        document: dict[str, Any] = {
            "operation": operation,
            "transfers": ["basic"],
            "objects": [{"oid": o["oid"], "size": o["size"]} for o in group],
            "hash_algo": "sha256",
        }
        if ref:
            document["ref"] = {"name": ref}
        what = "the LFS batch request (%s)" % operation
        try:
            reply = self._json(
                self.endpoint + "/objects/batch", document, {"Authorization": self._basic}, what
            )
        except _Status as answer:
            if answer.status != 413:
                raise answer.failure(what, self.repo) from None
            if len(group) > 1:
                # "The batch API request contained too many objects" (batch API): ask in halves.
                half = len(group) // 2
                return self._batch_group(operation, group[:half], ref) + self._batch_group(
                    operation, group[half:], ref
                )
            item = group[0]
            raise too_large(
                "object %s is %s; %s was answered 413: %s"
                % (item["oid"][:12], _size_text(item["size"]), what, answer.message)
            ) from None
        received = time.monotonic()
        found = reply.get("objects") if isinstance(reply, dict) else None
        if not isinstance(found, list):
            raise AgentError("the batch answer has no objects list", kind="retryable", error_class="protocol")
        return [dict(item, **{RECEIVED: received}) for item in found if isinstance(item, dict)]

    def missing(self, objects: list[dict[str, Any]]) -> list[str]:
        """Return the oids of *objects* the server cannot serve (a batch download request)."""
        if not objects:
            return []
        answers = {a.get("oid"): a for a in self.batch("download", objects, None)}
        absent = []
        for item in objects:
            answer = answers.get(item["oid"]) or {}
            actions = answer.get("actions") or {}
            if answer.get("error") or "download" not in actions:
                absent.append(item["oid"])
        return absent

    # -- one object ------------------------------------------------------------------------------

    def upload(
        self,
        oid: str,
        size: int,
        path: str,
        ref: str | None,
        progress: Callable[[int], None],
        *,
        answer: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Upload object *oid* from *path* unless the server has it; return {oid, size, skipped, sent}.

        *answer* is an earlier batch answer for the object, when the caller has one; it is used unless
        one of its actions expires within EXPIRY_MARGIN seconds, else the batch API is asked again.
        """
        if answer is None or _expiring_answer(answer, EXPIRY_MARGIN):
            answer = self._answer_for(oid, size, ref)
        if _expiring_answer(answer, 0):
            raise AgentError(
                "the batch answer for %s holds actions that have already expired" % oid[:12],
                kind="retryable",
                error_class="protocol",
            )
        self._raise_object_error(answer, oid, size, path)
        upload = (answer.get("actions") or {}).get("upload")
        if not upload:
            return {"oid": oid, "size": size, "skipped": True, "sent": 0}
        sent = self._put(upload, oid, size, path, progress)
        verify = (answer.get("actions") or {}).get("verify")
        if verify and expiring(verify, answer.get(RECEIVED, 0.0), 0):
            # The PUT outlived the verify action: a fresh answer says whether the object arrived.
            fresh = self._answer_for(oid, size, ref)
            self._raise_object_error(fresh, oid, size, path)
            if (fresh.get("actions") or {}).get("upload"):
                raise AgentError(
                    "the server does not have %s after its upload" % oid[:12],
                    kind="retryable",
                    error_class="integrity",
                )
            verify = (fresh.get("actions") or {}).get("verify")
        if verify:
            self._verify(verify, oid, size)
        return {"oid": oid, "size": size, "skipped": False, "sent": sent}

    def _answer_for(self, oid: str, size: int, ref: str | None) -> dict[str, Any]:
        """Return a fresh batch answer for one object; an object left out of it is already there (the
        spec's other way to say so, as ModelScope's own client reads it)."""
        answers = self.batch("upload", [{"oid": oid, "size": size}], ref)
        return next((a for a in answers if a.get("oid") == oid), {RECEIVED: time.monotonic()})

    def _raise_object_error(self, answer: dict[str, Any], oid: str, size: int, path: str) -> None:
        error = answer.get("error")
        if not isinstance(error, dict):
            return
        code = error.get("code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else 0
        message = self.scrub(_tail(str(error.get("message") or ""), 300))
        if code == 413:
            raise too_large(
                "%s is %s; the batch answer refused it: %s" % (path or oid[:12], _size_text(size), message)
            )
        failure = http_failure(code, message, what="the batch answer for %s" % oid, repo=self.repo)
        if code == 422:
            failure.kind, failure.error_class = "permanent", "integrity"
        raise failure

    def _action_headers(self, action: dict[str, Any]) -> dict[str, str]:
        headers = {str(k): str(v) for k, v in (action.get("header") or {}).items()}
        href = str(action.get("href") or "")
        # The user's token goes only where the server asked for it or to the remote's own origin
        # (scheme, host and port: never in clear over http, never to another port or host).
        if not any(k.lower() == "authorization" for k in headers) and self._same_origin(href):
            headers["Authorization"] = self._basic
        return headers

    def _put(
        self, action: dict[str, Any], oid: str, size: int, path: str, progress: Callable[[int], None]
    ) -> int:
        headers = self._action_headers(action)
        headers["Content-Length"] = str(size)
        headers.setdefault("Content-Type", "application/octet-stream")
        hasher = Hasher() if self.verify == "sha256" else None
        sent = 0
        with open(path, "rb") as source:
            opened = os.fstat(source.fileno())
            if opened.st_size != size:
                raise _changed(path, oid, "its size is %d, not %d" % (opened.st_size, size))
            connection, target = self._connect(str(action.get("href")))
            try:
                connection.putrequest("PUT", target, skip_accept_encoding=True)
                for key, value in headers.items():
                    connection.putheader(key, value)
                connection.endheaders()
                try:
                    while sent < size:
                        self.context.check_cancelled()
                        chunk = source.read(min(CHUNK, size - sent))
                        if not chunk:
                            raise _changed(path, oid, "it ended at %d bytes, expected %d" % (sent, size))
                        # Hold back the last bytes unless the file is right: the server never sees a
                        # complete wrong object.
                        if hasher is None:
                            if sent + len(chunk) == size and _fingerprint(os.stat(path)) != _fingerprint(
                                opened
                            ):
                                raise _changed(path, oid, "it changed while it was sent")
                        elif sent + len(chunk) == size:
                            got = hasher.finish(chunk)
                            if got != oid:
                                raise _changed(path, oid, "its sha256 is %s" % got)
                        else:
                            hasher.feed(chunk)
                        connection.send(chunk)
                        sent += len(chunk)
                        progress(sent)
                except OSError:
                    # A server refusing the body may answer and close before it all arrived (nginx
                    # does for a body over its size limit): that answer is what counts.
                    early = _early_answer(connection)
                    if early is None:
                        raise
                    response = early
                else:
                    response = connection.getresponse()
                payload, _ = _read_bounded(response, MAX_ERROR_BODY)
            except (OSError, http.client.HTTPException) as exc:
                raise AgentError(
                    "uploading %s stopped after %d of %d bytes: %s"
                    % (oid[:12], sent, size, self.scrub(str(exc) or type(exc).__name__)),
                    kind="retryable",
                    error_class="network",
                ) from None
            finally:
                if hasher is not None:
                    hasher.stop()
                connection.close()
        if response.status >= 300:
            message = _message_of(payload, self.scrub)
            if response.status == 403:  # an expired action token: a new batch request gets a new one
                raise AgentError(
                    "the upload of %s was refused (403): %s" % (oid[:12], message),
                    kind="retryable",
                    error_class="auth",
                )
            if response.status == 413:
                raise too_large(
                    "%s is %s; the upload was answered 413: %s" % (path, _size_text(size), message)
                )
            if response.status == 422:
                if hasher is None:
                    got = _sha256_file(path, self.context)
                    if got != oid:
                        raise _changed(path, oid, "its sha256 is %s" % got)
                raise AgentError(
                    "the server rejected the bytes of %s: %s" % (oid[:12], message),
                    kind="retryable",
                    error_class=MISMATCH,
                )
            raise _Status(response, message).failure("the upload of %s" % oid[:12], self.repo)
        if sent < size:
            raise AgentError(
                "the server answered %d to the upload of %s after %d of %d bytes"
                % (response.status, oid[:12], sent, size),
                kind="retryable",
                error_class="protocol",
            )
        return sent

    def _verify(self, action: dict[str, Any], oid: str, size: int) -> None:
        try:
            self._json(
                str(action.get("href")), {"oid": oid, "size": size}, self._action_headers(action), "verify"
            )
        except _Status as answer:
            exc = answer.failure("verify", self.repo)
            if answer.status in (404, 422):
                # The object did not arrive whole: the daemon sends it again (once; then it blocks).
                exc.kind, exc.error_class = "retryable", MISMATCH
            elif exc.kind != "retryable" and exc.error_class not in ("quota", "redirect"):
                # Another refusal (an action token that expired during a long PUT, unannounced): ask the
                # batch API again, which says whether the object arrived.
                exc.kind = "retryable"
            raise exc from None


RECEIVED = "_relayd_received"


def _expiring_answer(answer: dict[str, Any], margin: float) -> bool:
    """Return whether any action of a batch *answer* expires within *margin* seconds."""
    actions = answer.get("actions")
    received = answer.get(RECEIVED)
    if not isinstance(actions, dict) or not isinstance(received, float):
        return False
    return any(isinstance(a, dict) and expiring(a, received, margin) for a in actions.values())


def _early_answer(connection: http.client.HTTPConnection) -> http.client.HTTPResponse | None:
    """Return the answer a server sent before it took the whole request body, if it sent one."""
    try:
        return connection.getresponse()
    except (OSError, http.client.HTTPException):
        return None


class _Status(Exception):
    """An HTTP answer other than 2xx from the LFS server."""

    def __init__(self, response: http.client.HTTPResponse, message: str) -> None:
        super().__init__(message)
        self.status = response.status
        self.message = message
        self.retry_after = _retry_after(response.getheader("Retry-After"))
        self.location = _location(response) if 300 <= response.status < 400 else ""

    def failure(self, what: str, repo: str) -> AgentError:
        """Return the AgentError for this answer to *what*."""
        message = "redirects to %s" % self.location if self.location else self.message
        return http_failure(self.status, message, what=what, repo=repo, retry_after=self.retry_after)


class Hasher:
    """sha256 of an upload, computed in a thread while the chunks are sent (hashlib releases the
    GIL, so hashing and sending overlap on two cores)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, name="relayd-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            chunk = self._chunks.get()
            if chunk is None:
                return
            self._digest.update(chunk)

    def feed(self, chunk: bytes) -> None:
        self._chunks.put(chunk)

    def finish(self, last: bytes) -> str:
        """Add the *last* chunk and return the hex digest of everything fed."""
        self._chunks.put(last)
        self.stop()
        return self._digest.hexdigest()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._chunks.put(None)
            self._thread.join()


class Progress:
    """Report an object's upload progress as ``progress`` events, at most every PROGRESS_EVERY s."""

    def __init__(self, context: Context, oid: str, size: int) -> None:
        self.context = context
        self.oid = oid
        self.size = size
        self.last = 0.0
        self.previous = 0
        self.total = 0  # bytes sent over every attempt

    def __call__(self, sent: int) -> None:
        self.total += sent - self.previous if sent >= self.previous else sent
        self.previous = sent
        now = time.monotonic()
        if sent == self.size or now - self.last >= PROGRESS_EVERY:
            self.last = now
            self.context.emit("progress", oid=self.oid, sent=sent, size=self.size)


def _fingerprint(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)


def _sha256_file(path: str, context: Context) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while True:
            context.check_cancelled()
            chunk = source.read(CHUNK)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)


def _changed(path: str, oid: str, what: str) -> AgentError:
    return AgentError(
        "the file %s on the VM does not match object %s: %s" % (path, oid[:12], what),
        kind="blocked",
        error_class="integrity",
        hint="the copy on the VM changed after it was verified: delete it and run `relayctl retry` "
        "so that it is fetched again",
    )


def _sleep(context: Context, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        context.check_cancelled()
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def with_retries(context: Context, attempts: int, action: Callable[[], Any], what: str) -> Any:
    """Run *action*, retrying retryable AgentErrors *attempts* times in all with a short back-off
    (the daemon's own back-off takes over after that)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return action()
        except AgentError as exc:
            # A copy the server measured wrong goes back to the daemon at once: it sends the object
            # again once and blocks when that repeats (relayd.errors.IntegrityMismatch).
            if exc.kind != "retryable" or exc.error_class == MISMATCH or attempt >= attempts:
                raise
            delay = min(30.0, 2.0 ** (attempt - 1))
            if exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, 120.0))
            context.emit("retry", what=what, attempt=attempt, delay=delay, error=str(exc))
            _sleep(context, delay)


def _client(params: dict[str, Any], secrets: dict[str, str], context: Context) -> LfsClient:
    return LfsClient(
        str(params.get("remote") or ""),
        secrets.get("token") or "",
        context,
        activity_timeout=float(params.get("activity_timeout") or 3600.0),
        verify="stat" if params.get("verify") == "stat" else "sha256",
        proxy=secrets.get("proxy") or "",
    )


def upload_objects(
    client: LfsClient, objects: list[dict[str, Any]], ref: str | None, attempts: int
) -> list[dict[str, Any]]:
    """Upload the objects ({oid, size, path}) the server lacks, one at a time, with retries; return
    [{oid, size, skipped, sent}], with ``omitted`` true for an object the batch answer left out."""
    for item in objects:
        if not _OID.match(str(item.get("oid"))) or not isinstance(item.get("size"), int):
            raise AgentError("bad object %r" % item.get("oid"), kind="permanent", error_class="protocol")
    context = client.context
    if not objects:
        return []
    # One batch request first says what is missing; a skipped object costs nothing more.
    asked = time.monotonic()
    known = {
        a.get("oid"): a
        for a in with_retries(
            context, attempts, functools.partial(client.batch, "upload", objects, ref), "batch"
        )
    }
    results = []
    for item in objects:
        oid, size, path = item["oid"], item["size"], item.get("path")
        answer = known.get(oid) or {}
        if not answer.get("error") and not (answer.get("actions") or {}).get("upload"):
            # Left out of the answer, or there without actions: the server has it.
            results.append(
                {"oid": oid, "size": size, "skipped": True, "sent": 0, "omitted": oid not in known}
            )
            context.emit("object", oid=oid, size=size, skipped=True)
            continue
        if not path or not os.path.isfile(path):
            raise AgentError(
                "object %s is not on the server and its file %s is not on the VM" % (oid[:12], path),
                kind="blocked",
                error_class="missing",
                hint="the file must be on the VM again (run `relayctl retry` on its earlier hops)",
            )
        # The first attempt reuses the batch answer while it is under a minute old (a server need not
        # say when its actions expire; client.upload asks again for one about to); a retry asks again
        # (the object may have arrived meanwhile, or the action token expired).
        fresh: list[dict[str, Any] | None] = [answer if time.monotonic() - asked < 60 else None]
        progress = Progress(context, oid, size)

        def attempt(
            oid: str = oid,
            size: int = size,
            path: str = path,
            fresh: list[dict[str, Any] | None] = fresh,
            progress: Progress = progress,
        ) -> dict[str, Any]:
            given, fresh[0] = fresh[0], None
            progress.previous = 0
            return client.upload(oid, size, path, ref, progress, answer=given)

        result = with_retries(context, attempts, attempt, "upload %s" % oid[:12])
        if progress.total:
            # A retry found the object stored by an earlier attempt (e.g. verify failed): sent, not
            # skipped.
            result = dict(result, skipped=False, sent=progress.total)
        results.append(result)
        context.emit("object", oid=oid, size=size, skipped=result["skipped"], sent=result["sent"])
    return results


@op("lfs_upload")
def lfs_upload(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Upload ``objects`` ([{oid, size, path}]) to ``remote``'s LFS store unless it has them.

    ``verify``: "sha256" (default) hashes each file as it is sent; "stat" trusts a file verified
    where it landed as long as its size, mtime and inode do not change.

    Events: ``progress`` {oid, sent, size}, ``object`` {oid, skipped, sent}, ``retry``. Result:
    ``{"objects": [{oid, size, skipped, sent}]}``.
    """
    client = _client(params, secrets, context)
    ref = params.get("ref")
    objects = list(params.get("objects") or [])
    attempts = int(params.get("attempts") or 3)
    return {"objects": upload_objects(client, objects, ref, attempts)}


@op("lfs_confirm")
def lfs_confirm(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Return ``{"missing": [oid]}``: the ``objects`` ([{oid, size}]) the server cannot serve."""
    client = _client(params, secrets, context)
    objects = list(params.get("objects") or [])
    missing = with_retries(
        context, int(params.get("attempts") or 3), lambda: client.missing(objects), "confirm"
    )
    return {"missing": missing, "checked": len(objects)}


# -- git ---------------------------------------------------------------------------------------------


class GitRunner:
    """Runs git for one scratch repository: private config, the token only in the environment, each
    child in its own process group (killed as a group on cancel)."""

    def __init__(
        self,
        git_dir: str,
        home: str,
        token: str,
        context: Context,
        *,
        remote: str,
        activity_timeout: float,
        concurrency: int = 2,
        proxy: str = "",
    ) -> None:
        self.git_dir = git_dir
        self.context = context
        self.scrub = Scrubber(token)
        os.makedirs(home, exist_ok=True)
        global_config = os.path.join(home, ".gitconfig")
        if not os.path.exists(global_config):
            with open(global_config, "w"):
                pass
        self.env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": home,
            "XDG_CONFIG_HOME": os.path.join(home, ".config"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": global_config,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "LC_ALL": "C",
            "GIT_DIR": git_dir,
            "GIT_AUTHOR_NAME": "relayd",
            "GIT_AUTHOR_EMAIL": "relayd@localhost",
            "GIT_COMMITTER_NAME": "relayd",
            "GIT_COMMITTER_EMAIL": "relayd@localhost",
            TOKEN_ENV: token,
            # The credential helper gives the token for this origin only (as git names it: the
            # remote's scheme, and its host with the port when the URL has one).
            PROTOCOL_ENV: urlsplit(remote).scheme,
            HOST_ENV: urlsplit(remote).netloc.rsplit("@", 1)[-1],
        }
        for name in (*PROXY_VARIABLES, "TMPDIR"):
            if os.environ.get(name):
                self.env[name] = os.environ[name]
        if proxy:
            # modelscope.proxy as git's http.proxy (which git-lfs reads too, and which overrides the
            # proxy variables), through the environment (git >= 2.31): its URL may hold a password,
            # which must not reach argv.
            self.env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.proxy", GIT_CONFIG_VALUE_0=proxy)
        self.config = [
            "credential.helper=",
            "credential.helper=" + CREDENTIAL_HELPER,
            "lfs.activitytimeout=%d" % max(30, int(activity_timeout)),
            "lfs.locksverify=false",
            # A redirect is an error, not an address to follow: git's default follows one on its first
            # request, to wherever it points. relayd says where it leads (see _git_failure).
            "http.followRedirects=false",
            "lfs.concurrenttransfers=%d" % max(1, concurrency),
            "core.hooksPath=" + os.path.join(git_dir, "hooks"),
            "gc.auto=0",
            "advice.detachedHead=false",
        ]

    def argv(self, args: list[str]) -> list[str]:
        command = ["git"]
        for item in self.config:
            command += ["-c", item]
        return command + args

    def run(
        self,
        args: list[str],
        *,
        data: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> tuple[int, bytes, str]:
        """Run ``git <args>``; return (exit code, stdout, scrubbed stderr). Raise AgentError when
        *check* and it fails, Cancelled when the daemon cancels (the child's group is killed)."""
        full_env = dict(self.env)
        full_env.update(env or {})
        try:
            child = subprocess.Popen(
                self.argv(args),
                stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                cwd=self.git_dir if os.path.isdir(self.git_dir) else None,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise AgentError(
                "git is not installed on the VM",
                kind="blocked",
                error_class="setup",
                hint="install git and git-lfs on the VM (e.g. apt-get install git git-lfs)",
            ) from None
        track_child_group(child.pid)
        try:
            out, err = self._communicate(child, data)
        finally:
            untrack_child_group(child.pid)
        stderr = self.scrub(err.decode("utf-8", "replace"))
        if check and child.returncode != 0:
            raise AgentError(
                "git %s failed (%d): %s" % (args[0], child.returncode, _tail(stderr)),
                kind="retryable",
                error_class="git",
            )
        return child.returncode, out, stderr

    def _communicate(self, child: subprocess.Popen[bytes], data: bytes | None) -> tuple[bytes, bytes]:
        while True:
            try:
                return child.communicate(data, timeout=0.2)
            except subprocess.TimeoutExpired:
                if self.context.cancelled:
                    kill_group(child)
                    raise Cancelled("cancelled by the daemon") from None

    def output(self, args: list[str], *, data: bytes | None = None, env: dict[str, str] | None = None) -> str:
        return self.run(args, data=data, env=env)[1].decode("utf-8", "replace").strip()


def kill_group(child: subprocess.Popen[bytes]) -> None:
    """Stop *child*'s whole process group: SIGTERM, then SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, KILL_GRACE)):
        with contextlib.suppress(OSError):
            os.killpg(child.pid, sig)
        try:
            child.communicate(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def scratch_dir(work_dir: str, remote: str) -> str:
    """Return the scratch bare repository for *remote* under *work_dir*."""
    parts = urlsplit(remote)
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", (parts.netloc.rsplit("@", 1)[-1] + parts.path).strip("/"))
    return os.path.join(work_dir, "repos", key.strip("._") or "repo")


def _open_scratch(params: dict[str, Any], secrets: dict[str, str], context: Context) -> GitRunner:
    work_dir = str(params.get("work_dir") or "")
    if not work_dir.startswith("/"):
        raise AgentError(
            "work_dir must be an absolute path on the VM", kind="permanent", error_class="config"
        )
    remote = str(params.get("remote") or "")
    git_dir = scratch_dir(work_dir, remote)
    if shutil.which("git") is None:
        raise AgentError(
            "git is not installed on the VM",
            kind="blocked",
            error_class="setup",
            hint="install git and git-lfs on the VM (e.g. apt-get install git git-lfs)",
        )
    runner = GitRunner(
        git_dir,
        os.path.join(work_dir, "home"),
        secrets.get("token") or "",
        context,
        remote=remote,
        activity_timeout=float(params.get("activity_timeout") or 3600.0),
        concurrency=int(params.get("concurrency") or 2),
        proxy=secrets.get("proxy") or "",
    )
    os.makedirs(os.path.dirname(git_dir), exist_ok=True)
    with open(git_dir + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isfile(os.path.join(git_dir, "HEAD")):
            partial = git_dir + ".init-%d" % os.getpid()
            shutil.rmtree(partial, ignore_errors=True)
            runner.run(["init", "--quiet", "--bare", partial], env={"GIT_DIR": partial})
            os.rename(partial, git_dir)
        if not os.path.isfile(os.path.join(git_dir, "hooks", "pre-push")):
            code, _, err = runner.run(["lfs", "install", "--local"], check=False)
            if code != 0:
                raise AgentError(
                    "git-lfs is not usable on the VM: %s" % _tail(err, 300),
                    kind="blocked",
                    error_class="setup",
                    hint="install git-lfs on the VM (e.g. apt-get install git-lfs)",
                )
    return runner


@op("git_blob")
def git_blob(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Store the small file ``path`` as a blob in the scratch repository of ``remote`` and return
    ``{"blob": <git blob id>, "size": n}``; check it against ``expect_blob`` when given."""
    path = str(params.get("path") or "")
    if not os.path.isfile(path):
        raise AgentError("%s is not on the VM" % path, kind="retryable", error_class="missing")
    runner = _open_scratch(params, secrets, context)
    blob = runner.output(["hash-object", "-w", "--no-filters", "--", path])
    expected = params.get("expect_blob")
    if expected and expected != blob:
        raise AgentError(
            "the file %s on the VM is not the upstream content (git blob %s, expected %s)"
            % (path, blob, expected),
            kind="blocked",
            error_class="integrity",
            hint="delete the copy on the VM and run `relayctl retry` so that it is fetched again",
        )
    return {"blob": blob, "size": os.path.getsize(path)}


# -- .gitattributes ------------------------------------------------------------------------------------


def attribute_pattern(path: str) -> str:
    """Return a .gitattributes pattern matching exactly *path* (anchored, glob characters escaped)."""
    escaped = "/" + re.sub(r"([\\*?\[])", r"\\\1", path)
    if re.search(r'[\s"]', escaped) or any(ord(c) > 126 for c in escaped):
        quoted = escaped.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")
        return '"%s"' % quoted
    return escaped


def merge_attributes(*texts: str) -> list[str]:
    """Return the lines of several .gitattributes files merged: the first file's lines in order, then
    each later file's lines that are not there yet."""
    lines: list[str] = []
    seen = set()
    for text in texts:
        for line in text.splitlines():
            key = line.strip()
            if key and key in seen:
                continue
            if key:
                seen.add(key)
            lines.append(line.rstrip("\r"))
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _filters(runner: GitRunner, paths: list[str], env: dict[str, str]) -> dict[str, str]:
    """Return path → the value of the ``filter`` attribute as the index's .gitattributes say."""
    if not paths:
        return {}
    data = b"".join(p.encode("utf-8") + b"\0" for p in paths)
    out = runner.run(["check-attr", "--cached", "-z", "--stdin", "filter"], data=data, env=env)[1]
    fields = out.split(b"\0")
    result = {}
    for index in range(0, len(fields) - 2, 3):
        result[fields[index].decode("utf-8")] = fields[index + 2].decode("utf-8")
    return result


# -- the publish -----------------------------------------------------------------------------------------


def _remote_tip(runner: GitRunner, remote: str, branch: str, repo: str) -> str | None:
    code, out, err = runner.run(["ls-remote", "--", remote, "refs/heads/" + branch], check=False)
    if code != 0:
        raise _git_failure("git ls-remote", err, repo)
    for line in out.decode("utf-8", "replace").splitlines():
        sha, _, ref = line.partition("\t")
        if ref.strip() == "refs/heads/" + branch and _SHA.match(sha):
            return sha
    return None


def _git_failure(what: str, stderr: str, repo: str) -> AgentError:
    """Map a failed git network command's (scrubbed) stderr to an AgentError with a hint."""
    text = stderr.lower()
    detail = "%s failed: %s" % (what, _tail(stderr))
    if "authentication failed" in text or "could not read username" in text or " 401" in text:
        return http_failure(401, _tail(stderr, 300), what=what, repo=repo)
    if " 403" in text or "permission denied" in text or "access denied" in text:
        return http_failure(403, _tail(stderr, 300), what=what, repo=repo)
    if "not found" in text or " 404" in text or "does not appear to be a git repository" in text:
        return http_failure(404, _tail(stderr, 300), what=what, repo=repo)
    if " 413" in text:
        return http_failure(413, _tail(stderr, 300), what=what, repo=repo)
    if "quota" in text or " 507" in text:
        return http_failure(507, _tail(stderr, 300), what=what, repo=repo)
    redirect = re.search(r"returned error: (3\d\d)", text)
    if redirect:  # http.followRedirects=false: git says only the status
        return http_failure(int(redirect.group(1)), _tail(stderr, 300), what=what, repo=repo)
    if "unable to find source for object" in text:
        return AgentError(detail, kind="retryable", error_class="integrity")
    return AgentError(detail, kind="retryable", error_class="network")


def _rejected(stdout: str, stderr: str) -> bool:
    text = (stdout + "\n" + stderr).lower()
    return any(
        marker in text
        for marker in ("non-fast-forward", "fetch first", "[rejected]", "stale info", "cannot lock ref")
    )


def _build(
    runner: GitRunner,
    parent: str | None,
    files: list[dict[str, Any]],
    removed: list[str],
    scratch: str,
) -> tuple[str, dict[str, str | None]]:
    """Build the snapshot's tree on top of *parent*'s; return its id and what each of the snapshot's
    paths must hold in it ({path: blob id, or None for .gitattributes, which is merged})."""
    handle, index = tempfile.mkstemp(prefix="index-", dir=scratch)
    os.close(handle)
    os.unlink(index)  # git wants to create it itself
    env = {"GIT_INDEX_FILE": index}
    pointers_dir = tempfile.mkdtemp(prefix="pointers-", dir=scratch)
    try:
        if parent:
            runner.run(["read-tree", parent], env=env)
        else:
            runner.run(["read-tree", "--empty"], env=env)
        wanted = {f["path"] for f in files}
        entries = ["0 %s\t%s" % (NULL_SHA, path) for path in removed if path not in wanted]
        expected: dict[str, str | None] = {}
        lfs_paths = []
        plain_paths = []
        # Pointers: tiny files written once, hashed by one git process.
        pointer_files = []
        for number, item in enumerate(f for f in files if f.get("lfs")):
            pointer_path = os.path.join(pointers_dir, str(number))
            with open(pointer_path, "wb") as out:
                out.write(pointer(item["oid"], item["size"]))
            pointer_files.append((item["path"], pointer_path))
        if pointer_files:
            listing = "".join(p + "\n" for _, p in pointer_files).encode()
            blobs = runner.output(
                ["hash-object", "-w", "--no-filters", "--stdin-paths"], data=listing
            ).split()
            for (path, _), blob in zip(pointer_files, blobs):
                entries.append("100644 %s\t%s" % (blob, path))
                lfs_paths.append(path)
                expected[path] = blob
        upstream_attributes = ""
        for item in files:
            if item.get("lfs"):
                continue
            blob = _plain_blob(runner, item)
            plain_paths.append(item["path"])
            if item["path"] == ".gitattributes":
                upstream_attributes = runner.output(["cat-file", "blob", blob])
                expected[".gitattributes"] = None
                continue
            expected[item["path"]] = blob
            entries.append(
                "%s %s\t%s" % ("100755" if item.get("executable") else "100644", blob, item["path"])
            )
        runner.run(
            ["update-index", "--add", "--replace", "-z", "--index-info"],
            data=b"".join(e.encode("utf-8") + b"\0" for e in entries),
            env=env,
        )
        existing = ""
        if parent:
            code, blob_bytes, _ = runner.run(["cat-file", "blob", parent + ":.gitattributes"], check=False)
            existing = blob_bytes.decode("utf-8", "replace") if code == 0 else ""
        lines = merge_attributes(existing, upstream_attributes)
        _stage_attributes(runner, lines, env)
        filters = _filters(runner, lfs_paths + plain_paths, env)
        additions = [
            "%s %s" % (attribute_pattern(p), LFS_ATTRIBUTES) for p in lfs_paths if filters.get(p) != "lfs"
        ]
        overrides = [
            "%s !filter !diff !merge text" % attribute_pattern(p)
            for p in plain_paths
            if filters.get(p) == "lfs" and p != ".gitattributes"
        ]
        if additions or overrides:
            lines = lines + (["", "# added by relayd"] if lines else []) + additions + overrides
            _stage_attributes(runner, lines, env)
            filters = _filters(runner, lfs_paths + plain_paths, env)
        wrong = [p for p in lfs_paths if filters.get(p) != "lfs"]
        wrong += [p for p in plain_paths if filters.get(p) == "lfs" and p != ".gitattributes"]
        if wrong:
            raise AgentError(
                ".gitattributes could not be made to cover %s" % ", ".join(wrong[:5]),
                kind="permanent",
                error_class="internal",
            )
        return runner.output(["write-tree"], env=env), expected
    finally:
        shutil.rmtree(pointers_dir, ignore_errors=True)
        for leftover in (index, index + ".lock"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def _check_tree(runner: GitRunner, commit: str, expected: dict[str, str | None]) -> None:
    """Raise a blocked AgentError unless the tree of *commit* holds every path of *expected* with its
    blob: git drops a path it refuses from the index with only a warning ("Ignoring path", exit 0)."""
    held = {}
    for record in runner.run(["ls-tree", "-r", "-z", "--full-tree", commit])[1].split(b"\0"):
        meta, _, path = record.partition(b"\t")
        if path:
            held[path] = meta.split()[-1].decode("ascii")
    wrong = [
        path
        for path, blob in sorted(expected.items())
        if held.get(path.encode("utf-8")) is None or (blob and held[path.encode("utf-8")] != blob)
    ]
    if wrong:
        raise AgentError(
            "git left %d path(s) of the snapshot out of its commit, so the snapshot would not be whole: %s"
            % (len(wrong), ", ".join(repr(p) for p in wrong[:5])),
            kind="blocked",
            error_class="path",
            hint="git refuses such paths, so this snapshot cannot be relayed as is: exclude them with the "
            "repo's globs (`relayctl add OWNER/NAME --replace --exclude GLOB`, repeating the repo's other "
            "options), or have them renamed upstream",
        )


def _stage_attributes(runner: GitRunner, lines: list[str], env: dict[str, str]) -> None:
    if not lines:
        runner.run(
            ["update-index", "--index-info"], data=("0 %s\t.gitattributes\n" % NULL_SHA).encode(), env=env
        )
        return
    text = "\n".join(lines) + "\n"
    blob = runner.output(["hash-object", "-w", "--stdin"], data=text.encode("utf-8"))
    runner.run(["update-index", "--add", "--cacheinfo", "100644,%s,.gitattributes" % blob], env=env)


def _plain_blob(runner: GitRunner, item: dict[str, Any]) -> str:
    """Return the blob of a plain file: the one staged earlier (``blob``) if the scratch repository
    still has it, else hashed now from ``source``."""
    blob = item.get("blob")
    if blob and _SHA.match(str(blob)):
        code, _, _ = runner.run(["cat-file", "-e", "%s^{blob}" % blob], check=False)
        if code == 0:
            return str(blob)
    source = item.get("source")
    if source and os.path.isfile(source):
        made = runner.output(["hash-object", "-w", "--no-filters", "--", source])
        if blob and made != blob:
            raise AgentError(
                "the file %s on the VM is not the upstream content of %s" % (source, item["path"]),
                kind="blocked",
                error_class="integrity",
                hint="delete the copy on the VM and run `relayctl retry` so that it is fetched again",
            )
        return made
    raise AgentError(
        "the content of %s is neither in the scratch repository nor on the VM" % item["path"],
        kind="blocked",
        error_class="missing",
        hint="the file must be on the VM again (run `relayctl retry` on its earlier hops)",
    )


@op("git_publish")
def git_publish(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Publish one snapshot as one commit on ``branch`` of ``remote``.

    Params: ``remote``, ``branch``, ``work_dir`` (for the scratch repository), ``message``,
    ``files`` ([{path, size, lfs, oid (LFS), blob (plain, staged by git_blob), source (path on the
    VM)}]), ``removed`` (paths to delete), ``force_push``, ``activity_timeout``, ``attempts`` (pushes
    rejected as non-fast-forward that are rebuilt before giving up).

    Result: ``{"commit", "parent", "tree", "pushed", "rebuilt", "uploaded", "confirmed"}``.
    """
    remote = str(params.get("remote") or "")
    branch = str(params.get("branch") or "master")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", branch) or ".." in branch:
        raise AgentError("invalid branch name %r" % branch, kind="permanent", error_class="config")
    files = list(params.get("files") or [])
    for item in files:
        check_path(str(item.get("path")))
        if item.get("lfs") and (
            not _OID.match(str(item.get("oid"))) or not isinstance(item.get("size"), int)
        ):
            raise AgentError(
                "LFS file %s has no valid oid" % item.get("path"), kind="permanent", error_class="protocol"
            )
    removed = [check_path(str(p)) for p in params.get("removed") or []]
    force = bool(params.get("force_push"))
    attempts = int(params.get("attempts") or 5)
    client = _client(params, secrets, context)
    runner = _open_scratch(params, secrets, context)
    ref = "refs/heads/" + branch
    lfs_objects = []
    seen = set()
    for item in files:
        if item.get("lfs") and item["oid"] not in seen:
            seen.add(item["oid"])
            lfs_objects.append({"oid": item["oid"], "size": item["size"], "path": item.get("source")})

    with open(runner.git_dir + ".publish.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Every object must be on the server before a pointer to it is pushed: normally one batch
        # request that skips them all; an object the server lost is sent again from the VM's file.
        context.emit("stage", step="objects", count=len(lfs_objects))
        objects = upload_objects(client, lfs_objects, ref, int(params.get("upload_attempts") or 3))
        uploaded = [r for r in objects if not r["skipped"]]
        # git-lfs (3.3.0, checked) waits for ever on an object a server leaves out of its batch
        # answer; every object was just found on the server, so its pre-push hook is told to skip.
        push_env = {"GIT_LFS_SKIP_PUSH": "1"} if any(r.get("omitted") for r in objects) else None
        commit = parent = tree = ""
        pushed = False
        rebuilt = 0
        for attempt in range(1, attempts + 1):
            context.check_cancelled()
            context.emit("stage", step="fetch", attempt=attempt)
            tip = with_retries(
                context, 3, lambda: _remote_tip(runner, remote, branch, client.repo), "ls-remote"
            )
            if tip:
                code, _, _ = runner.run(["cat-file", "-e", tip + "^{commit}"], check=False)
                if code != 0:
                    with_retries(
                        context,
                        3,
                        functools.partial(_fetch, runner, remote, branch, client.repo),
                        "fetch",
                    )
            parent = tip or ""
            context.emit("stage", step="build", parent=parent)
            tree, expected = _build(runner, tip, files, removed, runner.git_dir)
            if tip and runner.output(["rev-parse", tip + "^{tree}"]) == tree:
                commit = tip  # already published (e.g. a crash after the push): nothing to add
                _check_tree(runner, commit, expected)
                break
            message = str(params.get("message") or "Relay a snapshot")
            commit = runner.output(
                ["commit-tree", tree] + (["-p", tip] if tip else []) + ["-F", "-"],
                data=message.encode("utf-8"),
            )
            # Every path in the commit, checked before it is pushed: a snapshot missing a file is
            # never published, let alone called done.
            _check_tree(runner, commit, expected)
            context.emit("stage", step="push", commit=commit)
            refspec = ("+" if force else "") + commit + ":" + ref
            code, out, err = runner.run(
                ["push", "--porcelain", "--", remote, refspec], env=push_env, check=False
            )
            if code == 0:
                pushed = True
                break
            stdout = runner.scrub(out.decode("utf-8", "replace"))
            if not force and _rejected(stdout, err):
                rebuilt += 1
                context.emit("stage", step="rejected", attempt=attempt)
                continue
            raise _git_failure("git push", err + "\n" + stdout, client.repo)
        else:
            raise AgentError(
                "the branch %s kept moving while relayd pushed (%d attempts)" % (branch, attempts),
                kind="retryable",
                error_class="conflict",
            )
        context.emit("stage", step="confirm", count=len(lfs_objects))
        missing = with_retries(
            context,
            3,
            lambda: client.missing([{"oid": o["oid"], "size": o["size"]} for o in lfs_objects]),
            "confirm",
        )
        if missing:
            raise AgentError(
                "%d LFS object(s) of the snapshot are not on the server after the push (first %s)"
                % (len(missing), missing[0][:12]),
                kind="retryable",
                error_class="integrity",
            )
    return {
        "commit": commit,
        "parent": parent,
        "tree": tree,
        "pushed": pushed,
        "rebuilt": rebuilt,
        "uploaded": len(uploaded),
        "confirmed": len(lfs_objects),
    }


def _fetch(runner: GitRunner, remote: str, branch: str, repo: str) -> None:
    code, _, err = runner.run(
        [
            "fetch",
            "--quiet",
            "--no-tags",
            "--depth=1",
            "--",
            remote,
            "+refs/heads/%s:refs/remotes/origin/%s" % (branch, branch),
        ],
        check=False,
    )
    if code != 0:
        raise _git_failure("git fetch", err, repo)


@op("lfs_check")
def lfs_check(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Check that ``remote`` exists and accepts the token on both legs (git and LFS); return the
    branch tip (or None) and the git and git-lfs versions on the VM."""
    client = _client(params, secrets, context)
    client.batch("upload", [], "refs/heads/" + str(params.get("branch") or "master"))
    runner = _open_scratch(params, secrets, context)
    tip = _remote_tip(runner, client.remote, str(params.get("branch") or "master"), client.repo)
    code, out, err = runner.run(["lfs", "version"], check=False)
    if code != 0:
        raise AgentError(
            "git-lfs is not usable on the VM: %s" % _tail(err, 300),
            kind="blocked",
            error_class="setup",
            hint="install git-lfs on the VM (e.g. apt-get install git-lfs)",
        )
    return {
        "branch_head": tip,
        "git": runner.output(["--version"]),
        "git_lfs": out.decode("utf-8", "replace").strip(),
    }
