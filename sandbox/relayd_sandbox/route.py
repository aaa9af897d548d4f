"""The whole default route on loopback: a fake Hub with a generated model, the fake drive, the VM (this
machine, locally or through a real sshd) and the git + LFS server, plus a daemon config that ties them
together. ``relayd demo`` and the end-to-end tests drive the real daemon and relayctl against it, and
verify each file's sha256 at the Hub, on the drive, on the VM and in a fresh clone of the pushed repo.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relayd.digest import sha256_file
from relayd_sandbox.drive import FakeDrive
from relayd_sandbox.gitlfs import GitLfsServer
from relayd_sandbox.hub import FakeHub, Generated, make_model_repo

OWNER, NAME = "demo", "tiny-model"
REPO = f"{OWNER}/{NAME}"
#: A second repo with the first one's weights (``add_mirror``).
MIRROR = f"{OWNER}/{NAME}-mirror"
HUB_USER = "demo"
CREDENTIAL_HELPER = (
    '!f() { test "$1" = get && echo username=oauth2 && echo "password=$RELAYD_DEMO_MS_TOKEN"; }; f'
)


@dataclass(frozen=True)
class Row:
    """One line of the verification table."""

    path: str
    hub: str
    drive: str
    vm: str
    clone: str

    @property
    def merged(self) -> bool:
        """.gitattributes is merged with the destination's LFS patterns, so the clone's differs."""
        return self.path == ".gitattributes"

    @property
    def ok(self) -> bool:
        if self.merged:
            return self.hub == self.drive == self.vm and self.clone.startswith("merged:")
        return self.hub == self.drive == self.vm == self.clone


class RouteSandbox:
    """Loopback stand-ins for every service on the route, and a config for a daemon that uses them."""

    def __init__(
        self,
        root: Path,
        *,
        shards: int = 3,
        shard_size: int = 64 * 1024 * 1024,
        ssh: bool | None = None,
        piece_size: str = "8 MiB",
        staging_max: str = "50 GB",
        connections: int | None = None,
        concurrency: int | None = None,
        drive: str = "aligo",
    ) -> None:
        self.root = root
        # The drive backend: "aligo" (the web API) or "open" (the Open Platform: an app registered on
        # the fake, and a QR login the fake scans by itself at its first status poll).
        self.drive_backend = drive
        self.shards = shards
        self.shard_size = shard_size
        self.piece_size = piece_size
        self.staging_max = staging_max
        # Optional overrides of every hop's connections per file and files at once (tests slow the route).
        self.connections = connections
        self.concurrency = concurrency
        self.use_ssh = (shutil.which("sshd") or os.path.exists("/usr/sbin/sshd")) if ssh is None else ssh
        self.hub_token = "hf_" + secrets.token_hex(12)
        self.ms_token = secrets.token_hex(16)
        self.config_path = root / "relayd.toml"
        self.log_path = root / "relayd.log"
        self.vm_root = root / "vm"
        self.hub: FakeHub | None = None
        self.drive: FakeDrive | None = None
        self.git: GitLfsServer | None = None
        self.sshd: Any = None
        self.head: str = ""
        self.client_id = ""

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> RouteSandbox:
        self.root.mkdir(parents=True, exist_ok=True)
        self.hub = FakeHub(self.root / "hub").start()
        self.hub.add_token(self.hub_token, HUB_USER)
        self.head = make_model_repo(self.hub, REPO, shards=self.shards, shard_size=self.shard_size)
        self.drive = FakeDrive(self.root / "drive").start()
        token_file = self.root / "drive-refresh-token"
        token_file.write_text(self.drive.issue_refresh_token())
        token_file.chmod(0o600)
        if self.drive_backend == "open":
            app = self.drive.register_app()
            self.client_id = app.client_id
            secret = self.root / "drive-client-secret"
            secret.write_text(app.client_secret)
            secret.chmod(0o600)
            self.drive.settings.qr_auto_login_polls = 1
        self.git = GitLfsServer(self.root / "git", self.ms_token)
        self.git.start()
        self.git.new_repo(OWNER, NAME)
        if self.use_ssh:
            from relayd_sandbox.sshd import SandboxSshd

            self.sshd = SandboxSshd(self.root / "sshd")
            self.sshd.start()
        self.write_config()
        return self

    def stop(self) -> None:
        for server in (self.sshd, self.git, self.drive, self.hub):
            if server is not None:
                try:
                    server.stop()
                except Exception:
                    logging.getLogger(__name__).exception("stopping %s failed", type(server).__name__)

    def __enter__(self) -> RouteSandbox:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- config ------------------------------------------------------------------------------------

    def vm_section(self) -> str:
        if not self.use_ssh:
            return f'executor = "local"\nroot = "{self.vm_root}"'
        return (
            f'executor = "ssh"\nroot = "{self.vm_root}"\nhost = "{self.sshd.host}"\nport = {self.sshd.port}\n'
            f'user = "{self.sshd.user}"\nidentity_file = "{self.sshd.identity_file}"\n'
            f'known_hosts_file = "{self.sshd.known_hosts_file}"\n'
            f'ssh_config_file = "{self.sshd.ssh_config_file}"'
        )

    def drive_section(self) -> str:
        if self.drive_backend != "open":
            return ""
        return (
            f'backend = "open"\nclient_id = "{self.client_id}"\n'
            f'client_secret_file = "{self.root / "drive-client-secret"}"\n'
        )

    def write_config(self, *, extra: str = "") -> None:
        """Write the one daemon's config (SQLite catalogue under the sandbox's state directory)."""
        self.config_path.write_text(self.config_text(extra=extra))
        self.config_path.chmod(0o600)

    def write_site_config(self, path: Path, *, site: str, hops: list[str], catalogue_url: str) -> None:
        """Write the config of one site's daemon at *path*: its own state and staging directories under
        ``root/site``, the shared *catalogue_url*, serving *hops*; a short lease, so that a killed
        daemon's claims come back within seconds. Each site logs in to the drive on its own (a refresh
        token of its own: one rotates at each refresh, so two daemons cannot share one)."""
        assert self.drive is not None  # noqa: S101
        home = self.root / site
        home.mkdir(parents=True, exist_ok=True)
        token_file = home / "drive-refresh-token"
        token_file.write_text(self.drive.issue_refresh_token())
        token_file.chmod(0o600)
        served = ", ".join(json.dumps(hop) for hop in hops)
        daemon = f'site = "{site}"\nhops = [{served}]\nlease = "10s"\n'
        path.write_text(
            self.config_text(
                state=home / "state",
                staging=home / "staging",
                catalogue_url=catalogue_url,
                daemon=daemon,
                drive_token=token_file,
            )
        )
        path.chmod(0o600)

    def config_text(
        self,
        *,
        extra: str = "",
        state: Path | None = None,
        staging: Path | None = None,
        catalogue_url: str | None = None,
        daemon: str = 'lease = "20s"\n',
        drive_token: Path | None = None,
    ) -> str:
        """Return a daemon config over the sandbox's services; by default the one daemon's, with its
        state, catalogue and staging under the sandbox's root."""
        assert self.hub is not None and self.drive is not None and self.git is not None  # noqa: S101
        state = state or self.root / "state"
        staging = staging or self.root / "staging"
        catalogue_url = catalogue_url or f"sqlite:///{state / 'catalogue.db'}"
        remote = self.git.remote_url("{owner}", "{name}")
        tuning = ""
        if self.concurrency is not None:
            tuning += f"concurrency = {self.concurrency}\n"
        hub_tuning = tuning + (f"connections = {self.connections}\n" if self.connections is not None else "")
        vm_tuning = hub_tuning
        return f"""# Written by relayd's route sandbox: every service is a local stand-in on 127.0.0.1.
[daemon]
state_dir = "{state}"
poll_jitter = "0s"
idle_wait = "0.2s"
shutdown_grace = "10s"
{daemon}[catalogue]
url = "{catalogue_url}"
[retry]
initial = "0.5s"
maximum = "5s"
[staging]
dir = "{staging}"
max_bytes = "{self.staging_max}"
min_free = "0"
[hub]
endpoint = "{self.hub.endpoint}"
token_env = "RELAYD_DEMO_HF_TOKEN"
piece_size = "{self.piece_size}"
{hub_tuning}[drive]
api_url = "{self.drive.api_url}"
refresh_token_file = "{drive_token or self.root / "drive-refresh-token"}"
{self.drive_section()}{tuning}[vm]
{self.vm_section()}
piece_size = "{self.piece_size}"
{vm_tuning}[modelscope]
remote = "{remote}"
token_env = "RELAYD_DEMO_MS_TOKEN"
activity_timeout = "60s"
{tuning}
{extra}
"""

    def env(self) -> dict[str, str]:
        return {**os.environ, "RELAYD_DEMO_HF_TOKEN": self.hub_token, "RELAYD_DEMO_MS_TOKEN": self.ms_token}

    # -- processes ---------------------------------------------------------------------------------

    def start_daemon(
        self, *args: str, config: Path | None = None, log_path: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `relayd run` on the sandbox's config (or *config*), logging to its log (or *log_path*)."""
        log = (log_path or self.log_path).open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "relayd", "run", "-c", str(config or self.config_path), *args],
            stdout=log,
            stderr=log,
            env=self.env(),
            start_new_session=True,
        )

    @staticmethod
    def stop_daemon(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def relayctl(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "relayd.cli", "-c", str(config or self.config_path), *args],
            capture_output=True,
            text=True,
            env=self.env(),
            check=False,
            timeout=120,
        )

    # -- upstream ----------------------------------------------------------------------------------

    def change_upstream(self) -> tuple[str, str, str]:
        """Commit a new revision: one shard rewritten, the tokenizer removed. Return (changed, removed,
        commit)."""
        assert self.hub is not None  # noqa: S101
        changed = f"model-00001-of-{self.shards:05d}.safetensors"
        removed = "tokenizer.json"
        self.head = self.hub.commit(
            REPO,
            {changed: Generated(self.shard_size, seed=987654)},
            delete=[removed],
            message="Retrain the first layer",
        )
        return changed, removed, self.head

    def add_mirror(self) -> tuple[str, str]:
        """Publish a second Hub repo with the same weights as the first (a mirror someone made), and an
        empty destination repo for it; return (Hub repo id, destination repo id)."""
        assert self.hub is not None and self.git is not None  # noqa: S101
        make_model_repo(self.hub, MIRROR, shards=self.shards, shard_size=self.shard_size)
        self.git.new_repo(OWNER, MIRROR.split("/", 1)[1])
        return MIRROR, MIRROR

    # -- verification ------------------------------------------------------------------------------

    def hub_files(self) -> dict[str, str]:
        assert self.hub is not None  # noqa: S101
        return {
            path: sha256_file(self.hub.blob_path(entry.sha256))
            for path, entry in self.hub.files(REPO, self.head).items()
        }

    def drive_files(self, paths: Iterator[str] | list[str]) -> dict[str, str]:
        assert self.drive is not None  # noqa: S101
        found = {}
        for path in paths:
            # relayd uploads to the resource drive (drive.drive = "resource", the default).
            stored = self.drive.lookup(f"/relayd/{REPO}/{path}", drive_id=self.drive.user.resource_drive_id)
            data = stored.data_path if stored is not None else None
            found[path] = sha256_file(Path(data)) if data is not None else "missing"
        return found

    def vm_files(self, paths: Iterator[str] | list[str]) -> dict[str, str]:
        found = {}
        for path in paths:
            target = self.vm_root / REPO / path
            found[path] = sha256_file(target) if target.is_file() else "missing"
        return found

    def clone(self, into: Path | None = None) -> Path:
        """Clone the pushed repo with real git and git-lfs (credentials from the environment only)."""
        assert self.git is not None  # noqa: S101
        into = into or Path(tempfile.mkdtemp(prefix="clone-", dir=self.root))
        home = self.root / "clone-home"
        home.mkdir(exist_ok=True)
        env = {
            "HOME": str(home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "RELAYD_DEMO_MS_TOKEN": self.ms_token,
        }
        subprocess.run(["git", "lfs", "install", "--skip-repo"], env=env, check=True, capture_output=True)
        subprocess.run(
            [
                "git",
                "-c",
                "credential.helper=",
                "-c",
                f"credential.helper={CREDENTIAL_HELPER}",
                "clone",
                "-q",
                self.git.remote_url(OWNER, NAME),
                str(into),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        return into

    def _merged_attributes(self, digest: str) -> str:
        """Mark the clone's .gitattributes as "merged" when it keeps every line of the Hub's."""
        return digest if digest == "missing" or not self._attributes_kept else "merged:" + digest

    _attributes_kept = False

    def clone_files(self, paths: list[str]) -> tuple[dict[str, str], set[str]]:
        """Return each path's sha256 in a fresh clone, and every file the clone holds."""
        clone = self.clone()
        assert self.hub is not None  # noqa: S101
        try:
            attributes = clone / ".gitattributes"
            if attributes.is_file():
                theirs = self.hub.blob_path(
                    self.hub.file(REPO, ".gitattributes", self.head).sha256
                ).read_text()
                ours = set(attributes.read_text().splitlines())
                self._attributes_kept = all(line in ours for line in theirs.splitlines() if line.strip())
            present = {
                p.relative_to(clone).as_posix()
                for p in clone.rglob("*")
                if p.is_file() and ".git" not in p.parts
            }
            found = {
                path: sha256_file(clone / path) if (clone / path).is_file() else "missing" for path in paths
            }
            return found, present
        finally:
            shutil.rmtree(clone, ignore_errors=True)

    def verify(self) -> tuple[list[Row], set[str]]:
        """Return the verification table for the current head, and the clone's extra files."""
        hub = self.hub_files()
        paths = sorted(hub)
        drive = self.drive_files(paths)
        vm = self.vm_files(paths)
        clone, present = self.clone_files(paths)
        if ".gitattributes" in clone:
            clone[".gitattributes"] = self._merged_attributes(clone[".gitattributes"])
        rows = [Row(path, hub[path], drive[path], vm[path], clone[path]) for path in paths]
        return rows, present - set(paths)
