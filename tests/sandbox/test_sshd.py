"""The sandbox sshd: a real OpenSSH server on 127.0.0.1 with host-key checking on, whose sessions a
test can drop mid-command, and what that does to the command left running on the "VM"."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from relayd_sandbox.processes import processes_with_cmdline
from relayd_sandbox.sshd import SSHD_PATH, SandboxSshd, restricted_path
from relayd_sandbox.systools import require
from relayd_sandbox.vm_testkit import wait_until

pytestmark = pytest.mark.timeout(60)

# Runs "$@" so that it dies with the SSH session even when it is silent: sshd gives the command its
# own process group and, with no pty, no SIGHUP; the guard kills that group when stdin reaches EOF,
# which happens when the connection drops (or after a normal exit, sweeping up stragglers). The
# caller keeps ssh's stdin open while the command runs. Background jobs of a non-interactive sh read
# /dev/null, hence the copy of stdin on fd 3.
GUARD = (
    'exec 3<&0; "$@" </dev/null & c=$!; '
    "{ cat <&3 >/dev/null 2>&1; kill -TERM 0; } >/dev/null 2>&1 & "
    'wait "$c"'
)


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False
    )


def marker() -> str:
    return f"relayd-marker-{uuid.uuid4().hex[:12]}"


def start_session(sshd: SandboxSshd, *remote: str) -> subprocess.Popen[bytes]:
    """Start ssh running *remote*, with stdin held open, and return once it printed "ready"."""
    client = subprocess.Popen(sshd.ssh_command(*remote), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert client.stdout is not None
    assert client.stdout.readline() == b"ready\n"
    return client


def test_command_runs_with_host_key_checking_on(sshd: SandboxSshd) -> None:
    config = sshd.ssh_config_file.read_text()
    assert "StrictHostKeyChecking yes" in config
    assert f'UserKnownHostsFile "{sshd.known_hosts_file}"' in config
    assert sshd.known_hosts_file.read_text().startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")

    result = run(sshd.ssh_command("printf", "%s|", "a b", "it's", "$HOME", ""))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "a b|it's|$HOME||"  # each argument arrives as it was given

    result = run(sshd.ssh_command("id", "-un"))
    assert (result.returncode, result.stdout) == (0, f"{sshd.user}\n")


def test_unknown_or_wrong_host_key_is_refused(
    sshd: SandboxSshd, tmp_path: Path, wrong_known_hosts: Path
) -> None:
    witness = tmp_path / "ran"
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")

    for known_hosts in (wrong_known_hosts, empty):
        argv = sshd.ssh_command(
            "touch", str(witness), ssh_options=["-o", f"UserKnownHostsFile={known_hosts}"]
        )
        result = run(argv)
        assert result.returncode == 255
        assert "Host key verification failed" in result.stderr
    assert not witness.exists()

    assert run(sshd.ssh_command("touch", str(witness))).returncode == 0
    assert witness.exists()


@pytest.mark.parametrize(
    ("script", "dies"),
    [
        pytest.param("echo ready; while :; do echo tick; sleep 0.1; done", True, id="writer-dies-of-sigpipe"),
        pytest.param("echo ready; cat >/dev/null", True, id="reader-sees-eof"),
        pytest.param("echo ready; sleep 60", False, id="silent-command-survives"),
    ],
)
def test_kill_sessions_drops_the_connection(sshd: SandboxSshd, script: str, dies: bool) -> None:
    tag = marker()
    client = start_session(sshd, "sh", "-c", script, tag)
    try:
        assert sshd.session_pids()
        killed = sshd.kill_sessions()
        assert killed
        client.communicate(timeout=10)
        assert client.returncode == 255  # ssh: connection closed by remote host
        assert sshd.session_pids() == []

        # The client has exited, so only the remote command can carry the tag now.
        if dies:
            gone = wait_until(lambda: not processes_with_cmdline(tag), 5.0)
            assert gone, "remote command outlived its session"
        else:
            time.sleep(0.5)
            survivors = processes_with_cmdline(tag)
            assert survivors, "a silent command now dies with its session: update the module doc"
            for pid in survivors:  # sshd made it a session (and group) leader: take its children too
                os.killpg(pid, signal.SIGKILL)
            assert wait_until(lambda: not processes_with_cmdline(tag), 5.0)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()

    result = run(sshd.ssh_command("echo", "again"))
    assert (result.returncode, result.stdout) == (0, "again\n")


def test_guarded_command_dies_with_its_session(sshd: SandboxSshd) -> None:
    tag = marker()
    client = start_session(sshd, "sh", "-c", GUARD, "guard", "sh", "-c", "echo ready; sleep 60", tag)
    try:
        sshd.kill_sessions()
        client.communicate(timeout=10)
        assert client.returncode == 255
        gone = wait_until(lambda: not processes_with_cmdline(tag), 5.0)
        assert gone, "guarded command outlived its session"
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()


def test_guard_passes_output_and_exit_status_through(sshd: SandboxSshd) -> None:
    # stdin stays open, as an executor holding the session would keep it.
    client = subprocess.Popen(
        sshd.ssh_command("sh", "-c", GUARD, "guard", "sh", "-c", "echo out; echo err >&2; exit 7"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert client.stdout is not None and client.stderr is not None
        assert client.wait(timeout=10) == 7
        assert (client.stdout.read(), client.stderr.read()) == (b"out\n", b"err\n")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        assert client.stdin is not None
        client.stdin.close()


def test_a_path_without_git_lfs_hides_it_from_the_vm(sshd: SandboxSshd, tmp_path: Path) -> None:
    git_lfs = shutil.which("git-lfs")
    require(git_lfs or "/usr/bin/git-lfs", "git-lfs")
    assert run(sshd.ssh_command("git", "lfs", "version")).stdout.startswith("git-lfs/")

    vm_path = restricted_path(tmp_path / "bin", hide=["git-lfs"])
    assert run(sshd.ssh_command("git", "--version", env={"PATH": vm_path})).returncode == 0
    result = run(sshd.ssh_command("git", "lfs", "version", env={"PATH": vm_path}))
    assert result.returncode != 0
    assert "'lfs' is not a git command" in result.stderr
    result = run(sshd.ssh_command("sh", "-c", "command -v git-lfs || echo none", env={"PATH": vm_path}))
    assert result.stdout == "none\n"


def test_stop_leaves_no_sshd_behind() -> None:
    require(SSHD_PATH, "OpenSSH server")
    server = SandboxSshd().start()
    tag = marker()
    client = start_session(server, "sh", "-c", "echo ready; while :; do echo tick; sleep 0.1; done", tag)
    try:
        listener, sessions, port, workdir = server.pid, server.session_pids(), server.port, server.workdir
        assert listener is not None and sessions
        server.stop()
        server.stop()  # harmless twice

        client.communicate(timeout=10)
        assert client.returncode != 0
        assert not any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in [listener, *sessions])
        assert server.pid is None and server.session_pids() == []
        assert not workdir.exists()
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        assert wait_until(lambda: not processes_with_cmdline(tag), 5.0)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        server.stop()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
