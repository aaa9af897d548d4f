"""The VM is reached with the OpenSSH client: host-key checking, BatchMode, keep-alives, a shared
connection whose control socket lives in a directory private to us, and ssh's failures as hints.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shlex
import stat
import subprocess
import tempfile
from pathlib import Path

from relayd.config import VmConfig, credential_path
from relayd.errors import ConfigError, ErrorClass, HopError, NeedsPerson, Retryable
from relayd.vm.bundle import AgentBundle, bootstrap_argv
from relayd.vm.environment import child_environment
from relayd.vm.pool import Executor

log = logging.getLogger(__name__)

#: sun_path's size on Linux: a Unix socket's path must be shorter.
SOCKET_PATH_MAX = 108

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
        words += bootstrap_argv(self.config.python, bundle, self.marker)
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
