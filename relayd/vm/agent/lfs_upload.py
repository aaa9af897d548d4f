"""The agent's LFS operations: ``lfs_upload`` (objects the server lacks, with retries) and ``lfs_confirm``."""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable

from .core import AgentError, Context, op
from .lfs_answers import MISMATCH
from .lfs_client import LfsClient, Progress
from .lfs_files import OID


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


def make_client(params: dict[str, Any], secrets: dict[str, str], context: Context) -> LfsClient:
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
        if not OID.match(str(item.get("oid"))) or not isinstance(item.get("size"), int):
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
    client = make_client(params, secrets, context)
    ref = params.get("ref")
    objects = list(params.get("objects") or [])
    attempts = int(params.get("attempts") or 3)
    return {"objects": upload_objects(client, objects, ref, attempts)}


@op("lfs_confirm")
def lfs_confirm(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Return ``{"missing": [oid]}``: the ``objects`` ([{oid, size}]) the server cannot serve."""
    client = make_client(params, secrets, context)
    objects = list(params.get("objects") or [])
    missing = with_retries(
        context, int(params.get("attempts") or 3), lambda: client.missing(objects), "confirm"
    )
    return {"missing": missing, "checked": len(objects)}
