"""One agent process and one call on it: the JSON line protocol, cancel and timeout, and errors.

A ``Session`` is one agent process (a child here, or an ssh client whose remote command it is); a
``Call`` sends one request line on it and reads events until the result, mapping the agent's error
kinds to relayd.errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from relayd.errors import Cancelled, ErrorClass, HopError, NeedsPerson, Permanent, Retryable
from relayd.vm.bundle import AgentBundle

log = logging.getLogger(__name__)

#: How long a cancelled call may take to reach a durable point before its process is killed.
CANCEL_GRACE = 10.0
#: The longest protocol line read from an agent. The largest real answer (the objects a big snapshot
#: still misses) is a few hundred KiB; a longer line ends the session rather than the daemon's memory.
MAX_LINE = 8 * 1024 * 1024
#: Stderr is read in pieces of at most this many bytes (the last 40 are kept for error messages).
STDERR_PIECE = 4096

EventHandler = Callable[[dict[str, Any]], None]


class StaleSession(Exception):
    """A reused session ended before it answered: it had died while idle."""


class _LineTooLong(Exception):
    """The agent sent a protocol line longer than MAX_LINE."""


class Session:
    """One agent process (a child here, or an ssh client whose remote command it is): serves calls one
    at a time; its stderr is drained for as long as it lives."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self.greeted = False  # the agent said hello and has its code
        self.calls = 0
        self.idle_since = 0.0
        self.op = ""
        self._stdin_lock = threading.Lock()
        self._stderr = threading.Thread(target=self._drain_stderr, name="relayd-vm-stderr", daemon=True)
        self._stderr.start()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def read_event(self) -> dict[str, Any] | None:
        """Return the next JSON event line, or None at the end of the agent's output.

        Raise _LineTooLong when a line exceeds MAX_LINE (no more than that is ever held)."""
        stdout = self.process.stdout
        assert stdout is not None  # noqa: S101 - created with PIPE
        while True:
            line = stdout.readline(MAX_LINE + 1)
            if not line:
                return None
            if len(line) > MAX_LINE:
                raise _LineTooLong()
            try:
                event = json.loads(line)
            except ValueError:
                log.debug("agent %s printed a non-event line: %r", self.op, line[:200])
                continue
            if isinstance(event, dict):
                return event

    def write(self, data: bytes) -> bool:
        stdin = self.process.stdin
        assert stdin is not None  # noqa: S101 - created with PIPE
        with self._stdin_lock:
            try:
                stdin.write(data)
                stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                return False
        return True

    def _drain_stderr(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None  # noqa: S101 - created with PIPE
        # In pieces: a peer printing without newlines costs STDERR_PIECE bytes at a time, not more.
        for raw in iter(lambda: stderr.readline(STDERR_PIECE), b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.stderr_tail.append(line)
                log.debug("vm agent %s: %s", self.op, line)

    def join_stderr(self) -> None:
        self._stderr.join(timeout=2)

    def kill(self) -> None:
        _kill_group(self.process)

    def close(self) -> None:
        """Close stdin (an idle agent exits at EOF, a busy one kills its group), make sure the process
        is gone, reap it."""
        with self._stdin_lock, contextlib.suppress(OSError, ValueError):
            assert self.process.stdin is not None  # noqa: S101 - created with PIPE
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            self.process.wait(timeout=5)
        self.join_stderr()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class Call:
    """One call on a session: sends the request, reads its events, enforces cancel and timeout."""

    def __init__(
        self,
        session: Session,
        op: str,
        cancel: threading.Event | None,
        timeout: float | None,
    ) -> None:
        self.session = session
        self.op = op
        self.cancel = cancel
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.reused = session.calls > 0
        self.answered = False
        self.reusable = False  # the agent's result lets the session serve another call
        self.killed_for: str | None = None
        self.cancel_sent = False
        self._done = threading.Event()
        self._request_sent = threading.Event()

    @property
    def clean(self) -> bool:
        """True when the session may serve another call: the agent said so, and nothing of this
        call (a cancel, a kill) can reach the next one."""
        return self.reusable and not self.cancel_sent and self.killed_for is None

    def run(
        self,
        bundle: AgentBundle,
        request: str,
        on_event: EventHandler | None,
        start_failure: Callable[[int | None, str], HopError],
    ) -> dict[str, Any]:
        session = self.session
        session.op = self.op
        watcher = threading.Thread(target=self._watch, name="relayd-vm-watch", daemon=True)
        watcher.start()
        try:
            payload = b""
            if not session.greeted:
                hello = session.read_event()
                if hello is None or hello.get("event") != "agent":
                    raise self._ended_early(start_failure, started=False)
                session.greeted = True
                payload = b"" if hello.get("cached") else bundle.data
            if not session.write(payload + request.encode() + b"\n"):
                raise self._ended_early(start_failure, started=True)
            self._request_sent.set()
            while True:
                event = session.read_event()
                if event is None:
                    raise self._ended_early(start_failure, started=True)
                self.answered = True
                if event.get("event") == "result":
                    self.reusable = bool(event.get("reusable"))  # the agent says false after a failure
                    if event.get("left_behind"):
                        log.debug("the VM agent (%s) left %s running", self.op, event["left_behind"])
                    return self._result(event)
                if on_event is not None:
                    on_event(event)
        except _LineTooLong:
            self.killed_for = "protocol"
            session.kill()
            raise Retryable(
                f"the VM agent ({self.op}) sent a line longer than {MAX_LINE // (1024 * 1024)} MiB, which "
                "no relayd agent does; relayd ended that session (is something on the VM printing to the "
                "agent's output?)",
                error_class=ErrorClass.PROTOCOL,
            ) from None
        finally:
            self._done.set()
            watcher.join()  # so that `clean` sees whatever it did
            session.calls += 1

    def _result(self, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("ok"):
            result = event.get("result")
            return result if isinstance(result, dict) else {}
        error = event.get("error") or {}
        kind = str(error.get("kind") or "retryable")
        message = str(error.get("message") or "the agent failed without a message")
        error_class = ErrorClass.parse(error.get("class"))
        if error_class is ErrorClass.ERROR and error.get("class") not in (None, "", ErrorClass.ERROR):
            log.warning(
                "the VM agent (%s) named an unknown error class; recorded as %s", self.op, error_class
            )
        hint = str(error.get("hint") or "")
        if kind == "cancelled":
            raise Cancelled(message)
        if kind == "blocked":
            raise NeedsPerson(
                message, hint=hint or "see the message, then `relayctl retry`", error_class=error_class
            )
        if kind == "permanent":
            raise Permanent(message, hint=hint, error_class=error_class)
        retry_after = error.get("retry_after")
        raise Retryable(
            message,
            error_class=error_class,
            retry_after=float(retry_after) if isinstance(retry_after, int | float) else None,
        )

    def _ended_early(
        self, start_failure: Callable[[int | None, str], HopError], *, started: bool
    ) -> Exception:
        """Return the error for an agent whose output ended without a result."""
        process = self.session.process
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.session.kill()
        self.session.join_stderr()
        if self.killed_for == "cancel":
            return Cancelled("the daemon is stopping; the VM agent was stopped")
        if self.killed_for == "timeout":
            return Retryable(f"the VM agent ({self.op}) timed out", error_class=ErrorClass.TIMEOUT)
        if self.reused and not self.answered:
            return StaleSession()
        stderr = "\n".join(self.session.stderr_tail)
        if not started:
            return start_failure(process.returncode, stderr)
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {process.returncode}"
        return Retryable(
            f"the connection to the VM agent ({self.op}) was lost: {last}", error_class=ErrorClass.NETWORK
        )

    def _watch(self) -> None:
        """Send a cancel request when asked to stop; kill the process after the grace or timeout."""
        cancel_deadline: float | None = None
        while not self._done.wait(0.1):
            now = time.monotonic()
            if self.cancel is not None and self.cancel.is_set() and not self.cancel_sent:
                self.cancel_sent = True
                cancel_deadline = now + CANCEL_GRACE
                # Before the request is out the agent reads the zip: nothing to stop gently yet.
                if not self._request_sent.is_set() or not self.session.write(b'{"cancel":true}\n'):
                    cancel_deadline = now
            if cancel_deadline is not None and now >= cancel_deadline:
                self.killed_for = "cancel"
                self.session.kill()
                return
            if self.deadline is not None and now >= self.deadline:
                self.killed_for = "timeout"
                self.session.kill()
                return


def close_all(sessions: list[Session]) -> None:
    for session in sessions:
        session.close()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group *process* leads (it was started in its own session)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
