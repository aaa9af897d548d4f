"""Helpers for the lfs_push agent tests: the agent run as the executors run it (the hermetic git client
for checking what was pushed is tests/support/hermetic_git.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from relayd_sandbox.systools import require_git_lfs

require_git_lfs()

OWNER = "relay"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class AgentRun:
    """What one agent run reported: its events and its result (or error)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    returncode: int | None = None
    stderr: str = ""

    @property
    def ok(self) -> dict[str, Any]:
        assert self.error is None, self.error
        assert self.result is not None, self.stderr
        return self.result


def start_agent(
    op: str,
    params: dict[str, Any],
    token: str | None,
    *,
    python: str = sys.executable,
    env: dict[str, str] | None = None,
    stderr: IO[str] | None = None,
) -> subprocess.Popen[str]:
    """Start the agent as the executors do (own process group, text pipes on stdin and stdout), send it
    the request for *op*, and return the child. Its stdin stays open: its end means "the link died" to
    the agent, so the caller closes it (or writes ``{"cancel": true}``) when done."""
    request = {"op": op, "params": params, "secrets": {"token": token} if token is not None else {}}
    child = subprocess.Popen(
        [python, "-m", "relayd.vm.agent"],
        cwd=REPO_ROOT,
        env=env or dict(os.environ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )
    assert child.stdin is not None
    child.stdin.write(json.dumps(request) + "\n")
    child.stdin.flush()
    return child


def run_agent(
    op: str,
    params: dict[str, Any],
    token: str | None,
    *,
    python: str = sys.executable,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> AgentRun:
    """Run the agent as the executors do (own process group, request on stdin) and collect its output."""
    with tempfile.TemporaryFile("w+") as errors:
        child = start_agent(op, params, token, python=python, env=env, stderr=errors)
        assert child.stdin is not None and child.stdout is not None
        run = AgentRun()
        timer = threading.Timer(timeout, lambda: os.killpg(child.pid, signal.SIGKILL))
        timer.start()
        try:
            for line in child.stdout:
                event = json.loads(line)
                if on_event is not None:
                    on_event(event)
                if event.get("event") == "result":
                    if event.get("ok"):
                        run.result = event["result"]
                    else:
                        run.error = event["error"]
                    break
                run.events.append(event)
        except BaseException:
            # As when the link dies: the agent sees the end of its stdin and kills its group.
            child.stdin.close()
            child.wait(timeout=30)
            raise
        finally:
            timer.cancel()
        child.stdin.close()
        run.returncode = child.wait(timeout=30)
        errors.seek(0)
        run.stderr = errors.read()
    return run
