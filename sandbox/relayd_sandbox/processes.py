"""The processes of this machine as /proc shows them, for the sandbox's servers and the tests around them:
which live processes carry a command line, stopping an sshd listener with every sshd below it (so that
no session outlives the server), and the lifecycle the sandbox's server processes share."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Self


class ServerProcess:
    """A server the sandbox runs as a child process (sshd, PostgreSQL): used as a context manager that
    starts and stops it, with the child's pid while it runs. Subclasses set ``_process``."""

    _process: subprocess.Popen[bytes] | None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """Return the server's pid while it runs, else None."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid


def processes_with_cmdline(text: str) -> list[int]:
    """Return the pids of live (not zombie) processes whose command line contains *text*."""
    table = process_table()
    found = []
    for pid in table.live:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(pid)
    return sorted(found)


class ProcessTable:
    """One read of /proc: each process's children, its comm, and which ones are not zombies."""

    def __init__(self) -> None:
        self.children: dict[int, list[int]] = {}
        self.comm: dict[int, str] = {}
        self.live: set[int] = set()


def process_table() -> ProcessTable:
    table = ProcessTable()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited while we looked
        # The comm field is in parentheses and may itself hold spaces or parentheses.
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2 :].split()
        pid, state, ppid = int(entry), fields[0], int(fields[1])
        table.children.setdefault(ppid, []).append(pid)
        table.comm[pid] = comm
        if state not in ("Z", "X"):
            table.live.add(pid)
    return table


def kill_sshd_descendants(root: int) -> list[int]:
    """SIGKILL every live sshd process below *root* (repeating while sessions fork); return them."""
    killed: list[int] = []
    for _round in range(10):
        table = process_table()
        targets = []
        stack = list(table.children.get(root, []))
        while stack:
            pid = stack.pop()
            stack.extend(table.children.get(pid, []))
            # Only sshd itself: the user's commands are left to show what a dropped connection does.
            if pid in table.live and table.comm.get(pid) == "sshd":
                targets.append(pid)
        if not targets:
            break
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed.extend(p for p in targets if p not in killed)
        time.sleep(0.02)
    return sorted(killed)


def wait_gone(pids: Iterable[int], timeout: float) -> None:
    wanted = set(pids)
    deadline = time.monotonic() + timeout
    while wanted and time.monotonic() < deadline:
        wanted &= process_table().live
        if wanted:
            time.sleep(0.02)


def terminate_tree(process: subprocess.Popen[bytes]) -> None:
    """Stop the listener *process* and every sshd below it, leaving no sshd process behind."""
    if process.poll() is not None:
        return
    try:
        # Freeze the listener so it accepts no new connection while its sessions are killed.
        os.kill(process.pid, signal.SIGSTOP)
        wait_gone(kill_sshd_descendants(process.pid), 5.0)
        os.kill(process.pid, signal.SIGTERM)
        os.kill(process.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5.0)
