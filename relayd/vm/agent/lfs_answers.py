"""What the LFS server's answers mean: HTTP statuses as the daemon should treat them, expiring
actions, bounded reads of bodies, and the scrubber that keeps the token out of every message.
"""

from __future__ import annotations

import calendar
import http.client
import json
import re
import time
from typing import Any
from urllib.parse import urlsplit

from .core import AgentError

CHUNK = 1024 * 1024
#: The error class of an object the server measured wrong (a refused PUT, a failed verify); the
#: lfs_push hop turns it into relayd.errors.IntegrityMismatch.
MISMATCH = "mismatch"


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


def tail(text: str, limit: int = 600) -> str:
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


def size_text(size: int) -> str:
    value, unit = float(size), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return "%d bytes" % size if unit == "bytes" else "%d bytes (%.1f %s)" % (size, value, unit)


def read_bounded(response: http.client.HTTPResponse, limit: int) -> tuple[bytes, bool]:
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


def message_of(body: bytes, scrub: Scrubber) -> str:
    text = body[:4096].decode("utf-8", "replace")
    try:
        document = json.loads(text)
        # git-LFS says "message"; ModelScope's API envelope says "Message".
        said = [document.get(key) for key in ("message", "Message")] if isinstance(document, dict) else []
        text = next((each for each in said if isinstance(each, str)), text)
    except ValueError:
        title = _HTML_TITLE.search(text)  # an error page from a proxy in front (nginx's 413 is one)
        if title:
            text = title.group(1)
    return scrub(tail(" ".join(text.split()), 300))


_HTML_TITLE = re.compile(r"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


RECEIVED = "_relayd_received"


def expiring_answer(answer: dict[str, Any], margin: float) -> bool:
    """Return whether any action of a batch *answer* expires within *margin* seconds."""
    actions = answer.get("actions")
    received = answer.get(RECEIVED)
    if not isinstance(actions, dict) or not isinstance(received, float):
        return False
    return any(isinstance(a, dict) and expiring(a, received, margin) for a in actions.values())


class HttpStatus(Exception):
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
