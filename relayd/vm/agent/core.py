"""The agent's protocol: one request in, events and one result out, and death when the link dies.

Request (first stdin line): ``{"op": str, "params": {...}, "secrets": {...}}``. Secrets travel only
here (never in argv or files). Later stdin lines may be ``{"cancel": true}``: stop at the next durable
point. End of stdin means the daemon or the connection is gone: the agent kills its whole process group
at once, so no runaway process keeps writing on the VM.

Output: JSON lines ``{"event": "<name>", ...}``; the last is ``{"event": "result", "ok": true,
"result": {...}}`` or ``{"event": "result", "ok": false, "error": {"kind": "retryable" | "blocked" |
"permanent", "class": str, "message": str, "hint": str, "retry_after": float | null}}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from typing import Any, Callable, Dict

OpFunction = Callable[[Dict[str, Any], Dict[str, str], "Context"], Dict[str, Any]]
OPS: dict[str, OpFunction] = {}

# Process groups of children an op started in their own session (git, git-lfs): the agent's own
# group kill would miss them, so they are killed by id when the link dies.
_CHILD_GROUPS: set[int] = set()
_CHILD_GROUPS_LOCK = threading.Lock()


def track_child_group(pgid: int) -> None:
    """Remember a child's process group so that it dies with the link too."""
    with _CHILD_GROUPS_LOCK:
        _CHILD_GROUPS.add(pgid)


def untrack_child_group(pgid: int) -> None:
    """Forget a child's process group (it has exited)."""
    with _CHILD_GROUPS_LOCK:
        _CHILD_GROUPS.discard(pgid)


def op(name: str) -> Callable[[OpFunction], OpFunction]:
    """Register an operation under *name*."""

    def register(function: OpFunction) -> OpFunction:
        OPS[name] = function
        return function

    return register


class AgentError(Exception):
    """An expected failure, reported to the daemon with its kind and a hint."""

    def __init__(
        self,
        message: str,
        *,
        kind: str = "retryable",
        error_class: str = "error",
        hint: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.error_class = error_class
        self.hint = hint
        self.retry_after = retry_after

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "class": self.error_class,
            "message": str(self),
            "hint": self.hint,
            "retry_after": self.retry_after,
        }


class Cancelled(Exception):
    """The daemon asked the agent to stop at a durable point."""


class Context:
    """What an operation may use: emit events, and learn whether it should stop."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._cancel = threading.Event()

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event line (thread-safe, flushed at once)."""
        line = json.dumps(dict(event=event, **fields), separators=(",", ":"))
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled by the daemon")

    def request_cancel(self) -> None:
        self._cancel.set()


def _die_with_link() -> None:
    """The daemon or the connection is gone: take the whole process group down now (only when the
    agent leads its group, as the executors start it; never the group of whoever ran it by hand)."""
    try:
        with _CHILD_GROUPS_LOCK:
            groups = list(_CHILD_GROUPS)
        for pgid in groups:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(137)


def _watch_stdin(stdin: Any, context: Context) -> None:
    for line in stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("cancel"):
            context.request_cancel()
    _die_with_link()


def serve(stdin: Any = None, stdout: Any = None) -> int:
    """Read one request, run it, report the result; return the exit code."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    context = Context(stdout)
    line = stdin.readline()
    if not line:
        return 2
    request = json.loads(line)
    watcher = threading.Thread(target=_watch_stdin, args=(stdin, context), daemon=True)
    watcher.start()
    name = request.get("op", "")
    function = OPS.get(name)
    try:
        if function is None:
            raise AgentError("unknown agent operation %r" % name, kind="permanent", error_class="internal")
        result = function(request.get("params") or {}, request.get("secrets") or {}, context)
    except Cancelled as exc:
        context.emit("result", ok=False, error=AgentError(str(exc), kind="cancelled").as_dict())
        return 0
    except AgentError as exc:
        context.emit("result", ok=False, error=exc.as_dict())
        return 0
    except OSError as exc:
        kind, error_class, hint = "retryable", "io", ""
        if exc.errno in (28, 122):  # ENOSPC, EDQUOT
            kind, error_class, hint = (
                "blocked",
                "disk",
                "free space on the VM's disk; relayd resumes by itself",
            )
        context.emit(
            "result",
            ok=False,
            error=AgentError(
                "%s: %s" % (type(exc).__name__, exc), kind=kind, error_class=error_class, hint=hint
            ).as_dict(),
        )
        return 0
    except Exception as exc:  # report anything to the daemon rather than die silently
        context.emit(
            "result",
            ok=False,
            error=AgentError(
                "agent failure: %s: %s" % (type(exc).__name__, exc), error_class="internal"
            ).as_dict(),
        )
        return 1
    context.emit("result", ok=True, result=result)
    return 0
