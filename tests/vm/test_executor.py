"""The VM executor: the agent shipped over the link and cached, events and errors, secrets only on
stdin, cancel and timeouts, and the readiness check, locally and through a real sshd."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relayd.errors import Cancelled, NeedsPerson, Permanent, Retryable
from relayd.hops.base import Services
from relayd.vm.bundle import BOOTSTRAP, agent_bundle
from relayd.vm.executor import Executor, LocalExecutor, SshExecutor, make_executor
from relayd.vm.session import MAX_LINE, Session
from relayd_sandbox.drive import FakeDrive
from relayd_sandbox.processes import processes_with_cmdline
from relayd_sandbox.sshd import SandboxSshd, restricted_path
from relayd_sandbox.vm_testkit import (
    FakeDriveLinks,
    no_agent_left,
    pull_params,
    upload_to_fake_drive,
    vm_config,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

VM_PATH = "/usr/local/bin:/usr/bin:/bin"


def ssh_executor(sshd: SandboxSshd, tmp_path: Path, marker: str, **overrides: Any) -> Executor:
    values: dict[str, Any] = {
        "executor": "ssh",
        "host": "127.0.0.1",
        "root": str(tmp_path / "vm"),
        "ssh_config_file": sshd.ssh_config_file,
        "python": "python3",
        "path": VM_PATH,
    }
    values.update(overrides)
    executor = make_executor(vm_config(**values))
    executor.marker = marker
    return executor


def local_executor(tmp_path: Path, marker: str, **overrides: Any) -> Executor:
    executor = make_executor(vm_config(root=str(tmp_path / "vm"), **overrides))
    executor.marker = marker
    return executor


@pytest.fixture
def huge(tmp_path: Path) -> Path:
    """An 8 GiB sparse file: hashing it takes long enough to cancel, time out or drop the connection."""
    path = tmp_path / "huge"
    with path.open("wb") as handle:
        handle.truncate(8 * 1024**3)
    return path


@pytest.fixture(params=["local", "ssh"])
def executor(request: pytest.FixtureRequest, tmp_path: Path, marker: str) -> Iterator[Executor]:
    if request.param == "ssh":
        made = ssh_executor(request.getfixturevalue("sshd"), tmp_path, marker)
    else:
        made = local_executor(tmp_path, marker)
    yield made
    made.close()


def test_bundle_is_deterministic_and_holds_the_agent() -> None:
    bundle = agent_bundle()
    agent_bundle.cache_clear()
    assert agent_bundle() == bundle
    assert len(bundle.sha256) == 64
    assert "'" not in BOOTSTRAP  # it travels shell-quoted


def test_call_returns_results_and_streams_events(executor: Executor, tmp_path: Path, marker: str) -> None:
    data = os.urandom(3 * 1024 * 1024)
    path = tmp_path / "blob"
    path.write_bytes(data)
    events: list[dict[str, Any]] = []
    result = executor.call("sha256", {"path": str(path)}, on_event=events.append)

    assert result == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "sha1": hashlib.sha1(data).hexdigest(),
        "size": len(data),
    }
    assert events and all(event["event"] == "hashed" for event in events)
    assert (Path.home() / ".cache/relayd" / f"agent-{agent_bundle().sha256}.zip").is_file()
    assert executor.call("stat", {"path": str(tmp_path / "absent")}) == {"size": None}
    assert executor.sessions_started == 1, "the second call should reuse the first one's agent"
    assert len(processes_with_cmdline(marker)) >= 1  # the agent waits for the next call
    executor.close()
    assert no_agent_left(marker)


def test_a_failed_call_ends_its_session(executor: Executor, tmp_path: Path, marker: str) -> None:
    assert executor.call("stat", {"path": "/"})["size"] is not None
    with pytest.raises(Retryable):
        executor.call("sha256", {"path": str(tmp_path / "absent")})
    assert executor.call("stat", {"path": "/"})["size"] is not None
    assert executor.sessions_started == 2, "a session that failed a call must not serve another"


def test_calls_at_once_get_a_session_each(executor: Executor, tmp_path: Path, marker: str) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(64 * 1024 * 1024))
    results: list[dict[str, Any]] = []
    both_running = threading.Barrier(2, timeout=30)  # neither call may end before the other began

    def hash_it() -> None:
        waited: list[bool] = []

        def once(_event: dict[str, Any]) -> None:
            if not waited:
                waited.append(True)
                both_running.wait()

        results.append(executor.call("sha256", {"path": str(path)}, on_event=once))

    threads = [threading.Thread(target=hash_it) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 2 and results[0] == results[1]
    assert executor.sessions_started == 2
    executor.call("stat", {"path": "/"})
    assert executor.sessions_started == 2  # both were kept for later calls
    executor.close()
    assert no_agent_left(marker)


def kill_all(marker: str) -> None:
    """SIGKILL every process carrying *marker* (over SSH one's death may take the other first)."""
    for pid in processes_with_cmdline(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert no_agent_left(marker)


def test_an_idle_session_that_died_is_replaced(
    executor: Executor, marker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor.call("stat", {"path": "/"})
    kill_all(marker)  # the idle agent dies (and, over SSH, its client)
    assert executor.call("stat", {"path": "/"})["size"] is not None
    assert executor.sessions_started == 2
    # Its death not yet seen here (a dead TCP link whose ssh client lingers): the request finds no
    # agent, and the call goes to a new session instead of failing.
    monkeypatch.setattr(Session, "alive", property(lambda _self: True))
    kill_all(marker)
    assert executor.call("stat", {"path": "/"})["size"] is not None
    assert executor.sessions_started == 3


def test_idle_agents_die_with_the_daemon(executor: Executor, marker: str) -> None:
    """SIGKILL of the process holding idle sessions: their agents see EOF and exit."""
    script = (
        "import pickle, sys, time\n"
        "from relayd.vm.executor import make_executor\n"
        "executor = make_executor(pickle.loads(sys.stdin.buffer.read()))\n"
        "executor.call('stat', {'path': '/'})\n"
        "print('idle', flush=True)\n"
        "time.sleep(600)\n"
    )
    config, kind = executor.config, executor.kind
    holder = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "RELAYD_AGENT_MARKER": marker},
    )
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write(pickle.dumps(config))
    holder.stdin.close()
    try:
        assert holder.stdout.readline() == b"idle\n"
        assert processes_with_cmdline(marker), f"no idle {kind} agent"
    finally:
        holder.kill()
        holder.wait()
    assert no_agent_left(marker), "an idle agent outlived the daemon"


def test_an_old_idle_session_is_not_reused(
    executor: Executor, marker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relayd.vm.pool.REUSE_WITHIN", 0.2)
    executor.call("stat", {"path": "/"})
    time.sleep(0.3)
    executor.call("stat", {"path": "/"})
    assert executor.sessions_started == 2
    executor.close()
    assert no_agent_left(marker)


def test_agent_errors_map_to_relayd_errors(executor: Executor, tmp_path: Path) -> None:
    with pytest.raises(Permanent, match="unknown agent operation"):
        executor.call("no-such-op", {})
    with pytest.raises(Retryable) as caught:
        executor.call("sha256", {"path": str(tmp_path / "absent")})
    assert caught.value.error_class == "missing"


def test_check_reports_the_tools(executor: Executor, tmp_path: Path) -> None:
    facts = executor.check()
    assert facts.python.startswith("3.")
    assert facts.git.startswith("git version")
    assert facts.git_lfs.startswith("git-lfs/")
    assert facts.free > 0 and facts.executor == executor.kind


def test_secrets_travel_only_on_stdin(executor: Executor, tmp_path: Path, marker: str) -> None:
    secret = "s3cret-" + os.urandom(8).hex()
    path = tmp_path / "big"
    path.write_bytes(os.urandom(32 * 1024 * 1024))
    seen: list[list[int]] = []

    def look(_event: dict[str, Any]) -> None:
        seen.append(processes_with_cmdline(secret))

    executor.call("sha256", {"path": str(path)}, secrets={"token": secret}, on_event=look)
    assert seen and not any(seen)
    assert not processes_with_cmdline(secret)  # nor in the agent waiting for the next call


def test_cancel_stops_the_agent_and_leaves_nothing(executor: Executor, huge: Path, marker: str) -> None:
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        executor.call("sha256", {"path": str(huge)}, cancel=cancel, on_event=lambda _e: cancel.set())
    assert no_agent_left(marker)


def test_timeout_kills_the_agent(tmp_path: Path, huge: Path, marker: str) -> None:
    executor = local_executor(tmp_path, marker)
    with pytest.raises(Retryable) as caught:
        executor.call("sha256", {"path": str(huge)}, timeout=1.0)
    assert caught.value.error_class == "timeout"
    assert no_agent_left(marker)


def test_close_kills_running_calls(tmp_path: Path, huge: Path, marker: str) -> None:
    executor = local_executor(tmp_path, marker)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            executor.call("sha256", {"path": str(huge)})
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert wait_until(lambda: processes_with_cmdline(marker))
    executor.close()
    thread.join(10)
    # Killed while running (the link died: Retryable), or caught by close() while starting (Cancelled).
    assert errors and isinstance(errors[0], Retryable | Cancelled)
    assert no_agent_left(marker)
    with pytest.raises(Cancelled):
        executor.call("stat", {"path": "/"})


def test_local_python_missing_is_blocked(tmp_path: Path, marker: str) -> None:
    executor = local_executor(tmp_path, marker, python="python3-not-installed")
    with pytest.raises(NeedsPerson) as caught:
        executor.check()
    assert "python" in caught.value.hint


# -- over SSH ---------------------------------------------------------------------------------------


def test_ssh_command_line(sshd: SandboxSshd, tmp_path: Path) -> None:
    executor = ssh_executor(
        sshd,
        tmp_path,
        "m",
        port=2222,
        user="relay",
        identity_file=tmp_path / "key",
        known_hosts_file=tmp_path / "known",
        ssh_options=("-o", "ProxyJump=none"),
    )
    assert isinstance(executor, SshExecutor)
    options = executor.destination_options()
    joined = " ".join(options)
    assert f"-F {sshd.ssh_config_file}" in joined
    assert "-p 2222" in joined and "-l relay" in joined
    assert f"-i {tmp_path / 'key'}" in joined
    assert f"UserKnownHostsFile={tmp_path / 'known'}" in joined
    assert "StrictHostKeyChecking=yes" in joined and "BatchMode=yes" in joined
    assert options.index("ProxyJump=none") < options.index("StrictHostKeyChecking=yes")
    remote = executor.remote_command(agent_bundle())
    assert remote.startswith(f"exec env PATH={VM_PATH} python3 -I -c ")
    lax = ssh_executor(sshd, tmp_path, "m", strict_host_key_checking="no")
    assert "StrictHostKeyChecking=no" in lax.destination_options()  # type: ignore[attr-defined]
    first_use = ssh_executor(sshd, tmp_path, "m", strict_host_key_checking="accept-new")
    assert "StrictHostKeyChecking=accept-new" in first_use.destination_options()  # type: ignore[attr-defined]
    assert isinstance(make_executor(vm_config()), LocalExecutor)


def test_wrong_host_key_is_blocked_with_a_hint(
    sshd: SandboxSshd, tmp_path: Path, marker: str, wrong_known_hosts: Path
) -> None:
    executor = ssh_executor(sshd, tmp_path, marker, known_hosts_file=wrong_known_hosts)
    with pytest.raises(NeedsPerson) as caught:
        executor.check()
    assert caught.value.error_class == "host_key"
    assert "host key" in str(caught.value)
    assert "known_hosts" in caught.value.hint and str(wrong_known_hosts) in caught.value.hint


def test_vm_without_git_lfs_is_blocked(sshd: SandboxSshd, tmp_path: Path, marker: str) -> None:
    vm_path = restricted_path(tmp_path / "bin", hide=["git-lfs"], path=VM_PATH)
    executor = ssh_executor(sshd, tmp_path, marker, path=vm_path)
    facts = executor.facts()
    assert facts.git and not facts.git_lfs
    with pytest.raises(NeedsPerson) as caught:
        executor.check()
    assert "git-lfs is not installed" in str(caught.value)
    assert "apt-get install git-lfs" in caught.value.hint
    executor.check(need=("git",))  # a hop that needs no git-lfs passes


def test_vm_without_python_is_blocked(sshd: SandboxSshd, tmp_path: Path, marker: str) -> None:
    executor = ssh_executor(sshd, tmp_path, marker, python="python3-not-installed")
    with pytest.raises(NeedsPerson) as caught:
        executor.check()
    assert caught.value.error_class == "setup"
    assert "install python3" in caught.value.hint


def test_unreachable_vm_is_retryable(tmp_path: Path, marker: str, sshd: SandboxSshd) -> None:
    from relayd_sandbox._http import free_port

    executor = ssh_executor(sshd, tmp_path, marker, ssh_options=("-p", str(free_port())))
    with pytest.raises(Retryable) as caught:
        executor.check()
    assert caught.value.error_class == "network"


def test_dropped_connection_is_retryable_and_leaves_no_agent(
    sshd: SandboxSshd, tmp_path: Path, huge: Path, marker: str
) -> None:
    executor = ssh_executor(sshd, tmp_path, marker)
    killer = threading.Thread(target=sshd.kill_sessions)

    def drop_once(_event: dict[str, Any]) -> None:
        if not killer.is_alive() and killer.ident is None:
            killer.start()  # the agent is hashing on the VM: drop the connection now

    with pytest.raises(Retryable) as caught:
        executor.call("sha256", {"path": str(huge)}, on_event=drop_once)
    killer.join(10)
    assert caught.value.error_class == "network"
    assert no_agent_left(marker), "the agent outlived its SSH connection"
    assert executor.call("stat", {"path": "/"})["size"] is not None  # reconnects


def test_an_idle_agent_exits_by_itself() -> None:
    from relayd.vm.agent import core

    read_end, write_end = os.pipe()
    stdin = os.fdopen(read_end)
    started = time.monotonic()
    assert core.serve(stdin, io.StringIO(), idle_exit=0.3) == 0
    assert 0.3 <= time.monotonic() - started < 5
    os.close(write_end)


def test_a_reload_retires_the_executor_it_replaces(executor: Executor, marker: str) -> None:
    services = Services({"vm": lambda: executor})
    services.get("vm").call("stat", {"path": "/"})
    assert processes_with_cmdline(marker), "the idle session should be kept"
    services.register("vm", lambda: make_executor(executor.config))
    assert no_agent_left(marker), "the replaced executor's idle sessions should end"
    # A transfer still holding the old executor finishes with it, in a session that is not kept.
    assert executor.call("stat", {"path": "/"})["size"] is not None
    assert executor.sessions_started == 2
    assert no_agent_left(marker)


# -- what children inherit, and what the daemon reads from them ---------------------------------------


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_children_inherit_only_the_allow_listed_environment(
    executor: Executor, marker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "hf_" + os.urandom(12).hex()
    for name in ("HF_TOKEN", "MODELSCOPE_TOKEN", "RELAYD_DEMO_MS_TOKEN", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, secret)
    monkeypatch.setenv("LC_TIME", "C.UTF-8")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    executor.call("stat", {"path": "/"})  # the session stays, idle, for the next call
    pids = processes_with_cmdline(marker)  # the local agent; over SSH the client and the remote agent
    assert pids
    for pid in pids:
        environment = environ_of(pid)
        assert secret not in "\0".join(f"{k}={v}" for k, v in environment.items()), environment
        assert "PATH" in environment
    (session,) = executor._idle
    child = environ_of(session.process.pid)
    assert child["LC_TIME"] == "C.UTF-8" and child["NO_PROXY"] == "127.0.0.1"
    assert child["https_proxy"] == "http://127.0.0.1:9"


def fake_agent(tmp_path: Path, answer: str) -> Path:
    """A 'python' for vm.python that greets like the bootstrap, reads the request, then runs *answer*."""
    script = tmp_path / "fake-python"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        'sys.stdout.write(\'{"event":"agent","cached":true}\\n\'); sys.stdout.flush()\n'
        "sys.stdin.readline()\n" + answer
    )
    script.chmod(0o755)
    return script


def test_an_agent_line_without_end_fails_the_call_and_the_memory_stays_flat(
    tmp_path: Path, marker: str
) -> None:
    # 300 MB with no newline: the daemon reads at most MAX_LINE of it, then ends the session.
    python = fake_agent(
        tmp_path,
        "chunk = b'x' * (1 << 20)\n"
        "try:\n"
        "    for _ in range(300):\n"
        "        sys.stdout.buffer.write(chunk)\n"
        "    sys.stdout.flush()\n"
        "except BrokenPipeError:\n"
        "    pass\n",
    )
    executor = local_executor(tmp_path, marker, python=str(python))
    tracemalloc.start()
    try:
        with pytest.raises(Retryable) as caught:
            executor.call("stat", {"path": "/"}, timeout=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.error_class == "protocol"
    assert "longer than 8 MiB" in str(caught.value)
    assert peak < MAX_LINE + 16 * 1024 * 1024, peak
    assert executor.sessions_started == 1 and not executor._idle  # the session was ended, not kept
    assert no_agent_left(str(python))
    executor.close()


def test_an_error_class_the_daemon_does_not_know_becomes_the_generic_one(tmp_path: Path, marker: str) -> None:
    """The agent names error classes as plain strings: one relayd does not know (an agent of another
    version) is recorded as "error", the rest of the agent's report kept."""
    error = '"kind": "blocked", "class": "warp_core_breach", "message": "the VM melted", "hint": "cool it"'
    answer = '{"event": "result", "ok": false, "reusable": false, "error": {' + error + "}}"
    python = fake_agent(tmp_path, f"sys.stdout.write({answer!r} + chr(10)); sys.stdout.flush()\n")
    executor = local_executor(tmp_path, marker, python=str(python))
    with pytest.raises(NeedsPerson) as caught:
        executor.call("stat", {"path": "/"}, timeout=60)
    executor.close()
    assert (caught.value.error_class, str(caught.value), caught.value.hint) == (
        "error",
        "the VM melted",
        "cool it",
    )


def test_an_agent_flooding_stderr_costs_a_bounded_tail(tmp_path: Path, marker: str) -> None:
    python = fake_agent(
        tmp_path,
        "sys.stderr.buffer.write(b'e' * (64 << 20)); sys.stderr.flush()\n"
        'sys.stdout.write(\'{"event":"result","ok":true,"result":{"size":1},"reusable":false}\\n\')\n',
    )
    executor = local_executor(tmp_path, marker, python=str(python))
    tracemalloc.start()
    try:
        assert executor.call("stat", {"path": "/"}, timeout=60) == {"size": 1}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    executor.close()
    assert peak < 8 * 1024 * 1024, peak


def test_the_agent_bounds_the_error_texts_it_sends() -> None:
    from relayd.vm.agent.core import MESSAGE_LIMIT, AgentError

    error = AgentError("m" * 1_000_000, hint="h" * 10_000).as_dict()
    assert len(error["message"]) == MESSAGE_LIMIT and error["message"].endswith("(truncated)")
    assert len(error["hint"]) == MESSAGE_LIMIT


def interpreters() -> list[str]:
    """This python, and the oldest the agent supports (3.8) when this machine has one."""
    old = sorted(Path.home().glob(".pyenv/versions/3.8*/bin/python3.8")) + [
        Path(p) for p in ("/usr/bin/python3.8",) if Path(p).exists()
    ]
    return [sys.executable, *(str(path) for path in old[:1])]


@pytest.mark.parametrize("python", interpreters())
def test_the_agent_runs_isolated(
    tmp_path: Path, marker: str, python: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What -I ignores: a PYTHONPATH and a working directory holding a module that shadows one the
    # agent imports.
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / "hashlib.py").write_text("raise SystemExit('the agent imported a planted module')\n")
    monkeypatch.setenv("PYTHONPATH", str(trap))
    monkeypatch.chdir(trap)
    executor = local_executor(tmp_path, marker, python=python)
    try:
        facts = executor.check(need=())
        assert facts.python.startswith("3.")
        (pid,) = processes_with_cmdline(marker)
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1] == b"-I"
    finally:
        executor.close()


def test_files_the_agent_creates_are_private(
    executor: Executor, tmp_path: Path, fake_drive: FakeDrive
) -> None:
    data = os.urandom(300_000)
    file_id = upload_to_fake_drive(fake_drive, data, "w.bin")
    links = FakeDriveLinks(
        fake_drive.api_url, fake_drive.issue_access_token(), drive_id=fake_drive.default_drive_id
    )
    root = tmp_path / "vm"
    params = pull_params(root, data, piece=len(data), relpath="acme/m/w.bin", connections=1, max_tries=2)
    old = os.umask(0o022)  # what a login shell on the VM, or this test's process, would give it
    try:
        assert executor.call("pull", params, secrets={"url": links.download_url(file_id).url})["renamed"]
    finally:
        os.umask(old)
    assert stat.S_IMODE((root / "acme/m/w.bin").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "acme/m").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "acme").stat().st_mode) == 0o700


