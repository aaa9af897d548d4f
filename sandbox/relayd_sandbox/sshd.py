"""A real OpenSSH server on 127.0.0.1 for the VM executor's tests and the demo.

``SandboxSshd`` starts ``/usr/sbin/sshd`` on a free port with a throwaway host key and user key, and
writes a client ``ssh_config`` whose ``known_hosts`` holds that host key, so host-key checking stays on
(``StrictHostKeyChecking yes``) exactly as against a real VM::

    with SandboxSshd() as sshd:
        subprocess.run(sshd.ssh_command("sh", "-c", "echo $HOME"), check=True)
        sshd.kill_sessions()   # drop every live connection; the listener keeps running

The server logs in as the current user (root in CI, with ``PermitRootLogin prohibit-password``). The
session is a real login: sshd runs the command through the user's shell, and Debian's bash sources
``~/.bashrc`` for ssh commands, which may rewrite ``PATH`` (as on a real VM).

A VM without git-lfs: give the remote command its own ``PATH`` inside the command itself, which is
applied after any startup file, e.g. ``ssh_command("git", "lfs", "version", env={"PATH": p})`` with
``p = restricted_path(dir, hide=["git-lfs"])``, a directory of links to every tool on ``PATH`` but
git-lfs. (``AcceptEnv``/``SetEnv`` are not used for this: a startup file can undo them.)

What a dropped connection does to the remote command (OpenSSH 9.2, no pty): sshd puts the command
in its own session and process group, with pipes for stdin/stdout/stderr and no controlling terminal,
so there is no SIGHUP when the connection dies. A command that writes output dies of SIGPIPE on its
next write and one that reads stdin sees EOF, but a silent one (``sleep``, a downloader writing only
to a file) keeps running on the VM. An executor that must leave no runaway process should run the
command under a guard that kills its process group when stdin reaches EOF, and keep ssh's stdin open
for as long as the command runs; ``tests/sandbox/test_sshd.py`` shows such a guard working.
"""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from relayd_sandbox._http import free_port
from relayd_sandbox.processes import (
    ServerProcess,
    kill_sshd_descendants,
    process_table,
    terminate_tree,
    wait_gone,
)

log = logging.getLogger(__name__)

SSHD_PATH = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")

# Accepted only by newer OpenSSH (9.8+), whose penalties would refuse 127.0.0.1 for a while after
# a test kills sessions or probes the port; kept when ``sshd -t`` accepts them, dropped otherwise.
_OPTIONAL_SSHD_OPTIONS = ("PerSourcePenalties no", "PerSourceMaxStartups none")


class SshdError(RuntimeError):
    """The sandbox sshd could not be set up or started."""


