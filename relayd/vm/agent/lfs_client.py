"""The LFS batch-API client: which objects the server lacks, and an upload straight from the VM's file.

One batch request says which objects the server lacks (it omits ``actions`` for the ones it has, or
leaves them out); each missing object is streamed with one ``PUT`` from the file itself, hashed on the
way (the last chunk is held back unless the bytes match the oid, so a changed file never completes an
upload), then verified when the server asks for it. An action about to expire is asked for again; a
413 blocks the file ("split the file"); answers are read bounded (lfs_answers.py). Nothing is copied:
there is no ``.git/lfs/objects`` and no ``git add``. The client sends the token only to the remote's
origin and follows no redirect.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import queue
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from .core import AgentError, Context
from .lfs_answers import (
    CHUNK,
    MISMATCH,
    RECEIVED,
    HttpStatus,
    Scrubber,
    expiring,
    expiring_answer,
    http_failure,
    message_of,
    origin,
    read_bounded,
    size_text,
    tail,
    too_large,
)
from .proxy import agent_route

LFS_JSON = "application/vnd.git-lfs+json"
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


def lfs_endpoint(remote: str) -> str:
    """Return the LFS endpoint git-lfs derives from a git remote URL."""
    remote = remote.rstrip("/")
    return (remote if remote.endswith(".git") else remote + ".git") + "/info/lfs"


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

    def _json(
        self,
        url: str,
        document: dict[str, Any],
        headers: dict[str, str],
        what: str,
        media_type: str = LFS_JSON,
    ) -> Any:
        """POST *document* to *url* as *media_type* and return the decoded JSON answer. Raise
        HttpStatus for an answer other than 2xx, AgentError when the server is unreachable or answers
        too much or no JSON."""
        body = json.dumps(document).encode()
        connection, target = self._connect(url)
        try:
            connection.request(
                "POST",
                target,
                body=body,
                headers=dict(headers, **{"Content-Type": media_type, "Accept": media_type}),
            )
            response = connection.getresponse()
            failed = response.status >= 300
            payload, more = read_bounded(response, MAX_ERROR_BODY if failed else MAX_ANSWER)
        except (OSError, http.client.HTTPException) as exc:
            raise AgentError(
                "%s failed: %s" % (what, self.scrub(str(exc) or type(exc).__name__)),
                kind="retryable",
                error_class="network",
            ) from None
        finally:
            connection.close()
        if failed:
            raise HttpStatus(response, message_of(payload, self.scrub))
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
        except HttpStatus as answer:
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
                % (item["oid"][:12], size_text(item["size"]), what, answer.message)
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
        if answer is None or expiring_answer(answer, EXPIRY_MARGIN):
            answer = self._answer_for(oid, size, ref)
        if expiring_answer(answer, 0):
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
        message = self.scrub(tail(str(error.get("message") or ""), 300))
        if code == 413:
            raise too_large(
                "%s is %s; the batch answer refused it: %s" % (path or oid[:12], size_text(size), message)
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
        sent, refused = self.send_file(
            str(action.get("href")), self._action_headers(action), oid, size, path, progress
        )
        if refused is not None:
            if refused.status == 403:  # an expired action token: a new batch request gets a new one
                raise AgentError(
                    "the upload of %s was refused (403): %s" % (oid[:12], refused.message),
                    kind="retryable",
                    error_class="auth",
                )
            if refused.status == 422:
                raise self.refused_bytes(path, oid, refused.message)
            raise refused.failure("the upload of %s" % oid[:12], self.repo)
        return sent

    def send_file(
        self,
        href: str,
        headers: dict[str, str],
        oid: str,
        size: int,
        path: str,
        progress: Callable[[int], None],
    ) -> tuple[int, HttpStatus | None]:
        """Stream the file at *path* (object *oid* of *size* bytes) to *href* in one ``PUT`` with
        *headers*; return the bytes sent and the server's answer when it is not 2xx. The file is
        guarded while it is sent (``verify``): the last chunk is held back unless it is still the
        object, so the server never receives a complete wrong object. Raise AgentError when the
        connection fails, blocked ``too_large`` on a 413 (read even after the body was cut short), and
        blocked ``integrity`` when the file changed."""
        headers = dict(headers)
        headers["Content-Length"] = str(size)
        headers.setdefault("Content-Type", "application/octet-stream")
        hasher = Hasher() if self.verify == "sha256" else None
        sent = 0
        with open(path, "rb") as source:
            opened = os.fstat(source.fileno())
            if opened.st_size != size:
                raise _changed(path, oid, "its size is %d, not %d" % (opened.st_size, size))
            connection, target = self._connect(href)
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
                payload, _ = read_bounded(response, MAX_ERROR_BODY)
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
            refused = HttpStatus(response, message_of(payload, self.scrub))
            if refused.status == 413:
                raise too_large(
                    "%s is %s; the upload was answered 413: %s" % (path, size_text(size), refused.message)
                )
            return sent, refused
        if sent < size:
            raise AgentError(
                "the server answered %d to the upload of %s after %d of %d bytes"
                % (response.status, oid[:12], sent, size),
                kind="retryable",
                error_class="protocol",
            )
        return sent, None

    def refused_bytes(self, path: str, oid: str, message: str) -> AgentError:
        """Return the error for an upload whose bytes the server refused: blocked when the file no
        longer hashes to *oid* (hashed again unless it was hashed while sent), else the server measured
        wrong bytes (MISMATCH: the daemon sends them again once, then blocks)."""
        if self.verify != "sha256":
            got = _sha256_file(path, self.context)
            if got != oid:
                return _changed(path, oid, "its sha256 is %s" % got)
        return AgentError(
            "the server rejected the bytes of %s: %s" % (oid[:12], message),
            kind="retryable",
            error_class=MISMATCH,
        )

    def _verify(self, action: dict[str, Any], oid: str, size: int) -> None:
        try:
            self._json(
                str(action.get("href")), {"oid": oid, "size": size}, self._action_headers(action), "verify"
            )
        except HttpStatus as answer:
            exc = answer.failure("verify", self.repo)
            if answer.status in (404, 422):
                # The object did not arrive whole: the daemon sends it again (once; then it blocks).
                exc.kind, exc.error_class = "retryable", MISMATCH
            elif exc.kind != "retryable" and exc.error_class not in ("quota", "redirect"):
                # Another refusal (an action token that expired during a long PUT, unannounced): ask the
                # batch API again, which says whether the object arrived.
                exc.kind = "retryable"
            raise exc from None


def _early_answer(connection: http.client.HTTPConnection) -> http.client.HTTPResponse | None:
    """Return the answer a server sent before it took the whole request body, if it sent one."""
    try:
        return connection.getresponse()
    except (OSError, http.client.HTTPException):
        return None


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
