"""What the web server answers: the page, the status documents and the control verbs (docs/web.md).

The documents are those of `relayctl status --json` and `relayctl list --json`, built by the same
functions; the verbs call what relayctl's commands call, so a repo added here is checked exactly as
`relayctl add` checks it. Every answer is JSON (the page's files aside), and an error is
``{"format": 1, "error": MESSAGE}`` with the HTTP status that fits: 400 a bad request, 401 no or the
wrong token, 403 refused, 404 no such repo or path, 405 the wrong method, 413 too large, 415 not
JSON, 500 relayd could not do it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from relayd.catalogue.queries import Reader, bytes_avoided
from relayd.cli import repos
from relayd.cli.status import status_document, status_text
from relayd.config import Config
from relayd.errors import ConfigError, RelayError, UsageError
from relayd.web.access import JSON_TYPE, REALM, Access, Refusal
from relayd.web.documents import Document, Documents, encode
from relayd.web.throughput import Throughput

if TYPE_CHECKING:
    from relayd.catalogue.store import Store

log = logging.getLogger(__name__)

PREFIX = "/api/v1/"
MAX_BODY = 64 * 1024
#: The page's files: path → (file in relayd/web/static, content type).
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/icon.svg": ("icon.svg", "image/svg+xml"),
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}
VERBS = ("add", "pause", "resume", "retry", "remove")


@dataclass
class Request:
    """What the server read of one request."""

    method: str
    target: str
    headers: Message
    body: bytes = b""


@dataclass
class Answer:
    """What to send back."""

    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(status, encode({"format": 1, "error": message}), headers=dict(headers or {}))


def _refused(refusal: Refusal) -> Answer:
    return error(refusal.status, refusal.message, {"WWW-Authenticate": REALM} if refusal.challenge else None)


def _static(name: str) -> bytes:
    return resources.files("relayd.web").joinpath("static", name).read_bytes()


class WebApp:
    """Answers requests for one daemon: reads through *documents*, writes through *store*."""

    def __init__(
        self, config: Config, store: Store, documents: Documents, throughput: Throughput, access: Access
    ) -> None:
        self.config = config
        self.store = store
        self.documents = documents
        self.throughput = throughput
        self.access = access

    def answer(self, request: Request) -> Answer:
        """Return the answer to *request*, with the security headers; never raise."""
        try:
            answer = self._route(request)
        except UsageError as exc:
            answer = error(404 if isinstance(exc, repos.UnknownRepo) else 400, str(exc))
        except (ConfigError, RelayError) as exc:
            answer = error(500, str(exc))
        except Exception:
            log.exception("web: %s %s failed", request.method, request.target.split("?")[0])
            answer = error(500, "internal error: the daemon's log says more")
        answer.headers.update(SECURITY_HEADERS)
        answer.headers.setdefault("Cache-Control", "no-store")
        return answer

    def _route(self, request: Request) -> Answer:
        path, _, query = request.target.partition("?")
        if request.method in ("GET", "HEAD"):
            refusal = self.access.may_read(request.headers)
            if refusal is not None:
                return _refused(refusal)
            return self._read(path, parse_qs(query), request.headers)
        if request.method == "POST" and path.startswith(PREFIX) and path[len(PREFIX) :] in VERBS:
            refusal = self.access.may_write(request.headers)
            if refusal is not None:
                return _refused(refusal)
            return self._control(path[len(PREFIX) :], _json_body(request.body))
        if path in STATIC or path.startswith(PREFIX):
            allowed = "POST" if path[len(PREFIX) :] in VERBS else "GET, HEAD"
            return error(405, f"{request.method} is not allowed here (use {allowed})", {"Allow": allowed})
        return error(404, f"no such page: {path[:200]}")

    # -- reading -------------------------------------------------------------------------------------

    def _read(self, path: str, query: dict[str, list[str]], headers: Message) -> Answer:
        if path in STATIC:
            name, content_type = STATIC[path]
            return Answer(200, _static(name), content_type, {"Cache-Control": "no-cache"})
        if path == f"{PREFIX}status" and query.get("view") == ["text"]:
            return self._status_text(None, query)
        if path == f"{PREFIX}status":
            return _document(self.documents.get(("status",), _status(None)), headers)
        if path.startswith(f"{PREFIX}status/"):
            name = unquote(path[len(f"{PREFIX}status/") :])
            if query.get("view") == ["text"]:
                return self._status_text(name, query)
            return _document(self.documents.get(("status", name), _status(name)), headers)
        if path == f"{PREFIX}repos":
            return Answer(200, encode(repos.list_document(self.store)))
        if path == f"{PREFIX}throughput":
            return Answer(200, encode(self.throughput.document()))
        if path == f"{PREFIX}avoided":
            return _document(self.documents.get(("avoided",), _avoided), headers)
        if path[len(PREFIX) :] in VERBS and path.startswith(PREFIX):
            return error(405, "use POST for the control verbs", {"Allow": "POST"})
        return error(404, f"no such page: {path[:200]}")

    def _status_text(self, repo: str | None, query: dict[str, list[str]]) -> Answer:
        """The text `relayctl status` prints, for relayctl --url."""
        width_text = (query.get("width") or [""])[0]
        width = max(int(width_text), 30) if width_text.isdigit() else None
        colour = query.get("colour") == ["1"]
        lines = self.documents.run(lambda reader: status_text(reader, repo, width, colour))
        return Answer(200, encode({"format": 1, "lines": lines}))

    # -- control -------------------------------------------------------------------------------------

    def _control(self, verb: str, body: dict[str, Any]) -> Answer:
        name = body.get("repo")
        if verb != "retry" and not isinstance(name, str):
            raise UsageError('give the repo as {"repo": "OWNER/NAME"}')
        try:
            if verb == "add":
                assert isinstance(name, str)  # noqa: S101 - checked above
                result = self._add(name, body)
            elif verb == "retry":
                count, lines = repos.retry_repos(
                    self.store,
                    _optional(body, "repo", str),
                    _optional(body, "hop", str),
                    all_repos=bool(_optional(body, "all", bool)),
                )
                result = {"transfers": count, "lines": lines}
            elif verb == "remove":
                result = {"lines": [repos.remove_repo(self.store, str(name))]}
            else:
                result = {"lines": [repos.pause_repo(self.store, str(name), paused=verb == "pause")]}
        finally:
            self.documents.forget()
        log.info("web: %s %r", verb, name if isinstance(name, str) else "(all repos)")
        return Answer(200, encode({"format": 1, "ok": True, **result}))

    def _add(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        known = {
            "repo",
            "type",
            "revision",
            "include",
            "exclude",
            "every",
            "route",
            "drive_folder",
            "vm_dir",
            "modelscope_repo",
            "vm_from_staging",
            "keep_copies",
            "webhooks",
            "replace",
            "dry_run",
        }
        unknown = sorted(set(body) - known)
        if unknown:
            raise UsageError(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        spec = repos.repo_spec(
            self.config,
            name,
            repo_type=_optional(body, "type", str),
            revision=_optional(body, "revision", str),
            include=_strings(body, "include"),
            exclude=_strings(body, "exclude"),
            every=_optional(body, "every", str),
            route=_optional(body, "route", str),
            drive_folder=_optional(body, "drive_folder", str),
            vm_dir=_optional(body, "vm_dir", str),
            modelscope_repo=_optional(body, "modelscope_repo", str),
            vm_from_staging=_optional(body, "vm_from_staging", bool),
            keep_copies=_optional(body, "keep_copies", bool),
            webhooks=_strings(body, "webhooks"),
        )
        if _optional(body, "dry_run", bool):
            return {"lines": repos.dry_run_lines(self.config, spec)}
        stored, lines = repos.add_repo(self.store, spec, replace=bool(_optional(body, "replace", bool)))
        return {"repo": stored, "lines": lines}


def _status(repo: str | None) -> Callable[[Reader], Any]:
    return lambda reader: status_document(reader, repo)


def _avoided(reader: Reader) -> dict[str, Any]:
    items = bytes_avoided(reader)
    return {
        "format": 1,
        "kind": "avoided",
        "total_bytes": sum(item.bytes for item in items),
        "avoided": [item._asdict() for item in items],
    }


def _document(document: Document, headers: Message) -> Answer:
    """Answer with *document*: 304 when the client has it, gzipped when it asks for gzip."""
    tags = {tag.strip() for tag in (headers.get("If-None-Match") or "").split(",")}
    if document.etag in tags:
        return Answer(304, headers={"ETag": document.etag})
    answer = Answer(200, document.body, headers={"ETag": document.etag, "Vary": "Accept-Encoding"})
    if "gzip" in (headers.get("Accept-Encoding") or ""):
        gzipped = document.gzipped()
        if gzipped is not None:
            answer.body = gzipped
            answer.headers["Content-Encoding"] = "gzip"
    return answer


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError("the body must be a JSON object")
    return data


def _optional(body: Mapping[str, Any], key: str, kind: type) -> Any:
    """Return ``body[key]`` (None when absent or null). Raise UsageError when it is of another type."""
    value = body.get(key)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise UsageError(f"{key} must be a {'boolean' if kind is bool else 'string'}")
    return value


def _strings(body: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UsageError(f"{key} must be a list of strings")
    return tuple(value)