class SandboxSshd(ServerProcess):
    """A throwaway sshd on 127.0.0.1 and the client files to reach it with host-key checking on.

    Given an optional *workdir* (kept after ``stop()``; by default a temporary directory that
    ``stop()`` removes) and an optional *user* (by default the current user; sshd not running as root
    can only log in as itself), ``start()`` generates the keys, writes ``sshd_config``, runs
    ``sshd -D -e`` as a child and returns once the port answers with an SSH banner.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        user: str | None = None,
        sshd_path: str = SSHD_PATH,
        log_level: str = "VERBOSE",
        start_timeout: float = 10.0,
    ) -> None:
        self.user = user or pwd.getpwuid(os.geteuid()).pw_name
        self.sshd_path = sshd_path
        self.log_level = log_level
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="relayd-sshd-")) if workdir is None else workdir
        self.host_key_file = self.workdir / "ssh_host_ed25519_key"
        self.identity_file = self.workdir / "id_ed25519"
        self.authorized_keys_file = self.workdir / "authorized_keys"
        self.known_hosts_file = self.workdir / "known_hosts"
        self.sshd_config_file = self.workdir / "sshd_config"
        self.ssh_config_file = self.workdir / "ssh_config"
        self.pid_file = self.workdir / "sshd.pid"
        self.log_file = self.workdir / "sshd.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes], Path | None], SandboxSshd] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> SandboxSshd:
        """Generate keys and configs, start sshd and wait until it answers; return self.

        Raise SshdError if sshd is missing, rejects its config or does not come up in time.
        """
        if self._process is not None:
            raise SshdError("sandbox sshd already started")
        if not os.access(self.sshd_path, os.X_OK):
            raise SshdError(f"{self.sshd_path} not found: install openssh-server (scripts/dev setup does)")
        if any(ch in str(self.workdir) for ch in '%"\n'):
            raise SshdError(f'workdir {self.workdir} must not contain %, " or a newline')
        try:
            self._start()
        except BaseException:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        return self

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._generate_keys()
        if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
            # sshd running as root chroots its pre-auth child here and refuses to start without it.
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
            PRIVSEP_DIR.chmod(0o755)
        error = ""
        for _attempt in range(5):
            self.port = free_port()
            self._write_sshd_config()
            process = self._spawn()
            try:
                ready_error = self._wait_ready(process)
                if ready_error is None:
                    self._write_client_files()
            except BaseException:
                terminate_tree(process)
                raise
            if ready_error is None:
                self._process = process
                self._finalizer = weakref.finalize(
                    self, _shutdown, process, self.workdir if self._own_workdir else None
                )
                log.info("sandbox sshd listening on %s:%d (pid %d)", self.host, self.port, process.pid)
                return
            error = ready_error
            terminate_tree(process)
            if "Address already in use" not in error:
                break
            log.debug("port %d was taken before sshd bound it; trying another", self.port)
        raise SshdError(f"sandbox sshd did not start: {error}")

    def stop(self) -> None:
        """Drop every session, stop the listener and remove the temporary workdir (if it made one).

        Processes that a session's command left running outside sshd (see the module doc) are not
        touched.
        """
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
            log.info("sandbox sshd on port %d stopped", self.port)
        elif self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._process = None

    # -- client side -----------------------------------------------------------------------------

    def ssh_command(
        self,
        *remote_args: str,
        env: Mapping[str, str] | None = None,
        ssh_options: Sequence[str] = (),
    ) -> list[str]:
        """Return an ssh argv that runs *remote_args* on the sandbox as an argv (each shell-quoted).

        *env* is set for the remote command with ``env NAME=VALUE ...``, after the login shell's
        startup files, so ``env={"PATH": ...}`` is how a test hides tools from the "VM". Extra
        *ssh_options* (``["-o", "ServerAliveInterval=1"]``) go before the destination.
        """
        words = list(remote_args)
        if env:
            words = ["env", *(f"{name}={value}" for name, value in env.items()), *words]
        argv = ["ssh", "-F", str(self.ssh_config_file), *ssh_options, "--", self.host]
        if words:
            argv.append(shlex.join(words))
        return argv

    # -- sessions --------------------------------------------------------------------------------

    def session_pids(self) -> list[int]:
        """Return the pids of the per-connection sshd processes (the listener's children)."""
        pid = self.pid
        if pid is None:
            return []
        return sorted(process_table().children.get(pid, []))

    def kill_sessions(self, timeout: float = 5.0) -> list[int]:
        """SIGKILL every session's sshd processes, dropping all live connections; return their pids.

        The listener keeps running and accepts new connections. Wait up to *timeout* seconds for the
        killed processes to be gone.
        """
        pid = self.pid
        if pid is None:
            return []
        killed = kill_sshd_descendants(pid)
        wait_gone(killed, timeout)
        if killed:
            log.info("killed sandbox sshd sessions %s", killed)
        return killed

    def log_text(self) -> str:
        """Return what sshd has logged so far."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- internals -------------------------------------------------------------------------------

    def _generate_keys(self) -> None:
        keygen = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
        for path, comment in (
            (self.host_key_file, "relayd-sandbox-host"),
            (self.identity_file, "relayd-sandbox-user"),
        ):
            if not path.exists():
                subprocess.run(
                    [keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                    check=True,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                )
        pub = self.identity_file.with_name(self.identity_file.name + ".pub").read_text()
        self.authorized_keys_file.write_text(pub)

    def _sshd_config_lines(self) -> list[str]:
        root_login = "prohibit-password" if self.user == "root" else "no"
        return [
            "# Written by relayd_sandbox.sshd for a throwaway test server.",
            f"ListenAddress {self.host}",
            f"Port {self.port}",
            f'HostKey "{self.host_key_file}"',
            f'PidFile "{self.pid_file}"',
            f'AuthorizedKeysFile "{self.authorized_keys_file}"',
            f"AllowUsers {self.user}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            f"PermitRootLogin {root_login}",
            # The keys live in a temp dir that StrictModes would find too open (and not ours for
            # other users); PAM needs /etc/pam.d and loginuid, which containers often lack.
            "StrictModes no",
            "UsePAM no",
            "PermitUserEnvironment no",
            "AcceptEnv LANG LC_*",
            "X11Forwarding no",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "LoginGraceTime 30",
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            "Subsystem sftp internal-sftp",
            f"LogLevel {self.log_level}",
        ]

    def _write_sshd_config(self) -> None:
        lines = self._sshd_config_lines()
        self.sshd_config_file.write_text("\n".join([*lines, *_OPTIONAL_SSHD_OPTIONS]) + "\n")
        if self._config_test() is None:
            return
        self.sshd_config_file.write_text("\n".join(lines) + "\n")
        error = self._config_test()
        if error is not None:
            raise SshdError(f"sshd rejected {self.sshd_config_file}: {error}")

    def _config_test(self) -> str | None:
        result = subprocess.run(
            [self.sshd_path, "-t", "-f", str(self.sshd_config_file)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        return None if result.returncode == 0 else (result.stderr.strip() or f"exit {result.returncode}")

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_file.open("ab") as log_stream:
            return subprocess.Popen(
                [self.sshd_path, "-D", "-e", "-f", str(self.sshd_config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log_stream,
                stderr=log_stream,
                start_new_session=True,  # a Ctrl-C meant for pytest does not reach sshd first
            )

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> str | None:
        """Wait until *process* answers on the port with an SSH banner; return None, or why not."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return f"sshd exited with {process.returncode}: {self.log_text().strip()[-2000:]}"
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                    if sock.recv(8).startswith(b"SSH-"):
                        return None
            except OSError:
                pass
            time.sleep(0.02)
        return f"no SSH banner on port {self.port} after {self.start_timeout:.0f}s: {self.log_text()[-2000:]}"

    def _write_client_files(self) -> None:
        key_type, key_data = (
            self.host_key_file.with_name(self.host_key_file.name + ".pub").read_text().split()[:2]
        )
        self.known_hosts_file.write_text(f"[{self.host}]:{self.port} {key_type} {key_data}\n")
        lines = [
            "# Written by relayd_sandbox.sshd: reaches the sandbox sshd with host-key checking on.",
            "Host *",
            f"    HostName {self.host}",
            f"    Port {self.port}",
            f"    User {self.user}",
            f'    IdentityFile "{self.identity_file}"',
            "    IdentitiesOnly yes",
            "    IdentityAgent none",
            f'    UserKnownHostsFile "{self.known_hosts_file}"',
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking yes",
            "    CheckHostIP no",
            "    UpdateHostKeys no",
            "    BatchMode yes",
            "    PasswordAuthentication no",
            "    KbdInteractiveAuthentication no",
            "    ControlMaster no",
            "    ControlPath none",
            "    ConnectTimeout 10",
            "    LogLevel ERROR",
        ]
        self.ssh_config_file.write_text("\n".join(lines) + "\n")


def restricted_path(directory: Path, *, hide: Iterable[str] = ("git-lfs",), path: str | None = None) -> str:
    """Fill *directory* with links to every executable on *path* (default ``$PATH``) but *hide*.

    Return *directory* as a ``PATH`` value: a remote command run with it finds every usual tool
    (``git``, ``sh``, ``curl``, ...) except the hidden ones, as on a VM that lacks them.
    """
    hidden = set(hide)
    directory.mkdir(parents=True, exist_ok=True)
    search = os.environ.get("PATH", os.defpath) if path is None else path
    for entry in search.split(os.pathsep):
        if not entry or not os.path.isdir(entry):
            continue
        for name in sorted(os.listdir(entry)):
            target = os.path.join(entry, name)
            link = directory / name
            if name in hidden or link.exists() or link.is_symlink():
                continue
            if os.path.isfile(target) and os.access(target, os.X_OK):
                link.symlink_to(target)
    return str(directory)


def _shutdown(process: subprocess.Popen[bytes], workdir: Path | None) -> None:
    """Finalizer of a started SandboxSshd: also runs at interpreter exit if stop() was never called."""
    terminate_tree(process)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
