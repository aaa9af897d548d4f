"""The VM executor: run agent operations on the VM (this machine, or a host reached over SSH).

Every hop's VM-side work runs in relayd's agent (``relayd/vm/agent``, stdlib only). Nothing is
installed on the VM beforehand: a session starts ``python3 -I -c <bootstrap> <sha256> <length>``
there (locally as a child process in its own process group, or as the remote command of an OpenSSH
``ssh`` client; either child gets only the CHILD_ENV part of relayd's environment), the bootstrap
answers whether ``~/.cache/relayd/agent-<sha256>.zip`` is already cached, the daemon sends the zipped
agent only if it is not, then one JSON request line per call (with the secrets, which never appear in
argv, files or logs). The agent streams JSON events back and ends
each call with a result line; stdin EOF (the daemon or the link is gone) makes a busy agent SIGKILL its
own process group, so nothing keeps running on the VM after a kill -9 or a dropped connection.

A session that ended its call cleanly waits for the next one (at most IDLE_SESSIONS of them, each
reused for REUSE_WITHIN seconds): a call then costs one request line instead of an SSH channel, the
VM's login shell and python's start, which on a VM whose shell profile runs conda or pyenv is most of
a small file's time. A session that failed, was cancelled or timed out is never reused, and a reused
session found dead before it answered is replaced transparently.

Use::

    executor = make_executor(config.vm)
    facts = executor.check()                       # NeedsPerson if python3/git/git-lfs is missing
    result = executor.call("sha256", {"path": p}, on_event=print_progress, cancel=ctx.cancel)
    executor.close()                               # ends idle sessions, kills running calls

``call`` raises relayd.errors: the agent's error kinds map to Retryable / NeedsPerson / Permanent /
Cancelled; a dropped connection is Retryable(error_class=ErrorClass.NETWORK); an SSH host-key or login
failure is NeedsPerson with a hint. Calls may run from several threads at once (a session each).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from relayd.config import VmConfig, credential_path
from relayd.errors import Cancelled, ConfigError, ErrorClass, HopError, NeedsPerson, Permanent, Retryable
from relayd.vm.agent.proxy import PROXY_VARIABLES

log = logging.getLogger(__name__)

AGENT_DIR = Path(__file__).resolve().parent / "agent"
AGENT_PACKAGE = "relayd_agent"
#: Every process the agent runs carries this in its command line (tests scan /proc for it).
AGENT_MARKER = "relayd-agent"
#: How long a cancelled call may take to reach a durable point before its process is killed.
CANCEL_GRACE = 10.0
#: Idle agent sessions kept for later calls, at most.
IDLE_SESSIONS = 4
#: An idle session is reused only this many seconds after its last call (the agent itself exits after
#: 120 s without a request, relayd/vm/agent/core.py IDLE_EXIT).
REUSE_WITHIN = 60.0
MIN_PYTHON = (3, 8)
#: The longest protocol line read from an agent. The largest real answer (the objects a big snapshot
#: still misses) is a few hundred KiB; a longer line ends the session rather than the daemon's memory.
MAX_LINE = 8 * 1024 * 1024
#: sun_path's size on Linux: a Unix socket's path must be shorter.
SOCKET_PATH_MAX = 108
#: Stderr is read in pieces of at most this many bytes (the last 40 are kept for error messages).
STDERR_PIECE = 4096
#: The environment a child (the local agent, ssh) inherits: what finding programs, the locale, the time
#: zone, temporary files, proxies, custom CAs and an SSH agent need. Nothing else, so no token variable
#: (HF_TOKEN, MODELSCOPE_TOKEN, …) of the daemon's environment reaches the VM or a process there;
#: secrets travel only in request lines.
CHILD_ENV = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "SSH_AUTH_SOCK",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        *PROXY_VARIABLES,
    }
)

# Python 3.8 compatible, no quotes of its own kind inside (it is shell-quoted for ssh). Makes what the
# agent creates private to the VM's user (umask 077), reads the agent zip from stdin unless the cached
# copy has the right sha256, then serves requests.
BOOTSTRAP = """\
import hashlib,io,os,sys,tempfile
os.umask(0o077)
h,n=sys.argv[1],int(sys.argv[2])
d=os.path.join(os.path.expanduser("~"),".cache","relayd")
p=os.path.join(d,"agent-%s.zip"%h)
i=sys.stdin.buffer
def same(f):
    try:
        with open(f,"rb") as x:
            return hashlib.sha256(x.read()).hexdigest()==h
    except OSError:
        return False
