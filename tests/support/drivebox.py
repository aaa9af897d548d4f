"""A fake Aliyun Drive plus a catalogue whose files are already staged (as the download hop leaves
them), and relayd's drive pieces wired to both: the real AligoDrive (real aligo, headless, through the
redirect adapter), the real pan_upload hop and engine in process, or the real daemon in a subprocess.

Used by tests/drive and tests/hops/test_pan_upload.py; its fixtures (``fake``, ``secrets``, ``box``) are
registered in tests/conftest.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests

from relayd.catalogue import migrate
from relayd.catalogue.schema import Piece, Transfer
from relayd.catalogue.store import FileSpec, HopRules, RepoSpec, Store
from relayd.config import DriveConfig, RetryConfig, SecretRef, StagingConfig
from relayd.drive.aligo_backend import AligoDrive
from relayd.drive.base import Drive, LocalFile, UploadCallbacks
from relayd.drive.open_backend import OpenDrive
from relayd.engine import Engine, EngineSettings
from relayd.hops.base import HopContext, Services
from relayd.hops.pan_upload import PanUploadHop
from relayd.staging import Staging
from relayd_sandbox.drive import FakeDrive
from tests.support.daemonlog import DaemonLog

PART = 64 * 1024
REFERER = "https://www.aliyundrive.com/"
RETRY = RetryConfig(initial=0.05, maximum=0.5, multiplier=2.0)


@dataclasses.dataclass(frozen=True)
class Staged:
    """A staged file: its catalogue path, bytes on disk, and digests."""

    path: str
    staged: Path
    size: int
    sha256: str
    sha1: str


class DriveBox(DaemonLog):
    """One test's world: *fake*, a catalogue and staging under *root*, a bootstrap token file."""

    wait_timeout = 60.0

    def __init__(self, root: Path, fake: FakeDrive, *, part_size: int = PART, backend: str = "aligo") -> None:
        self.root = root
        self.fake = fake
        self.part_size = part_size
        self.backend = backend
        root.mkdir(parents=True, exist_ok=True)
        # The Open Platform backend: an app registered on the fake, its secret in a 0600 file.
        self.app = fake.register_app()
        self.client_secret_file = root / "client-secret"
        self.client_secret_file.write_text(self.app.client_secret + "\n")
        self.client_secret_file.chmod(0o600)
        self.state_dir = root / "state"
        self.token_file = root / "bootstrap-refresh-token"
        self.token_file.write_text(fake.issue_refresh_token() + "\n")
        self.token_file.chmod(0o600)
        self.db = root / "catalogue.db"
        self.store = Store(f"sqlite:///{self.db}")
        migrate.ensure_schema(self.store.engine, auto_upgrade=False)
        self.staging = Staging(StagingConfig(dir=root / "staging", max_bytes=10**13, min_free=0))
        self.cancel = threading.Event()
        self._drives: list[Drive] = []
        self.config_path = root / "relayd.toml"
        self.log_path = root / "daemon.log"
        self.processes: list[subprocess.Popen[bytes]] = []

    # -- drive ------------------------------------------------------------------------------------

    def config(self, **changes: Any) -> DriveConfig:
        base = DriveConfig(
            backend=self.backend,
            api_url=self.fake.api_url,
            refresh_token=SecretRef("drive.refresh_token", file=self.token_file),
            root="/relayd",
            drive="resource",
            concurrency=3,
            referer=REFERER,
            on_conflict="replace",
            timeout=10.0,
            url_lifetime=3600.0 if self.backend == "aligo" else 900.0,
            client_id=self.app.client_id,
            client_secret=SecretRef("drive.client_secret", file=self.client_secret_file),
        )
        return dataclasses.replace(base, **changes)

    def backend_drive(self) -> Drive:
        """Return a new drive of the box's backend (``aligo`` or ``open``) over the fake."""
        return self.open_drive() if self.backend == "open" else self.drive()

    def open_drive(self, *, part_size: int | None = None, **changes: Any) -> OpenDrive:
        """Return a new OpenDrive over the fake, its login made by a QR login the fake confirms (the
        first time) and kept under ``state/drive/open``."""
        opened = OpenDrive(
            self.config(backend="open", **changes),
            self.state_dir,
            publish=self.store.publish,
            part_size=part_size or self.part_size,
        )
        if opened.tokens.load() is None:
            self.open_login(opened)
        self._drives.append(opened)
        return opened

    def drive(self, *, part_size: int | None = None, **changes: Any) -> AligoDrive:
        """Return a new AligoDrive over the fake, its login kept under ``state/drive``."""
        made = AligoDrive(
            self.config(**changes),
            self.state_dir,
            publish=self.store.publish,
            part_size=part_size or self.part_size,
        )
        self._drives.append(made)
        return made

    def upload_new_file(self, folder: str, **changes: Any) -> None:
        """Log in (a new AligoDrive with config *changes*), make *folder* and upload a file of several
        parts whose content the drive has never seen, so no rapid upload: every request goes out."""
        data = os.urandom(3 * self.part_size + 17)
        path = self.root / f"new-{data[:4].hex()}.bin"
        path.write_bytes(data)
        drive = self.drive(**changes)
        result = drive.upload(
            LocalFile(path, len(data), hashlib.sha1(data).hexdigest()),
            drive.ensure_folder(folder),
            "blob.bin",
            {},
            callbacks=UploadCallbacks(),
            cancel=threading.Event(),
        )
        assert not result.rapid and result.file.size == len(data)

    def open_login(self, drive: OpenDrive) -> None:
        """Log *drive* in as `relayctl drive login` does, the fake scanning and confirming the QR code."""
        qr = drive.auth.start_qr()
        self.fake.scan_qr(qr.sid)
        status, code = drive.auth.qr_status(qr.sid)
        assert status == "LoginSuccess", status
        drive.auth.finish(code, qr.verifier)

    # -- catalogue --------------------------------------------------------------------------------

    def stage(
        self,
        repo: str,
        files: Mapping[str, bytes],
        *,
        route: Sequence[str] = ("download", "pan_upload"),
        destinations: dict[str, Any] | None = None,
        record_sha1: bool = True,
        repo_type: str = "model",
    ) -> dict[str, Staged]:
        """Add *repo* with a snapshot of *files*, stage their bytes, and complete their download
        transfers as the download hop would (sha256, sha1, staged path). Return path → Staged."""
        staged: dict[str, Staged] = {}
        specs = []
        for path, data in files.items():
            sha256 = hashlib.sha256(data).hexdigest()
            target = self.staging.blob_path(sha256)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            staged[path] = Staged(path, target, len(data), sha256, hashlib.sha1(data).hexdigest())
            specs.append(FileSpec(path=path, size=len(data), lfs=True, sha256=sha256))
        self._record(repo, specs, staged, route, destinations, record_sha1, repo_type)
        return staged

    def stage_file(self, repo: str, path: str, source: Path, *, sha256: str, sha1: str) -> Staged:
        """Stage a (large) existing file by hard link or rename, with digests the caller knows."""
        target = self.staging.blob_path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            os.replace(source, target)
        size = target.stat().st_size
        staged = {path: Staged(path, target, size, sha256, sha1)}
        self._record(
            repo,
            [FileSpec(path, size, True, sha256)],
            staged,
            ("download", "pan_upload"),
            None,
            True,
            "model",
        )
        return staged[path]

    def _record(
        self,
        repo: str,
        specs: list[FileSpec],
        staged: dict[str, Staged],
        route: Sequence[str],
        destinations: dict[str, Any] | None,
        record_sha1: bool,
        repo_type: str,
    ) -> None:
        row, _ = self.store.add_repo(
            RepoSpec(
                name=repo,
                every=86400,
                route=tuple(route),
                destinations=destinations or {},
                repo_type=repo_type,
            )
        )
        commit = hashlib.sha1(repr(sorted((s.path, s.sha256) for s in specs)).encode()).hexdigest()
        self.store.record_snapshot(row.id, commit, specs)
        while (transfer := self.store.claim("download", "seed", 60)) is not None:
            job = self.store.load_job(transfer.id)
            assert job.file is not None
            info = staged[job.file.path]
            self.store.complete(
                transfer.id,
                "seed",
                {"staged": True},
                sha256=info.sha256,
                sha1=info.sha1 if record_sha1 else None,
                staged_path=self.staging.relative(info.staged),
            )

    def transfers(self, hop: str = "pan_upload") -> list[Transfer]:
        with self.store.read() as session:
            return list(session.query(Transfer).filter(Transfer.hop == hop).order_by(Transfer.id))

    def pieces(self, transfer_id: int) -> list[Piece]:
        with self.store.read() as session:
            return list(session.query(Piece).filter(Piece.transfer_id == transfer_id).order_by(Piece.idx))

    # -- engine -----------------------------------------------------------------------------------

    def engine(
        self,
        drive: Drive | Callable[[], Drive] | None = None,
        *,
        limit: int = 3,
        workers: int = 4,
        on_conflict: str = "replace",
    ) -> Engine:
        """Return an engine running the real pan_upload hop over *drive* (default: a new drive of the
        box's backend)."""
        if drive is None:
            shared: Drive = self.backend_drive()
            factory: Callable[[], Drive] = lambda: shared  # noqa: E731
        elif isinstance(drive, Drive):
            factory = lambda: drive  # noqa: E731
        else:
            factory = drive
        ctx = HopContext(
            self.store, self.staging, self.state_dir, self.cancel, "test-owner", Services({"drive": factory})
        )
        hop = PanUploadHop(self.config(on_conflict=on_conflict, concurrency=limit), ctx)
        self.store.rules = HopRules(reads_staging=frozenset({"pan_upload"}))
        settings = EngineSettings(
            workers=workers, lease=30.0, idle_wait=0.05, retry=RETRY, limits={"pan_upload": limit}
        )
        return Engine(self.store, self.staging, {"pan_upload": hop}, ctx, settings)

    def run(self, engine: Engine | None = None, *, timeout: float = 60) -> Engine:
        """Run the engine until nothing is runnable (waiting transfers with a short backoff included)."""
        engine = engine or self.engine()
        deadline = time.monotonic() + timeout
        while True:
            engine.run_until_idle(timeout=max(1.0, deadline - time.monotonic()))
            waiting = [t for t in self.transfers() if t.state == "waiting"]
            if not waiting or time.monotonic() > deadline:
                return engine
            time.sleep(0.1)

    # -- daemon -----------------------------------------------------------------------------------

    def write_daemon_config(self, *, extra: str = "") -> Path:
        self.config_path.write_text(
            f"""
[daemon]
state_dir = "{self.state_dir}"
workers = 4
lease = "10s"
shutdown_grace = "5s"
poll_jitter = "0s"
idle_wait = "0.2s"
watch_config = false
[catalogue]
url = "sqlite:///{self.db}"
[retry]
initial = "0.2s"
maximum = "2s"
[staging]
dir = "{self.root / "staging"}"
max_bytes = "10 TB"
min_free = "0"
[hub]
endpoint = "http://127.0.0.1:9"
[drive]
api_url = "{self.fake.api_url}"
refresh_token_file = "{self.token_file}"
root = "/relayd"
timeout = "10s"
backend = "{self.backend}"
client_id = "{self.app.client_id}"
client_secret_file = "{self.client_secret_file}"
{extra}
"""
        )
        self.config_path.chmod(0o600)
        return self.config_path

    def start_daemon(self, *args: str) -> subprocess.Popen[bytes]:
        if not self.config_path.exists():
            self.write_daemon_config()
        log = self.log_path.open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "relayd", "run", "-c", str(self.config_path), *args],
            stdout=subprocess.PIPE,
            stderr=log,
        )
        self.processes.append(process)
        return process

    def stop_daemon(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> bytes:
        """Stop *process* with *sig* and return what it wrote to stdout (must be nothing)."""
        process.send_signal(sig)
        out, _ = process.communicate(timeout=30)
        return out

    def close(self) -> None:
        self.cancel.set()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=10)
        for made in self._drives:
            made.close()
        self.store.close()


