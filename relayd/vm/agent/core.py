"""The agent's protocol: requests in, events and one result per request out, and death when the link dies.

Request (a stdin line): ``{"op": str, "params": {...}, "secrets": {...}}``. Secrets travel only here
(never in argv or files). While a request runs, a stdin line ``{"cancel": true}`` asks it to stop at
the next durable point. End of stdin means the daemon or the connection is gone: a running request
makes the agent kill its whole process group at once, so no runaway process keeps writing on the VM.

Output: JSON lines ``{"event": "<name>", ...}``; each request ends with ``{"event": "result", "ok":
true, "result": {...}, "reusable": bool}`` or ``{"event": "result", "ok": false, "error": {"kind":
"retryable" | "blocked" | "permanent" | "cancelled", "class": str, "message": str, "hint": str,
"retry_after": float | null}, "reusable": false}``.

One agent serves requests one after another, so the daemon pays the VM login and python's start once
per session rather than once per call. It stops serving after a request that failed or left a thread
or child process behind (``reusable`` false: a fresh process is the only clean state), and when no
request comes for IDLE_EXIT seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
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
            "class": self.error_class[:64],
            "message": _bounded(str(self)),
            "hint": _bounded(self.hint),
            "retry_after": self.retry_after,
        }


#: The longest error message or hint sent to the daemon (it keeps 4 KiB; what a server answered can be
#: far longer, and the protocol line must stay well under the daemon's limit).
MESSAGE_LIMIT = 4096
_TRUNCATED = "… (truncated)"


def _bounded(text: str) -> str:
    if len(text) <= MESSAGE_LIMIT:
        return text
    return text[: MESSAGE_LIMIT - len(_TRUNCATED)] + _TRUNCATED


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


#: An idle agent exits after this many seconds without a request (the daemon reuses one for less).
IDLE_EXIT = 120.0


class _Link:
    """The stdin side of a session: requests for the main thread, cancels for the running one."""

    def __init__(self) -> None:
        self.requests: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.lock = threading.Lock()
        self.running: Context | None = None

    def read(self, stdin: Any) -> None:
        for line in stdin:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if message.get("cancel"):
                with self.lock:
                    if self.running is not None:
                        self.running.request_cancel()
            elif "op" in message:
                self.requests.put(message)
        with self.lock:
            if self.running is not None:
                _die_with_link()
            self.requests.put(None)  # idle at EOF: stop serving, cleanly


def serve(stdin: Any = None, stdout: Any = None, idle_exit: float = IDLE_EXIT) -> int:
    """Serve requests until stdin ends, one is not reusable, or none comes for *idle_exit* seconds;
    return the exit code."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    link = _Link()
    reader = threading.Thread(target=link.read, args=(stdin,), name="relayd-agent-stdin", daemon=True)
    reader.start()
    baseline = {thread.ident for thread in threading.enumerate()}
    while True:
        try:
            request = link.requests.get(timeout=idle_exit)
        except queue.Empty:
            return 0
        if request is None:
            return 0
        context = Context(stdout)
        with link.lock:
            link.running = context
        outcome, code = _run(request, context)
        with link.lock:
            link.running = None
            leftover = [t.name for t in threading.enumerate() if t.ident not in baseline]
            with _CHILD_GROUPS_LOCK:
                leftover += ["pgid %d" % pgid for pgid in _CHILD_GROUPS]
        reusable = bool(outcome["ok"]) and not leftover
        if leftover:
            outcome["left_behind"] = leftover[:8]
        context.emit("result", reusable=reusable, **outcome)
        if not reusable:
            return code


def _run(request: dict[str, Any], context: Context) -> tuple[dict[str, Any], int]:
    """Run one request; return the result event's fields and the exit code should the agent stop."""
    name = request.get("op", "")
    function = OPS.get(name)
    try:
        if function is None:
            raise AgentError("unknown agent operation %r" % name, kind="permanent", error_class="internal")
        result = function(request.get("params") or {}, request.get("secrets") or {}, context)
    except Cancelled as exc:
        return dict(ok=False, error=AgentError(str(exc), kind="cancelled").as_dict()), 0
    except AgentError as exc:
        return dict(ok=False, error=exc.as_dict()), 0
    except OSError as exc:
        kind, error_class, hint = "retryable", "io", ""
        if exc.errno in (28, 122):  # ENOSPC, EDQUOT
            kind, error_class, hint = (
                "blocked",
                "disk",
                "free space on the VM's disk; relayd resumes by itself",
            )
        message = "%s: %s" % (type(exc).__name__, exc)
        error = AgentError(message, kind=kind, error_class=error_class, hint=hint)
        return dict(ok=False, error=error.as_dict()), 0
    except Exception as exc:  # report anything to the daemon rather than die silently
        message = "agent failure: %s: %s" % (type(exc).__name__, exc)
        return dict(ok=False, error=AgentError(message, error_class="internal").as_dict()), 1
    return dict(ok=True, result=result), 0