c=same(p)
sys.stdout.write("{\\"event\\":\\"agent\\",\\"cached\\":%s}\\n"%("true" if c else "false"))
sys.stdout.flush()
if not c:
    b=i.read(n)
    if len(b)!=n or hashlib.sha256(b).hexdigest()!=h:
        sys.exit(3)
    try:
        os.makedirs(d,mode=0o700,exist_ok=True)
        f,t=tempfile.mkstemp(dir=d,prefix=".agent-")
    except OSError:
        f,t=tempfile.mkstemp(prefix="relayd-agent-")
        p=t+".zip"
    with os.fdopen(f,"wb") as x:
        x.write(b)
    os.replace(t,p)
sys.path.insert(0,p)
import relayd_agent.__main__
from relayd_agent.core import serve
r=serve(io.TextIOWrapper(i,encoding="utf-8"))
sys.stdout.flush()
os._exit(r)
"""


@dataclass(frozen=True)
class AgentBundle:
    """The agent package zipped in memory, and its sha256 (the cache key on the VM)."""

    data: bytes
    sha256: str


@cache
def agent_bundle() -> AgentBundle:
    """Return the agent (every ``relayd/vm/agent/*.py``) as a deterministic zip of package
    ``relayd_agent``, so the same relayd always has the same cache key."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for source in sorted(AGENT_DIR.glob("*.py")):
            info = zipfile.ZipInfo(f"{AGENT_PACKAGE}/{source.name}", date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, source.read_bytes())
    data = buffer.getvalue()
    return AgentBundle(data, hashlib.sha256(data).hexdigest())


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


EventHandler = Callable[[dict[str, Any]], None]


def child_environment() -> dict[str, str]:
    """Return the allow-listed part of this process's environment (CHILD_ENV and LC_*)."""
    return {name: value for name, value in os.environ.items() if name in CHILD_ENV or name.startswith("LC_")}


class Executor(abc.ABC):
    """Runs agent operations on the VM. Subclasses say how the bootstrap is started there."""

    kind: str = ""

    def __init__(self, config: VmConfig, state_dir: Path | None = None) -> None:
        self.config = config
        #: relayd's own state directory (a private place for the SSH control sockets), when known.
        self.state_dir = state_dir
        self._busy: set[_Session] = set()
        self._idle: list[_Session] = []
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
            call = _Call(session, op, cancel, timeout)
            try:
                return call.run(bundle, request, on_event, self._start_failure)
            except _StaleSession:
                # It died while idle (the VM rebooted, the link dropped, the agent idled out): the
                # request never ran there. Each pass uses up an idle session; a new one is never stale.
                log.debug("an idle VM agent session was gone; starting a new one for %s", op)
            finally:
                self._checkin(session, keep=call.clean)

    def _checkout(self, bundle: AgentBundle) -> _Session:
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
            threading.Thread(target=_close_all, args=(expired,), name="relayd-vm-reap", daemon=True).start()
        return chosen or self._start(bundle)

    def _start(self, bundle: AgentBundle) -> _Session:
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
        session = _Session(process)
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

    def _checkin(self, session: _Session, *, keep: bool) -> None:
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


class _StaleSession(Exception):
    """A reused session ended before it answered: it had died while idle."""


class _LineTooLong(Exception):
    """The agent sent a protocol line longer than MAX_LINE."""


class _Session:
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


class _Call:
    """One call on a session: sends the request, reads its events, enforces cancel and timeout."""

    def __init__(
        self,
        session: _Session,
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
            return _StaleSession()
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


def _close_all(sessions: list[_Session]) -> None:
    for session in sessions:
        session.close()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group *process* leads (it was started in its own session)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _bootstrap_argv(python: str, bundle: AgentBundle, marker: str) -> list[str]:
    # -I: isolated from PYTHON* variables, the user's site-packages and the working directory.
    return [python, "-I", "-c", BOOTSTRAP, bundle.sha256, str(len(bundle.data)), marker]


# -- the VM is this machine -------------------------------------------------------------------------


class LocalExecutor(Executor):
    """The VM is this machine: the agent runs as a child in its own session and process group, with
    ``vm.python`` (found on ``vm.path`` when set, else on this process's PATH)."""

    kind = "local"

    def _command(self, bundle: AgentBundle) -> tuple[list[str], dict[str, str]]:
        env = child_environment()
        if self.config.path:
            env["PATH"] = self.config.path
        python = shutil.which(self.config.python, path=env.get("PATH")) or self.config.python
        return _bootstrap_argv(python, bundle, self.marker), env

    def _start_failure(self, returncode: int | None, stderr: str) -> HopError:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {returncode}"
        return Retryable(f"the VM agent did not start: {last}", error_class=ErrorClass.AGENT)

    def _missing_program(self, program: str) -> HopError:
        return NeedsPerson(
            f"python ({program}) was not found on this machine (the local VM)",
            hint="install python3 ≥ 3.8 (apt-get install python3) or set vm.python to its path",
            error_class=ErrorClass.SETUP,
        )


# -- the VM is reached over SSH ---------------------------------------------------------------------

_HOST_KEY_ERRORS = (
    "Host key verification failed",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "No matching host key",
    "host key for",
)
_AUTH_ERRORS = ("Permission denied", "Too many authentication failures", "no mutual signature")
_CONFIG_ERRORS = ("Bad configuration option", "Can't open user config file", "bad configuration", "Bad owner")
_MISSING_PYTHON = re.compile(r"(command not found|No such file or directory|not found)", re.IGNORECASE)


class SshExecutor(Executor):
    """The VM is reached with the OpenSSH client: host-key checking on, BatchMode, keep-alives, and
    the user's OpenSSH configuration honoured (``-F vm.ssh_config_file`` when set, else ssh's own
    defaults such as ``~/.ssh/config``)."""

    kind = "ssh"

    def __init__(self, config: VmConfig, state_dir: Path | None = None) -> None:
        super().__init__(config, state_dir)
        #: The shared connection's socket path: None until first needed, "" when not shared.
        self._control_path_memo: str | None = None

    @property
    def host(self) -> str:
        return self.config.host

    def destination_options(self) -> list[str]:
        """Return the ssh options that say where and how to connect (everything before ``--``)."""
        config = self.config
        options: list[str] = ["-T", "-x", "-a"]
        if config.ssh_config_file is not None:
            options += ["-F", str(config.ssh_config_file)]
        options += config.ssh_options  # the user's own words first: ssh keeps an option's first value
        if config.port != 22:
            options += ["-p", str(config.port)]
        if config.user:
            options += ["-l", config.user]
        identity = self._credential_file("identity_credential") or config.identity_file
        if identity is not None:
            options += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
        known_hosts = self._credential_file("known_hosts_credential") or config.known_hosts_file
        if known_hosts is not None:
            options += ["-o", f"UserKnownHostsFile={known_hosts}"]
        if config.ssh_multiplex and self._control_path_memo is None:
            self._control_path_memo = self._control_path() or ""
        control_path = self._control_path_memo
        if control_path:
            options += [
                "-o",
                "ControlMaster=auto",
                "-o",
                f"ControlPath={control_path}",
                "-o",
                "ControlPersist=60",
            ]
        options += [
            "-o",
            f"StrictHostKeyChecking={config.strict_host_key_checking}",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
            "-o",
            "ClearAllForwardings=yes",
        ]
        return options

    def _credential_file(self, key: str) -> Path | None:
        """Return the file of the systemd credential that vm.<key> names (None when unset). Raise
        NeedsPerson when it cannot be found or is empty."""
        name = getattr(self.config, key)
        if not name:
            return None
        try:
            path = credential_path(name, f"vm.{key}")
            if path.read_bytes().strip():
                return path
            problem = "is empty"  # its file was not installed: relayd.service's SetCredential= default
        except ConfigError as exc:
            problem = f"cannot be found: {exc}"
        except OSError as exc:
            problem = f"cannot be read: {exc.strerror}"
        raise NeedsPerson(
            f"the credential {name!r} (vm.{key}) {problem}",
            hint=f"put the file in the directory LoadCredential= reads it from (relayd.service) and name it "
            f"{name!r}, then `systemctl restart relayd`",
            error_class=ErrorClass.CONFIG,
        )

    def _control_path(self) -> str | None:
        """Where the shared SSH connection's socket lives: one per set of connection settings, so a
        changed key, known_hosts file or option never rides an older connection. None (no sharing)
        when no private directory is at hand."""
        config = self.config
        settings = repr(
            (
                config.host,
                config.port,
                config.user,
                config.identity_file,
                config.known_hosts_file,
                config.identity_credential,
                config.known_hosts_credential,
                config.ssh_config_file,
                config.strict_host_key_checking,
                config.ssh_options,
            )
        )
        name = f"{hashlib.sha256(settings.encode()).hexdigest()[:12]}-%C"
        runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
        candidates = [runtime / f"relayd-ssh-{os.getuid()}"]
        if self.state_dir is not None:
            candidates.append(self.state_dir / "ssh")
        for directory in candidates:
            # ssh binds "<path>.<16 random characters>" first; %C expands to 40 characters.
            if len(str(directory / name)) - 2 + 40 + 17 >= SOCKET_PATH_MAX:
                log.debug("the SSH control path under %s would be too long for a socket", directory)
                continue
            problem = _private_directory_problem(directory)
            if problem is None:
                return str(directory / name)
            log.warning("not sharing SSH connections through %s: %s", directory, problem)
        log.warning("no private directory for the shared SSH connection: each VM session opens its own")
        return None

    def close(self) -> None:
        super().close()
        if self._control_path_memo:
            # Ask the shared connection to end now rather than linger for ControlPersist.
            with contextlib.suppress(OSError, subprocess.SubprocessError, HopError):
                subprocess.run(
                    ["ssh", *self.destination_options(), "-O", "exit", "--", self.config.host],
                    capture_output=True,
                    timeout=5,
                    check=False,
                    env=child_environment(),
                )

    def remote_command(self, bundle: AgentBundle) -> str:
        """Return the command line the VM's shell runs: ``exec`` so the agent replaces the shell
        (and leads the session's process group), with ``env PATH=vm.path`` applied after any
        startup file."""
        words = ["exec"]
        if self.config.path:
            words += ["env", f"PATH={self.config.path}"]
        words += _bootstrap_argv(self.config.python, bundle, self.marker)
        return shlex.join(words)

    def _command(self, bundle: AgentBundle) -> tuple[list[str], dict[str, str]]:
        argv = ["ssh", *self.destination_options(), "--", self.config.host, self.remote_command(bundle)]
        return argv, child_environment()

    def _missing_program(self, program: str) -> HopError:
        return NeedsPerson(
            "the OpenSSH client (ssh) is not installed on this machine",
            hint="install it (apt-get install openssh-client), then `relayctl retry`",
            error_class=ErrorClass.SETUP,
        )

    def _start_failure(self, returncode: int | None, stderr: str) -> HopError:
        where = f"{self.config.user + '@' if self.config.user else ''}{self.config.host}"
        text = stderr.strip()
        last = text.splitlines()[-1] if text else f"exit status {returncode}"
        if any(marker in text for marker in _HOST_KEY_ERRORS):
            known = self.config.known_hosts_file or "~/.ssh/known_hosts"
            return NeedsPerson(
                f"ssh refused {where}: its host key is unknown or has changed ({last})",
                hint=(
                    f"check the VM's host key fingerprint, then add it to {known} "
                    f"(e.g. ssh-keyscan -p {self.config.port} {self.config.host} and compare), "
                    "or set vm.known_hosts_file"
                ),
                error_class=ErrorClass.HOST_KEY,
            )
        if any(marker in text for marker in _AUTH_ERRORS):
            return NeedsPerson(
                f"ssh could not log in to {where}: {last}",
                hint="check vm.user and vm.identity_file (or the ssh agent), and the VM's authorized_keys",
                error_class=ErrorClass.AUTH,
            )
        if any(marker in text for marker in _CONFIG_ERRORS):
            return NeedsPerson(
                f"ssh rejected its configuration: {last}",
                hint="fix vm.ssh_config_file / vm.ssh_options",
                error_class=ErrorClass.CONFIG,
            )
        if "Could not resolve hostname" in text and "Temporary failure" not in text:
            return NeedsPerson(
                f"ssh cannot resolve {self.config.host}: {last}",
                hint="check vm.host",
                error_class=ErrorClass.CONFIG,
            )
        if returncode == 127 or (returncode != 255 and _MISSING_PYTHON.search(text)):
            return NeedsPerson(
                f"{self.config.python} is not available on {where}: {last}",
                hint="install python3 ≥ 3.8 on the VM (apt-get install python3), or set vm.python / vm.path",
                error_class=ErrorClass.SETUP,
            )
        return Retryable(f"cannot reach the VM {where} over ssh: {last}", error_class=ErrorClass.NETWORK)


def _private_directory_problem(directory: Path) -> str | None:
    """Create *directory* (mode 0700) if it is missing; return why it is not private to us (not a
    directory, a symbolic link, owned by another user, open to others), or None when it is."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        facts = os.lstat(directory)
    except OSError as exc:
        return f"cannot create it: {exc.strerror}"
    if stat.S_ISLNK(facts.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(facts.st_mode):
        return "it is not a directory"
    if facts.st_uid != os.geteuid():
        return f"it belongs to uid {facts.st_uid}, not to us ({os.geteuid()})"
    if stat.S_IMODE(facts.st_mode) != 0o700:
        return f"its mode is {stat.S_IMODE(facts.st_mode):o}, not 700"
    return None


def local_executor(config: VmConfig) -> LocalExecutor:
    """Return an executor on this machine with *config*'s settings otherwise, for work on the files
    staged here: this process's python and PATH."""
    return LocalExecutor(dataclasses.replace(config, executor="local", python=sys.executable, path=""))


def make_executor(config: VmConfig, *, state_dir: Path | None = None) -> Executor:
    """Return the executor ``vm.executor`` names ("local" or "ssh"); *state_dir* is relayd's state
    directory (the SSH control sockets go there when the runtime directory is not private)."""
    if config.executor == "ssh":
        return SshExecutor(config, state_dir)
    return LocalExecutor(config, state_dir)