# -- the SSH connection-sharing directory -------------------------------------------------------------


def control_path(options: list[str]) -> str | None:
    found = [item.split("=", 1)[1] for item in options if item.startswith("ControlPath=")]
    return found[0] if found else None


@pytest.fixture
def short_state_dir() -> Iterator[Path]:
    """A state directory with a short path (a socket path must stay under 108 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("hostile", ["other owner", "symlink", "open mode", "a file"])
def test_a_control_directory_that_is_not_ours_is_not_used(
    sshd: SandboxSshd,
    tmp_path: Path,
    marker: str,
    short_state_dir: Path,
    hostile: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="rr-", dir="/tmp"))
    try:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
        planted = runtime / f"relayd-ssh-{os.getuid()}"
        if hostile == "other owner":
            planted.mkdir(mode=0o700)
            os.chown(planted, 65534, 65534)  # nobody's: it could swap our socket for its own
        elif hostile == "symlink":
            (runtime / "elsewhere").mkdir(mode=0o700)
            planted.symlink_to(runtime / "elsewhere")
        elif hostile == "open mode":
            planted.mkdir()
            planted.chmod(0o777)
        else:
            planted.write_text("")
        executor = make_executor(
            vm_config(
                executor="ssh",
                host="127.0.0.1",
                root=str(tmp_path / "vm"),
                ssh_config_file=sshd.ssh_config_file,
                python="python3",
                path=VM_PATH,
            ),
            state_dir=short_state_dir,
        )
        executor.marker = marker
        assert isinstance(executor, SshExecutor)
        path = control_path(executor.destination_options())
        assert path is not None and path.startswith(f"{short_state_dir}/ssh/"), path
        facts = os.lstat(short_state_dir / "ssh")
        assert stat.S_ISDIR(facts.st_mode) and stat.S_IMODE(facts.st_mode) == 0o700
        assert executor.check().python.startswith("3.")  # and it connects through it
        executor.close()
        # Without a state directory to fall back on, connections are simply not shared.
        alone = make_executor(vm_config(executor="ssh", host="127.0.0.1"))
        assert control_path(alone.destination_options()) is None  # type: ignore[attr-defined]
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def test_our_own_private_runtime_directory_is_used(
    tmp_path: Path, short_state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = short_state_dir / "run"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    executor = make_executor(vm_config(executor="ssh", host="vm"), state_dir=short_state_dir)
    path = control_path(executor.destination_options())  # type: ignore[attr-defined]
    assert path is not None and path.startswith(f"{runtime}/relayd-ssh-{os.getuid()}/")
    assert stat.S_IMODE((runtime / f"relayd-ssh-{os.getuid()}").stat().st_mode) == 0o700


# -- the SSH key and known_hosts as systemd credentials -----------------------------------------------


def test_the_ssh_key_and_known_hosts_can_be_systemd_credentials(
    sshd: SandboxSshd, tmp_path: Path, marker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    shutil.copy(sshd.identity_file, credentials / "vm-ssh-key")
    shutil.copy(sshd.known_hosts_file, credentials / "vm-known-hosts")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh of ours to fall back on
    values: dict[str, Any] = {
        "executor": "ssh",
        "host": "127.0.0.1",
        "port": sshd.port,
        "user": sshd.user,
        "root": str(tmp_path / "vm"),
        "python": "python3",
        "path": VM_PATH,
        "ssh_multiplex": False,
        "identity_credential": "vm-ssh-key",
        "known_hosts_credential": "vm-known-hosts",
    }
    executor = make_executor(vm_config(**values))
    executor.marker = marker
    joined = " ".join(executor.destination_options())  # type: ignore[attr-defined]
    assert f"-i {credentials / 'vm-ssh-key'}" in joined
    assert f"UserKnownHostsFile={credentials / 'vm-known-hosts'}" in joined
    try:
        assert executor.check(need=()).python.startswith("3.")
    finally:
        executor.close()
    (credentials / "vm-ssh-key").write_text("\n")  # what relayd.service's SetCredential= default gives
    empty = make_executor(vm_config(**values))
    with pytest.raises(NeedsPerson, match=r"'vm-ssh-key' .* is empty") as caught:
        empty.check(need=())
    assert "LoadCredential=" in caught.value.hint
    empty.close()


def vm_section(tmp_path: Path, **values: Any) -> Any:
    from relayd.config import parse_config

    return parse_config({"vm": values}, tmp_path / "relayd.toml").vm


def test_the_vm_config_takes_accept_new_and_credentials(tmp_path: Path) -> None:
    from relayd.errors import ConfigError

    assert vm_section(tmp_path).strict_host_key_checking == "yes"
    assert vm_section(tmp_path, strict_host_key_checking=False).strict_host_key_checking == "no"
    assert (
        vm_section(tmp_path, strict_host_key_checking="accept-new").strict_host_key_checking == "accept-new"
    )
    with pytest.raises(ConfigError, match="accept-new"):
        vm_section(tmp_path, strict_host_key_checking="maybe")
    section = vm_section(tmp_path, identity_credential="vm-ssh-key", known_hosts_credential="vm-known-hosts")
    assert (section.identity_credential, section.known_hosts_credential) == ("vm-ssh-key", "vm-known-hosts")
    with pytest.raises(ConfigError, match="credential name"):
        vm_section(tmp_path, identity_credential="../etc/shadow")
    with pytest.raises(ConfigError, match="only one of identity_file, identity_credential"):
        vm_section(tmp_path, identity_file="/k", identity_credential="vm-ssh-key")
