"""The README's systemd install, done as written in a scratch root, then the service started as systemd
would start contrib/relayd.service: an unprivileged user with only its credentials directory, its state
directory and the readable config. It checks the config and relays a private repo over the whole route
(the Hub token, the drive's refresh token, the SSH key and known_hosts and the ModelScope token all
come from credentials), while the secrets stay unreadable to it where they are installed.

The README is the source of truth: the commands come from its code block, the credential names from
the unit's ``LoadCredential=`` lines, the user's environment from the unit. What the test cannot do is
be PID 1, so it plays systemd's part: it copies each credential into a directory readable by the
service user alone (root-owned files, mode 0400, with an ACL entry for that user, as systemd makes
them), creates the state directory as the user's, and runs ``ExecStart`` under ``setpriv``.
"""

from __future__ import annotations

import codecs
import json
import os
import pwd
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relayd_sandbox.hub import make_model_repo
from relayd_sandbox.route import HUB_USER, OWNER, RouteSandbox
from relayd_sandbox.systools import require

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
# nobody: unprivileged, and known to NSS as ssh requires (nss-systemd does that for a dynamic user).
SERVICE_UID = pwd.getpwnam("nobody").pw_uid
SERVICE_GID = pwd.getpwnam("nobody").pw_gid
PRIVATE = f"{OWNER}/private-model"
BIN = Path(sys.executable).parent
# systemd's PATH for system services.
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def readme_service_block() -> list[str]:
    """Return the command lines of the README's "Run it as a systemd service" code block."""
    section = README.read_text().split("### Run it as a systemd service", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```sh\n(.*?)```", section, flags=re.S)
    assert found, "the README's service section has no sh block"
    return [line for line in found.group(1).splitlines() if line.strip()]


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """Return the [Service] settings of a unit file: name → every value, in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            name, _, value = line.partition("=")
            settings.setdefault(name, []).append(value)
    return settings


def acl_granting(uid: int, permissions: int) -> bytes:
    """The system.posix_acl_access value: owner and *uid* get *permissions*, group and others nothing."""
    undefined = 0xFFFFFFFF
    entries = [(0x01, permissions, undefined), (0x02, permissions, uid), (0x04, 0, undefined)]
    entries += [(0x10, permissions, undefined), (0x20, 0, undefined)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


class Installation:
    """A scratch root that the README's commands install into, and the service started from it."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root = root
        self.workdir = workdir
        self.skipped: list[str] = []

    def at(self, path: str) -> Path:
        """Where the absolute *path* of a real machine is in the scratch root."""
        return self.root / path.lstrip("/")

    def word(self, word: str) -> str:
        if word.startswith("/opt/relayd/bin/"):
            return str(BIN / word.rsplit("/", 1)[1])  # this checkout's relayd, installed in .venv
        if word.startswith("/"):
            return str(self.at(word))
        return word

    def run_readme(self, edit: Callable[[Path], None]) -> None:
        """Run the README's block: install commands into the scratch root; *edit* the config once
        it is written, as the person would; leave systemctl and journalctl to start()."""
        for line in readme_service_block():
            words = shlex.split(line, comments=True)
            if words[0] == "sudo":
                words = words[1:]
            if words[0] in ("systemctl", "journalctl"):
                self.skipped.append(" ".join(words))
                continue
            output = None
            if ">" in words:
                words, output = words[: words.index(">")], words[words.index(">") + 1]
            result = subprocess.run(
                [self.word(word) for word in words], cwd=self.workdir, capture_output=True, check=False
            )
            assert result.returncode == 0, (line, result.stderr.decode())
            if output is not None:
                (self.workdir / output).write_bytes(result.stdout)
                edit(self.workdir / output)

    # -- what systemd does when it starts the unit --------------------------------------------------

    def start(self) -> None:
        """Set up what systemd gives the service: its credentials, its state directory, its
        environment and its command line."""
        unit = self.at("/etc/systemd/system/relayd.service")
        settings = unit_settings(unit)
        assert settings["DynamicUser"] == ["yes"]
        defaults = {}
        for value in settings.get("SetCredential", []):
            name, _, data = value.partition(":")
            defaults[name] = codecs.decode(data, "unicode_escape").encode()
        self.credentials = self.at(f"/run/credentials/{unit.name}")
        self.credentials.mkdir(parents=True)
        self.loaded: dict[str, Path] = {}
        for value in settings["LoadCredential"]:
            name, _, source = value.partition(":")
            path = self.at(source)
            data = path.read_bytes() if path.exists() else defaults[name]
            target = self.credentials / name
            target.write_bytes(data)
            target.chmod(0o400)
            os.setxattr(target, "system.posix_acl_access", acl_granting(SERVICE_UID, 0o4))
            self.loaded[name] = path
        self.credentials.chmod(0o500)
        os.setxattr(self.credentials, "system.posix_acl_access", acl_granting(SERVICE_UID, 0o5))
        (state,) = settings["StateDirectory"]
        self.state = self.at(f"/var/lib/{state}")
        self.state.mkdir(parents=True, exist_ok=True)
        os.chown(self.state, SERVICE_UID, SERVICE_GID)
        self.state.chmod(int(settings["StateDirectoryMode"][0], 8))
        self.umask = settings["UMask"][0]
        self.env = {
            "PATH": SYSTEMD_PATH,
            "LANG": "C.UTF-8",
            "USER": "relayd",
            "LOGNAME": "relayd",
            "HOME": "/",
            "CREDENTIALS_DIRECTORY": str(self.credentials),
            "STATE_DIRECTORY": str(self.state),
            "CONFIGURATION_DIRECTORY": str(self.at("/etc/relayd")),
        }
        for value in settings.get("Environment", []):
            name, _, data = value.partition("=")
            self.env[name] = self.word(data)
        (self.command,) = settings["ExecStart"]

    def as_service(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run *argv* as the service's user, with its umask and environment."""
        umask = int(self.umask, 8)
        return subprocess.run(
            ["setpriv", f"--reuid={SERVICE_UID}", f"--regid={SERVICE_GID}", "--clear-groups", "--", *argv],
            cwd="/",
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
            preexec_fn=lambda: os.umask(umask),  # the unit's UMask=, in the child only
        )

    def exec_start(self, *extra: str) -> list[str]:
        return [self.word(word) for word in shlex.split(self.command)] + list(extra)


@pytest.fixture
def installation() -> Iterator[Installation]:
    # Not under pytest's tmp_path, which only root may enter: the service user must reach its files.
    root = Path(tempfile.mkdtemp(prefix="relayd-root-"))
    root.chmod(0o755)
    for directory in ("etc/systemd/system", "var/lib", "run"):
        (root / directory).mkdir(parents=True)
    workdir = root / "home" / "admin"
    workdir.mkdir(parents=True, mode=0o700)
    (workdir / "contrib").mkdir()
    shutil.copy(ROOT / "contrib" / "relayd.service", workdir / "contrib")
    try:
        yield Installation(root, workdir)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def set_key(text: str, section: str, key: str, value: str | int) -> str:
    """Set ``key = value`` in *section* of the example: the documented line (commented or not) if
    there is one, else a new line under the section's header."""
    header = f"[{section}]\n"
    start = text.index(header) + len(header)
    end = text.find("\n[", start)
    end = len(text) if end < 0 else end + 1
    body = text[start:end]
    line = f"{key} = {json.dumps(value) if isinstance(value, str) else value}"
    body, count = re.subn(
        rf"^#? ?{re.escape(key)} = .*$", line.replace("\\", "\\\\"), body, count=1, flags=re.M
    )
    if not count:
        body = line + "\n" + body
    return text[:start] + body + text[end:]


def test_the_readme_service_install_runs_as_an_unprivileged_user_with_credentials(
    ssh_route: RouteSandbox, installation: Installation
) -> None:
    box = ssh_route
    assert box.hub is not None and box.drive is not None and box.git is not None and box.sshd is not None
    # A private repo: only the Hub token from the credential can read it.
    make_model_repo(box.hub, PRIVATE, shards=2, shard_size=512 * 1024, seed=3, private=True)
    box.git.new_repo(OWNER, "private-model")
    secrets = {
        "hf-token": box.hub_token,
        "drive-refresh-token": box.drive.issue_refresh_token(),
        "modelscope-token": box.ms_token,
        "web-token": "web-" + os.urandom(16).hex(),
    }
    work = installation.workdir
    for name, value in secrets.items():
        (work / name).write_text(value + "\n")
    shutil.copy(box.sshd.identity_file, work / "vm-ssh-key")
    shutil.copy(box.sshd.known_hosts_file, work / "vm-known-hosts")
    state = "/var/lib/relayd"

    def edit(config: Path) -> None:
        """Set the keys the README's table names, and point the services at the sandbox."""
        text = config.read_text()
        assert text == (ROOT / "config.example.toml").read_text()
        values = {
            "daemon": {"state_dir": state, "poll_jitter": "0s", "idle_wait": "0.2s"},
            "catalogue": {"url": f"sqlite:///{state}/catalogue.db"},
            "retry": {"initial": "0.5s", "maximum": "5s"},
            "staging": {"dir": f"{state}/staging", "min_free": "0"},
            "hub": {"endpoint": box.hub.endpoint, "token_credential": "hf-token"},
            "drive": {"api_url": box.drive.api_url, "refresh_token_credential": "drive-refresh-token"},
            "vm": {
                "executor": "ssh",
                "host": box.sshd.host,
                "port": box.sshd.port,
                "user": box.sshd.user,
                "root": str(box.vm_root),
                "identity_credential": "vm-ssh-key",
                "known_hosts_credential": "vm-known-hosts",
            },
            "modelscope": {
                "remote": box.git.remote_url("{owner}", "{name}"),
                "token_credential": "modelscope-token",
                "activity_timeout": "60s",
            },
            "web": {"token_credential": "web-token"},
        }
        for section, keys in values.items():
            for key, value in keys.items():
                scratch = (
                    value.replace(state, str(installation.at(state))) if isinstance(value, str) else value
                )
                text = set_key(text, section, key, scratch)
        config.write_text(text)

    installation.run_readme(edit)
    assert installation.skipped == [
        "systemctl daemon-reload",
        "systemctl enable --now relayd",
        "journalctl -u relayd -f",
    ]
    config = installation.at("/etc/relayd/relayd.toml")
    credentials = installation.at("/etc/relayd/credentials")
    assert oct(config.stat().st_mode & 0o777) == oct(0o644) and config.stat().st_uid == 0
    assert oct(credentials.stat().st_mode & 0o777) == oct(0o700)
    installed = sorted(path.name for path in credentials.iterdir())
    assert installed == sorted([*secrets, "vm-ssh-key", "vm-known-hosts"])
    for path in credentials.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600 and path.stat().st_uid == 0
    text = config.read_text()
    for value in secrets.values():
        assert value not in text, "the config holds no secret"

    installation.start()
    assert set(installation.loaded) == set(installed)  # the unit loads every file the README installs

    # The service user reads the config and its credentials, not the secrets where they are installed.
    assert installation.as_service("cat", str(config)).returncode == 0
    for path in [credentials, *credentials.iterdir()]:
        denied = installation.as_service("cat", str(path / "x" if path.is_dir() else path))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, path
    check = installation.as_service(str(BIN / "relayctl"), "-c", str(config), "config", "check")
    assert check.returncode == 0, check.stderr
    assert check.stdout.splitlines() == [f"ok: {config}"], check.stdout  # no warning: every secret is set

    # First start (systemctl enable --now): the service creates its catalogue.
    first = installation.as_service(*installation.exec_start("--once"))
    assert first.returncode == 0, first.stderr[-3000:]
    catalogue = installation.state / "catalogue.db"
    assert catalogue.stat().st_uid == SERVICE_UID
    # The admin adds the repo as root (README: `sudo relayctl add`), then the service relays it.
    added = subprocess.run(
        [str(BIN / "relayctl"), "-c", str(config), "add", PRIVATE],
        capture_output=True,
        text=True,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    relay = installation.as_service(*installation.exec_start("--once"))
    assert relay.returncode == 0, relay.stderr[-3000:]
    for path in installation.state.glob("catalogue.db*"):
        assert path.stat().st_uid == SERVICE_UID, path  # SQLite kept root's writes the service's

    status = subprocess.run(
        [str(BIN / "relayctl"), "-c", str(config), "status", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    (repo,) = json.loads(status.stdout)["repos"]
    assert repo["snapshot"]["state"] == "done", relay.stderr[-3000:]
    assert box.git.branch_head(OWNER, "private-model") is not None  # pushed with the ModelScope token
    landed = [path for path in (box.vm_root / OWNER / "private-model").rglob("*") if path.is_file()]
    assert len(landed) == repo["snapshot"]["files"]  # over SSH with the key and known_hosts credentials
    for value in secrets.values():
        assert value not in relay.stderr + first.stderr + check.stdout
    assert HUB_USER == OWNER  # the token's user owns the private repo


def analyzable_unit(tmp_path: Path) -> Path:
    """The unit as installed, with ExecStart= pointing at this checkout's relayd (the README says to
    adjust it when relayd is not in /opt/relayd), so systemd-analyze finds the program."""
    unit = tmp_path / "relayd.service"
    text = (ROOT / "contrib" / "relayd.service").read_text()
    unit.write_text(text.replace("/opt/relayd/bin/relayd", str(BIN / "relayd")))
    return unit


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    require(SYSTEMD_ANALYZE, "systemd-analyze (the systemd package)")
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(analyzable_unit(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout and not result.stderr, result.stderr


def test_systemd_analyze_security_rates_the_unit_as_the_readme_says(tmp_path: Path) -> None:
    require(SYSTEMD_ANALYZE, "systemd-analyze (the systemd package)")
    claimed = re.search(r"`systemd-analyze security relayd` rates it ([0-9.]+)", README.read_text())
    assert claimed, "the README states the exposure level"
    # At most 1.5 ("OK" is below 2.0; 10.0 is a unit without any hardening).
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=15", str(analyzable_unit(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    level = re.search(r"Overall exposure level for relayd\.service: ([0-9.]+)", result.stdout)
    assert level, result.stdout[-2000:]
    assert float(level.group(1)) == float(claimed.group(1)) <= 1.5
    for setting in ("MemoryMax=", "TasksMax=", "ProtectProc=invisible", "LimitCORE=0"):
        assert setting in (ROOT / "contrib" / "relayd.service").read_text()


def test_every_credential_the_readme_and_example_name_is_loaded_by_the_unit() -> None:
    """A secret named by a ``*_credential`` key must reach the service: the unit loads every credential
    the README's table and config.example.toml name, with an empty default for the ones left out."""
    settings = unit_settings(ROOT / "contrib" / "relayd.service")
    loaded = {value.partition(":")[0] for value in settings["LoadCredential"]}
    defaulted = {value.partition(":")[0] for value in settings["SetCredential"]}
    in_readme = set(re.findall(r"_credential = \"([a-z]+-[a-z-]+)\"", README.read_text()))
    in_example = set(
        re.findall(r"_credential = \"([a-z]+-[a-z-]+)\"", (ROOT / "config.example.toml").read_text())
    )
    assert in_readme >= {"hf-token", "web-token"}
    assert in_readme | in_example <= loaded
    assert loaded == defaulted
