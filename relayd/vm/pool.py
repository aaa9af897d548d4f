"""The executor: a pool of agent sessions on the VM (at most IDLE_SESSIONS idle, each reused within
REUSE_WITHIN seconds), the one entry point ``call``, and the VM's facts.

Subclasses (relayd/vm/local.py, relayd/vm/ssh.py) say how the bootstrap is started on the VM.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relayd.config import VmConfig
from relayd.errors import Cancelled, ErrorClass, HopError, NeedsPerson
from relayd.vm.bundle import AgentBundle, agent_bundle
from relayd.vm.session import Call, EventHandler, Session, StaleSession, close_all

log = logging.getLogger(__name__)

#: Every process the agent runs carries this in its command line (tests scan /proc for it).
AGENT_MARKER = "relayd-agent"
#: Idle agent sessions kept for later calls, at most.
IDLE_SESSIONS = 4
#: An idle session is reused only this many seconds after its last call (the agent itself exits after
#: 120 s without a request, relayd/vm/agent/core.py IDLE_EXIT).
REUSE_WITHIN = 60.0
MIN_PYTHON = (3, 8)


@dataclass(frozen=True)
class VmFacts:
    """What ``check`` found on the VM (for vm_pull's readiness check and `relayctl doctor`)."""

    executor: str
    host: str
    python: str
    git: str
    git_lfs: str
    free: int
    root: str
    root_exists: bool


class Executor(abc.ABC):
    """Runs agent operations on the VM. Subclasses say how the bootstrap is started there."""

    kind: str = ""

    def __init__(self, config: VmConfig, state_dir: Path | None = None) -> None:
        self.config = config
        #: relayd's own state directory (a private place for the SSH control sockets), when known.
        self.state_dir = state_dir
        self._busy: set[Session] = set()
        self._idle: list[Session] = []
        self._lock = threading.Lock()
        self._closed = False
        self._retired = False
        #: Agent processes started so far (each one a session; reuse keeps this low).
        self.sessions_started = 0
        #: Put in every agent's command line, so its processes can be found (`pgrep -f relayd-agent`);
        #: $RELAYD_AGENT_MARKER replaces it (tests give each daemon its own).
        self.marker = os.environ.get("RELAYD_AGENT_MARKER") or AGENT_MARKER

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    @property
    def host(self) -> str:
        """Where the VM is, for handles and messages ("localhost" for the local executor)."""
        return "localhost"

    def describe(self) -> str:
        return f"{self.kind} VM {self.host}"

    @abc.abstractmethod
    def _command(self, bundle: AgentBundle) -> tuple[list[str], dict[str, str]]:
        """Return the argv and the environment that start the bootstrap on the VM."""

    @abc.abstractmethod
    def _start_failure(self, returncode: int | None, stderr: str) -> HopError:
        """Return the error for an agent that never answered (the VM could not be reached, or
        python3 is missing there)."""

    # -- the one entry point ----------------------------------------------------------------------

    def call(
        self,
        op: str,
        params: dict[str, Any],
        *,
        secrets: dict[str, str] | None = None,
        on_event: EventHandler | None = None,
        cancel: threading.Event | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Run agent operation *op* with *params* on the VM and return its result.

        *secrets* travel only in the request line on stdin. *on_event* receives every event line
        but the result, in the calling thread. When *cancel* is set, the agent is asked to stop at
        its next durable point (and killed after CANCEL_GRACE seconds); after *timeout* seconds it
        is killed. Raise Retryable, NeedsPerson, Permanent or Cancelled (see the module doc).
        """
        if cancel is not None and cancel.is_set():
            raise Cancelled("the daemon is stopping")
        bundle = agent_bundle()
        request = json.dumps({"op": op, "params": params, "secrets": secrets or {}}, separators=(",", ":"))
        while True:
            session = self._checkout(bundle)
            call = Call(session, op, cancel, timeout)
            try:
                return call.run(bundle, request, on_event, self._start_failure)
            except StaleSession:
                # It died while idle (the VM rebooted, the link dropped, the agent idled out): the
                # request never ran there. Each pass uses up an idle session; a new one is never stale.
                log.debug("an idle VM agent session was gone; starting a new one for %s", op)
            finally:
                self._checkin(session, keep=call.clean)

    def _checkout(self, bundle: AgentBundle) -> Session:
        """Return an idle session still worth reusing, or start a new one."""
        with self._lock:
            if self._closed:
                raise Cancelled("the VM executor is closed")
            now = time.monotonic()
            fresh = [s for s in self._idle if s.alive and now - s.idle_since < REUSE_WITHIN]
            expired = [s for s in self._idle if s not in fresh]
            chosen = fresh.pop() if fresh else None  # the most recently used
            self._idle = fresh
            if chosen is not None:
                self._busy.add(chosen)
        if expired:
            # Off this call's path: over a link that died, an ssh client takes seconds to go.
            threading.Thread(target=close_all, args=(expired,), name="relayd-vm-reap", daemon=True).start()
        return chosen or self._start(bundle)

    def _start(self, bundle: AgentBundle) -> Session:
        argv, env = self._command(bundle)
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group: killed as one, never by our signals
            )
        except FileNotFoundError as exc:
            raise self._missing_program(argv[0]) from exc
        session = Session(process)
        with self._lock:
            self.sessions_started += 1
            closed = self._closed
            if not closed:
                self._busy.add(session)
        if closed:  # close() ran while the process was starting: it could not see it
            session.kill()
            session.close()
            raise Cancelled("the VM executor is closed")
        return session

    def _checkin(self, session: Session, *, keep: bool) -> None:
        """Keep *session* for the next call when *keep* and there is room; else end it."""
        with self._lock:
            self._busy.discard(session)
            pooling = not (self._closed or self._retired)
            if keep and pooling and session.alive and len(self._idle) < IDLE_SESSIONS:
                session.idle_since = time.monotonic()
                self._idle.append(session)
                return
        session.close()

    def _missing_program(self, program: str) -> HopError:
        return NeedsPerson(
            f"{program} was not found on this machine",
            hint=f"install it (or set vm.python / vm.path), then `relayctl retry`: {program}",
            error_class=ErrorClass.SETUP,
        )

    # -- facts ------------------------------------------------------------------------------------

    def facts(self, *, timeout: float = 60.0) -> VmFacts:
        """Return what the VM has (python, git, git-lfs, free space under vm.root), unchecked."""
        result = self.call("check", {"root": self.config.root}, timeout=timeout)
        return VmFacts(
            executor=self.kind,
            host=self.host,
            python=str(result.get("python") or ""),
            git=str(result.get("git") or ""),
            git_lfs=str(result.get("git_lfs") or ""),
            free=int(result.get("free") or 0),
            root=self.config.root,
            root_exists=bool(result.get("root_exists")),
        )

    def check(self, *, need: Iterable[str] = ("git", "git_lfs"), timeout: float = 60.0) -> VmFacts:
        """Return the VM's facts; raise NeedsPerson naming what to install when python3 (>= 3.8) or
        a tool in *need* ("git", "git_lfs") is missing, Retryable when the VM cannot be reached."""
        facts = self.facts(timeout=timeout)
        version = tuple(int(part) for part in facts.python.split(".")[:2] if part.isdigit())
        if version < MIN_PYTHON:
            raise NeedsPerson(
                f"the VM's python is {facts.python or 'unknown'}; relayd's agent needs python ≥ 3.8",
                hint=f"install python3 ≥ 3.8 on {self.describe()} (apt-get install python3) or set vm.python",
                error_class=ErrorClass.SETUP,
            )
        wanted = set(need)
        if "git" in wanted and not facts.git:
            raise NeedsPerson(
                f"git is not installed on {self.describe()}",
                hint="install git on the VM (apt-get install git), then `relayctl retry`",
                error_class=ErrorClass.SETUP,
            )
        if "git_lfs" in wanted and not facts.git_lfs:
            raise NeedsPerson(
                f"git-lfs is not installed on {self.describe()}",
                hint="install git-lfs on the VM (apt-get install git-lfs), then `relayctl retry`",
                error_class=ErrorClass.SETUP,
            )
        return facts

    # -- shutdown ---------------------------------------------------------------------------------

    def retire(self) -> None:
        """End the idle sessions and keep no more (a reload replaced this executor); calls still
        running finish normally, and later calls still work, each in a session of its own."""
        with self._lock:
            self._retired = True
            idle, self._idle = self._idle, []
        for session in idle:
            session.close()

    def close(self) -> None:
        """End the idle sessions and kill every call still running (its process group here; over SSH
        the remote agent then sees EOF and kills its own group). Later calls raise Cancelled."""
        with self._lock:
            self._closed = True
            busy = list(self._busy)
            idle, self._idle = self._idle, []
        for session in busy:
            session.kill()
        for session in idle:
            session.close()
