"""The VM executor: run agent operations on the VM (this machine, or a host reached over SSH).

Every hop's VM-side work runs in relayd's agent (``relayd/vm/agent``, stdlib only). Nothing is
installed on the VM beforehand: a session starts ``python3 -I -c <bootstrap> <sha256> <length>``
there (locally as a child process in its own process group, or as the remote command of an OpenSSH
``ssh`` client; either child gets only environment.py's CHILD_ENV part of relayd's environment), the bootstrap
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

import dataclasses
import sys
from pathlib import Path

from relayd.config import VmConfig
from relayd.vm.local import LocalExecutor
from relayd.vm.pool import Executor, VmFacts
from relayd.vm.ssh import SshExecutor

# The executor's parts: bundle.py (the agent zip and its bootstrap), environment.py (what a child
# inherits), session.py (one agent process, one call), pool.py (Executor: sessions, ``call``, facts),
# local.py and ssh.py (how the bootstrap starts on the VM).
__all__ = ["Executor", "LocalExecutor", "SshExecutor", "VmFacts", "local_executor", "make_executor"]


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