def record_secrets(fake: FakeDrive) -> list[str]:
    """Record every access and refresh token the fake issues from now on (install it first)."""
    issued: list[str] = []
    store: Any = fake.store
    for name in ("issue_refresh_token", "issue_access_token"):
        original = getattr(store, name)

        def issue(user: Any, _original: Callable[..., str] = original, **kwargs: Any) -> str:
            token = _original(user, **kwargs)
            issued.append(token)
            return token

        setattr(store, name, issue)
    return issued


def sign_in_other_devices(fake: FakeDrive, count: int) -> None:
    """Use the account from *count* other devices (the user's phone, PC, web sessions), as the real
    clients do: an API call with their own ``x-device-id``."""
    token = fake.issue_access_token()
    for n in range(count):
        answer = requests.post(
            fake.api_url + "/v2/user/get",
            json={},
            headers={"Authorization": token, "x-device-id": f"other-device-{n}"},
            timeout=10,
        )
        assert answer.ok


# -- fixtures (taken by tests/drive/conftest.py and tests/hops/test_pan_upload.py) -------------------


@pytest.fixture
def fake(fake_drive: FakeDrive) -> FakeDrive:
    """The sandbox plugin's fake drive, the one the DriveBox talks to."""
    return fake_drive


@pytest.fixture
def secrets(fake: FakeDrive) -> list[str]:
    """Every token the fake issues during the test (for leak checks)."""
    return record_secrets(fake)


@pytest.fixture
def box(tmp_path: Path, fake: FakeDrive, secrets: list[str]) -> Iterator[DriveBox]:
    world = DriveBox(tmp_path / "box", fake)
    try:
        yield world
    finally:
        world.close()
