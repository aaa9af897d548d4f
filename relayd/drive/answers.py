"""What an Aliyun Drive API answer means for relayd, the same for the web API and the Open Platform:
both answer errors as ``{code, message}`` with the same codes (tickstep/aliyunpan-api
``apierror/api_error.go``), 429 and 5xx when throttled."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from relayd.drive.base import LOGIN_HINT
from relayd.errors import ErrorClass, HopError, NeedsPerson, Permanent, Retryable

API_CHANGED_HINT = (
    "the drive API changed: relayd (or aligo, which it uses) needs an update; update relayd, then "
    "`relayctl retry`"
)


def throttled(what: str, status: int, retry_after: float | None) -> Retryable:
    """Return the error for a 429 (rate limit) or a 5xx (server) answer, waiting *retry_after*."""
    kind = ErrorClass.RATE_LIMIT if status == 429 else ErrorClass.SERVER
    return Retryable(f"{what}: the drive answered {status}", error_class=kind, retry_after=retry_after)


def failure(what: str, status: int, code: str, message: str, *, login_hint: str = LOGIN_HINT) -> HopError:
    """Return relayd's error for an API answer with *status* and the service's *code*: an unknown
    endpoint, a refused token, a forbidden call or a full drive needs a person; a missing file or
    upload (``NotFound.File``, …) and odd 2xx/404/409 answers are retried; the rest is a request the
    service will never accept."""
    detail = f"{status} {code}".strip() + (f": {message[:120]}" if message else "")
    if status == 404 and code in ("", "NotFound"):
        # Not a missing file or upload (those are NotFound.File, NotFound.UploadId, …): the path
        # itself is unknown, and asking again cannot help.
        return NeedsPerson(
            f"{what}: the drive does not know this API ({detail})",
            hint=API_CHANGED_HINT,
            error_class=ErrorClass.API_CHANGED,
        )
    if status == 401:
        return NeedsPerson(
            f"{what}: the drive refused relayd's access token ({detail})",
            hint=login_hint,
            error_class=ErrorClass.AUTH,
        )
    if status == 403:
        return NeedsPerson(
            f"{what}: the drive forbids this ({detail})",
            hint="check the account in the Aliyun Drive app, then `relayctl retry`",
            error_class=ErrorClass.FORBIDDEN,
        )
    if code.startswith("QuotaExhausted") or "Quota" in code:
        return NeedsPerson(
            f"{what}: the drive is full ({detail})",
            hint="free space on the drive (or add capacity), then `relayctl retry`",
            error_class=ErrorClass.QUOTA,
        )
    if status == 429 or status >= 500:
        return throttled(what, status, None)
    if status in (404, 409) or 200 <= status < 300 or status == 0:
        return Retryable(f"{what}: unexpected answer from the drive ({detail})", error_class=ErrorClass.DRIVE)
    return Permanent(
        f"{what}: the drive refused the request ({detail})",
        hint="this looks like a relayd bug or an API change; report it",
    )


def listed_items(
    fetch: Callable[[dict[str, Any]], dict[str, Any]], body: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """Yield every item of a paged folder listing, *fetch* asking for one page of *body*: follow
    ``next_marker`` until it ends or repeats (a marker handed out twice would page for ever); a page
    that answers a code (the folder is gone) ends the listing."""
    seen: set[str] = set()
    while True:
        page = fetch(body)
        if page.get("code"):
            return
        yield from page.get("items") or []
        marker = page.get("next_marker")
        if not marker or not isinstance(marker, str) or marker in seen:
            return
        seen.add(marker)
        body["marker"] = marker
