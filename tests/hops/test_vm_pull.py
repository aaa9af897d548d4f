"""The vm_pull hop against the fake drive, with the local executor and through a real sshd: pieces
durable on the VM, verified there by sha256, resumed after an expired link, a dropped connection or a
kill -9 of the daemon, corruption caught, and the short path from staging."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from relayd.catalogue import migrate
from relayd.catalogue.schema import BLOCKED, DONE, WAITING, Piece, Transfer
from relayd.catalogue.store import HopRules, Store
from relayd.cli import cli
from relayd.config import DriveConfig, RetryConfig, SecretRef, StagingConfig
from relayd.drive.aligo_backend import AligoDrive
from relayd.engine import Engine, EngineSettings
from relayd.hops import vm_pull
from relayd.hops.base import HopContext, Services
from relayd.hops.vm_pull import VmPullHop
from relayd.staging import Staging
from relayd.vm.executor import Executor, make_executor
from relayd_sandbox.drive import DOWNLOAD_PREFIX, FakeDrive
from relayd_sandbox.sshd import SSHD_PATH, SandboxSshd, restricted_path
from relayd_sandbox.systools import require
from relayd_sandbox.vm_testkit import (
    FakeDriveLinks,
    no_agent_left,
    seed_pulls,
    upload_to_fake_drive,
    vm_config,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

VM_PATH = "/usr/local/bin:/usr/bin:/bin"
PIECE = 256 * 1024
REFERER = {"Referer": "https://www.aliyundrive.com/"}


class World:
    """A catalogue, staging, the fake drive and a VM (local or over SSH) for one test. Download links
    come from a small test client of the fake's API, or with *aligo* from relayd's own AligoDrive (the
    real aligo; *referer* is its drive.referer)."""

    def __init__(
        self,
        root: Path,
        drive: FakeDrive,
        sshd: SandboxSshd | None = None,
        *,
        aligo: bool = False,
        referer: str = "https://www.aliyundrive.com/",
        **vm: Any,
    ) -> None:
        self.root = root
        self.drive = drive
        self.url = f"sqlite:///{root / 'catalogue.db'}"
        self.store = Store(self.url)
        migrate.ensure_schema(self.store.engine, auto_upgrade=False)
        self.staging = Staging(StagingConfig(dir=root / "staging", max_bytes=10**12, min_free=0))
        self.vm_root = root / "vm"
        self.marker = f"relayd-agent-test-{uuid.uuid4().hex[:12]}"
        values: dict[str, Any] = {"root": str(self.vm_root), "piece_size": PIECE}
        if sshd is not None:
            values.update(
                executor="ssh",
                host="127.0.0.1",
                ssh_config_file=sshd.ssh_config_file,
                python="python3",
                path=VM_PATH,
            )
        values.update(vm)
        self.section = vm_config(**values)
        self.links: Any = FakeDriveLinks(
            drive.api_url, drive.issue_access_token(), drive_id=drive.default_drive_id
        )
        if aligo:
            self.links = aligo_drive(root, drive, referer)
        self.executor: Executor = make_executor(self.section)
        self.executor.marker = self.marker
        self.files: dict[str, bytes] = {}

    def stage(self, data: bytes) -> Path:
        """Put *data* in staging under its sha256, as the download hop leaves it; return its path."""
        staged = self.staging.blob_path(hashlib.sha256(data).hexdigest())
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(data)
        return staged

    def add(self, repo: str, files: dict[str, bytes], **seed: Any) -> None:
        ids = {path: upload_to_fake_drive(self.drive, data, f"{repo}/{path}") for path, data in files.items()}
        facts = {
            path: (len(data), hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest())
            for path, data in files.items()
        }
        seed_pulls(self.store, repo, facts, ids, **seed)
        self.files.update({f"{repo}/{path}": data for path, data in files.items()})

    def engine(self) -> Engine:
        self.executor = make_executor(self.section)  # the engine's drain closes the one before
        self.executor.marker = self.marker
        services = Services({"drive": lambda: self.links, "vm": lambda: self.executor})
        ctx = HopContext(self.store, self.staging, self.root / "state", threading.Event(), "test", services)
        hop = VmPullHop(self.section, ctx)
        self.store.rules = HopRules(
            reads_staging=frozenset({"vm_pull"}) if hop.reads_staging else frozenset()
        )
        settings = EngineSettings(
            workers=2,
            lease=30.0,
            idle_wait=0.05,
            retry=RetryConfig(initial=0.05, maximum=0.2, multiplier=2.0),
            limits={"vm_pull": 1},
        )
        return Engine(self.store, self.staging, {"vm_pull": hop}, ctx, settings)

    def run(self, timeout: float = 120) -> None:
        """Run the engine until every vm_pull transfer is done or blocked (waiting ones are retried)."""
        deadline = time.monotonic() + timeout
        while True:
            engine = self.engine()
            try:
                engine.run_until_idle(timeout=max(1.0, deadline - time.monotonic()))
            finally:
                engine.drain(5)
            if not any(t.state == WAITING for t in self.pulls()) or time.monotonic() > deadline:
                return
            time.sleep(0.3)

    def pulls(self) -> list[Transfer]:
        with self.store.read() as session:
            return list(session.query(Transfer).filter(Transfer.hop == "vm_pull").order_by(Transfer.id))

    def pieces(self, transfer_id: int) -> list[Piece]:
        with self.store.read() as session:
            return list(session.query(Piece).filter(Piece.transfer_id == transfer_id).order_by(Piece.idx))

    def check_landed(self) -> None:
        for name, data in self.files.items():
            assert (self.vm_root / name).read_bytes() == data, name
        assert not list(self.vm_root.rglob("*.relayd-partial"))
        for transfer in self.pulls():
            assert transfer.state == DONE, (transfer.state, transfer.last_error)
            assert transfer.handles["executor"] == self.section.executor
            assert Path(transfer.handles["path"]).is_file()
        assert no_agent_left(self.marker)
        assert self.drive.authorized_data_requests() == []

    def downloads(self) -> int:
        return sum(1 for r in self.drive.requests.snapshot() if r.path.startswith(DOWNLOAD_PREFIX + "/"))


def aligo_drive(root: Path, drive: FakeDrive, referer: str) -> AligoDrive:
    """Return relayd's AligoDrive over *drive*, on the user's default (backup) drive, where
    ``upload_to_fake_drive`` puts files."""
    token_file = root / "drive-refresh-token"
    token_file.write_text(drive.issue_refresh_token())
    token_file.chmod(0o600)
    config = DriveConfig(
        backend="aligo",
        api_url=drive.api_url,
        refresh_token=SecretRef("drive.refresh_token", file=token_file),
        root="/relayd",
        drive="backup",
        concurrency=1,
        referer=referer,
        on_conflict="replace",
        timeout=10.0,
        url_lifetime=3600.0,
    )
    return AligoDrive(config, root / "state")


def link_calls(drive: FakeDrive) -> int:
    return drive.stats().calls.get("/v2/file/get_download_url", 0)


def sample() -> dict[str, bytes]:
    return {
        "model.safetensors": os.urandom(5 * PIECE + 1234),
        "sub/config.json": b'{"hidden_size": 8}',
        "empty.txt": b"",
    }


@pytest.mark.parametrize("executor", ["local", "ssh"])
def test_pulls_every_file_onto_the_vm(executor: str, tmp_path: Path, fake_drive: FakeDrive) -> None:
    sshd = None
    if executor == "ssh":
        require(SSHD_PATH, "OpenSSH server")
        sshd = SandboxSshd().start()
    try:
        world = World(tmp_path, fake_drive, sshd)
        world.add("acme/tiny", sample())
        world.run()
        world.check_landed()
        for transfer in world.pulls():
            assert all(p.sends == 1 and p.done for p in world.pieces(transfer.id))
        big = next(t for t in world.pulls() if t.bytes_total > PIECE)
        assert big.handles["path"] == str(world.vm_root / "acme/tiny/model.safetensors")
        assert big.handles["host"] == ("127.0.0.1" if sshd else "localhost")
        for request in fake_drive.requests.snapshot():
            if request.path.startswith(DOWNLOAD_PREFIX + "/") and request.method == "GET":
                assert request.header("Referer") == "https://www.aliyundrive.com/"
                assert (request.header("Range") or "").startswith("bytes=")
    finally:
        if sshd is not None:
            sshd.stop()


def test_vm_dir_destination(tmp_path: Path, fake_drive: FakeDrive) -> None:
    world = World(tmp_path, fake_drive)
    world.add("acme/tiny", {"a.bin": b"a" * 1000}, destinations={"vm_dir": "mirror/tiny"})
    world.files = {"mirror/tiny/a.bin": b"a" * 1000}
    world.run()
    world.check_landed()


def test_expired_link_mid_pull_gets_a_new_one(tmp_path: Path, fake_drive: FakeDrive) -> None:
    world = World(tmp_path, fake_drive)
    world.add("acme/tiny", {"model.bin": os.urandom(8 * PIECE)})
    fake_drive.settings.download_bandwidth = 1024 * 1024  # per connection: about 2 s for the file
    engine_thread = threading.Thread(target=world.run)
    engine_thread.start()
    try:
        assert wait_until(lambda: any(p.done for t in world.pulls() for p in world.pieces(t.id)), 30)
        fake_drive.expire_download_urls()
        fake_drive.settings.download_bandwidth = None
    finally:
        engine_thread.join(120)
    world.check_landed()
    assert world.links.minted >= 2
    (transfer,) = world.pulls()
    assert sum(p.sends for p in world.pieces(transfer.id)) <= 8 + world.section.connections


def run_engine(world: World, engine: Engine, timeout: float = 60) -> None:
    """Run *engine* (one hop instance throughout, as in a daemon) until no vm_pull transfer waits."""
    deadline = time.monotonic() + timeout
    while True:
        engine.run_until_idle(timeout=max(1.0, deadline - time.monotonic()))
        if not any(t.state == WAITING for t in world.pulls()) or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def test_the_download_cap_waits_with_the_same_link_and_fewer_connections(
    tmp_path: Path, fake_drive: FakeDrive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vm_pull, "CAP_WAIT", 0.2)
    world = World(tmp_path, fake_drive, aligo=True)
    data = os.urandom(6 * PIECE)
    world.add("acme/tiny", {"model.bin": data})
    # Another client of the same account and app (the web client's tokens) downloads two files.
    fake_drive.settings.download_bandwidth = 32 * 1024  # the other downloads outlast the test
    other = world.links.download_url(upload_to_fake_drive(fake_drive, b"o" * 16 * PIECE, "other.bin")).url
    held = [requests.get(other, headers=REFERER, stream=True, timeout=10) for _ in range(2)]
    assert all(response.status_code == 200 for response in held)
    calls = link_calls(fake_drive)
    engine = world.engine()
    try:
        engine.run_until_idle(timeout=60)
        (transfer,) = world.pulls()
        assert transfer.state == WAITING and transfer.error_class == "rate_limit"
        assert "refused more parallel downloads" in (transfer.last_error or "")
        assert fake_drive.stats().downloads_over_cap >= 2
        assert link_calls(fake_drive) == calls + 1
        fact = world.store.service_state()["drive.downloads"][0]
        assert (fact["connections"], fact["configured"]) == (1, 2)
        status = relayctl_status(world, tmp_path)
        assert "refused more parallel downloads" in status and "[rate_limit]" in status

        for response in held:
            response.close()
        fake_drive.settings.download_bandwidth = None
        run_engine(world, engine)
    finally:
        engine.drain(5)
    world.check_landed()
    assert link_calls(fake_drive) == calls + 1  # the cap never cost a new link
    assert fake_drive.stats().downloads_over_cap <= 4  # backed off, no hammering


def relayctl_status(world: World, tmp_path: Path) -> str:
    """Return the text of `relayctl status` and `relayctl status acme/tiny` over *world*'s catalogue."""
    token_file = tmp_path / "status-token"
    token_file.write_text("unused")
    config = daemon_config(world, tmp_path, token_file)
    outputs = []
    for args in (["status"], ["status", "acme/tiny"]):
        result = CliRunner().invoke(cli, ["-c", str(config), *args], catch_exceptions=False)
        outputs.append(result.output)
    return "\n".join(outputs)


@pytest.mark.parametrize(
    ("configured", "wanted"),
    [
        ("https://www.aliyundrive.com/", "https://www.aliyundrive.com/"),
        ("https://www.aliyundrive.com/", "https://www.alipan.com/"),
        ("https://www.alipan.com/", "https://www.alipan.com/"),
        ("https://www.alipan.com/", "https://www.aliyundrive.com/"),
    ],
)
def test_the_referer_the_drive_wants_is_found_and_remembered(
    tmp_path: Path, fake_drive: FakeDrive, configured: str, wanted: str
) -> None:
    fake_drive.settings.download_referer = wanted
    world = World(tmp_path, fake_drive, aligo=True, referer=configured)
    world.add("acme/tiny", {"a.bin": os.urandom(3 * PIECE), "b.bin": os.urandom(2 * PIECE)})
    engine = world.engine()
    try:
        run_engine(world, engine)
    finally:
        engine.drain(5)
    world.check_landed()
    gets = [r for r in fake_drive.requests.snapshot() if r.path.startswith(DOWNLOAD_PREFIX + "/")]
    refused = [r for r in gets if r.status == 403]
    assert all(r.header("Referer") == wanted for r in gets if r.status == 206)
    if configured == wanted:
        assert refused == []
    else:
        # Refused once (one GET per connection at most), then the other origin, for both files.
        assert 1 <= len(refused) <= world.section.connections
        assert all(r.header("Referer") == configured for r in refused)
    assert link_calls(fake_drive) == 2  # one link per file: a refused Referer is not an expired link


def test_a_download_refused_with_every_referer_blocks(tmp_path: Path, fake_drive: FakeDrive) -> None:
    fake_drive.settings.download_referer = "https://somewhere-else.example/"
    world = World(tmp_path, fake_drive, aligo=True)
    world.add("acme/tiny", {"a.bin": os.urandom(2 * PIECE)})
    engine = world.engine()
    try:
        run_engine(world, engine)
    finally:
        engine.drain(5)
    (transfer,) = world.pulls()
    assert transfer.state == BLOCKED and transfer.error_class == "download_refused"
    assert "referer policy" in (transfer.last_error or "")
    assert "drive.referer" in (transfer.hint or "") and "relayctl retry" in (transfer.hint or "")
    assert transfer.attempts == 1
    assert link_calls(fake_drive) == 1


def test_a_drive_without_get_download_url_blocks(tmp_path: Path, fake_drive: FakeDrive) -> None:
    fake_drive.settings.removed_endpoints = frozenset({"/v2/file/get_download_url"})
    world = World(tmp_path, fake_drive, aligo=True)
    world.add("acme/tiny", {"a.bin": os.urandom(PIECE)})
    world.run()
    (transfer,) = world.pulls()
    assert transfer.state == BLOCKED and transfer.error_class == "api_changed"
    assert "needs an update" in (transfer.hint or "")
    assert transfer.attempts == 1 and link_calls(fake_drive) == 1


def test_corruption_is_caught_by_the_vm_hash(tmp_path: Path, fake_drive: FakeDrive) -> None:
    world = World(tmp_path, fake_drive)
    data = os.urandom(4 * PIECE)
    world.add("acme/tiny", {"model.bin": data})
    fake_drive.corrupt_file("/acme/tiny/model.bin", offset=2 * PIECE + 7)
    world.run()
    (transfer,) = world.pulls()
    assert transfer.state == BLOCKED
    assert transfer.error_class == "integrity"
    error = transfer.last_error or ""
    assert error.startswith("sha256 mismatch measured on the VM after vm_pull, twice in a row")
    expected, got = re.findall(r"expected ([0-9a-f]{64}), got ([0-9a-f]{64})", error)[0]
    assert expected == hashlib.sha256(data).hexdigest() and got != expected
    assert "upload it again" in (transfer.hint or "")
    assert not (world.vm_root / "acme/tiny/model.bin").exists()  # never renamed into place
    # Fetched exactly twice (no staged copy to find the bad piece: every piece), never a third time.
    assert [p.sends for p in world.pieces(transfer.id)] == [2, 2, 2, 2]
    assert fake_drive.stats().download_bytes == 2 * len(data)
    assert no_agent_left(world.marker)


def test_bad_pieces_are_found_against_the_staged_copy(tmp_path: Path, fake_drive: FakeDrive) -> None:
    world = World(tmp_path, fake_drive)
    data = os.urandom(4 * PIECE)
    staged = world.stage(data)
    world.add("acme/tiny", {"model.bin": data}, staged={"model.bin": world.staging.relative(staged)})
    fake_drive.corrupt_file("/acme/tiny/model.bin", offset=2 * PIECE + 7)
    world.run()
    (transfer,) = world.pulls()
    assert transfer.state == BLOCKED
    sends = [p.sends for p in world.pieces(transfer.id)]
    assert sends == [1, 1, 2, 1]  # only the corrupt piece was fetched again


def test_ssh_connection_dropped_mid_pull_reconnects(
    tmp_path: Path, fake_drive: FakeDrive, sshd: SandboxSshd
) -> None:
    world = World(tmp_path, fake_drive, sshd)
    world.add("acme/tiny", {"model.bin": os.urandom(12 * PIECE)})
    fake_drive.settings.download_bandwidth = 512 * 1024
    engine_thread = threading.Thread(target=world.run)
    engine_thread.start()
    try:
        assert wait_until(lambda: any(p.done for t in world.pulls() for p in world.pieces(t.id)), 60)
        assert sshd.kill_sessions()
        fake_drive.settings.download_bandwidth = 4 * 1024 * 1024
    finally:
        engine_thread.join(150)
    world.check_landed()
    (transfer,) = world.pulls()
    resent = sum(p.sends for p in world.pieces(transfer.id)) - 12
    assert 0 < resent <= world.section.connections
    assert transfer.attempts == 1  # reconnected within the attempt


def test_vm_without_git_lfs_blocks_with_what_to_install(
    tmp_path: Path, fake_drive: FakeDrive, sshd: SandboxSshd
) -> None:
    vm_path = restricted_path(tmp_path / "bin", hide=["git-lfs"], path=VM_PATH)
    world = World(tmp_path, fake_drive, sshd, path=vm_path)
    world.add("acme/tiny", {"a.bin": b"x" * 100})
    world.run()
    (transfer,) = world.pulls()
    assert transfer.state == BLOCKED and transfer.error_class == "setup"
    assert "git-lfs is not installed" in (transfer.last_error or "")
    assert "apt-get install git-lfs" in (transfer.hint or "")
    assert world.downloads() == 0


def test_wrong_host_key_blocks_with_a_hint(
    tmp_path: Path, fake_drive: FakeDrive, sshd: SandboxSshd, wrong_known_hosts: Path
) -> None:
    world = World(tmp_path, fake_drive, sshd, known_hosts_file=wrong_known_hosts)
    world.add("acme/tiny", {"a.bin": b"x" * 100})
    world.run()
    (transfer,) = world.pulls()
    assert transfer.state == BLOCKED and transfer.error_class == "host_key"
    assert "host key" in (transfer.last_error or "") and "known_hosts" in (transfer.hint or "")
    assert "Traceback" not in (transfer.last_error or "")


def test_from_staging_links_the_staged_copy(tmp_path: Path, fake_drive: FakeDrive) -> None:
    world = World(tmp_path, fake_drive)
    data = os.urandom(3 * PIECE)
    staged = world.stage(data)
    inode = staged.stat().st_ino
    world.add(
        "acme/tiny",
        {"model.bin": data},
        options={"vm_from_staging": True},
        staged={"model.bin": world.staging.relative(staged)},
    )
    world.run()
    world.check_landed()
    assert (world.vm_root / "acme/tiny/model.bin").stat().st_ino == inode  # a hard link
    assert world.downloads() == 0
    (transfer,) = world.pulls()
    assert transfer.handles["via"] == "staging (link)"


def test_from_staging_is_off_by_default(tmp_path: Path, fake_drive: FakeDrive) -> None:
    world = World(tmp_path, fake_drive)
    data = os.urandom(2 * PIECE)
    staged = world.stage(data)
    inode = staged.stat().st_ino
    world.add("acme/tiny", {"model.bin": data}, staged={"model.bin": world.staging.relative(staged)})
    world.run()
    world.check_landed()
    assert world.downloads() >= 2
    assert (world.vm_root / "acme/tiny/model.bin").stat().st_ino != inode


def daemon_config(world: World, tmp_path: Path, token_file: Path) -> Path:
    """Write a relayd.toml whose [drive] is the fake drive and whose [vm] is *world*'s VM."""
    section = world.section
    vm_lines = [
        f'executor = "{section.executor}"',
        f'root = "{section.root}"',
        f'python = "{section.python}"',
        f'path = "{section.path}"',
        f'piece_size = "{section.piece_size}"',
        f"connections = {section.connections}",
    ]
    if section.executor == "ssh":
        vm_lines += [f'host = "{section.host}"', f'ssh_config_file = "{section.ssh_config_file}"']
    vm_block = "\n".join(vm_lines)
    path = tmp_path / "relayd.toml"
    path.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
workers = 2
lease = "10s"
shutdown_grace = "5s"
poll_jitter = "0s"
idle_wait = "0.2s"
watch_config = false
[catalogue]
url = "{world.url}"
[retry]
initial = "0.2s"
maximum = "2s"
[staging]
dir = "{world.staging.root}"
max_bytes = "10 GB"
min_free = "0"
[hub]
endpoint = "http://127.0.0.1:9"
[drive]
api_url = "{world.drive.api_url}"
refresh_token_file = "{token_file}"
timeout = "10s"
[vm]
{vm_block}
"""
    )
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("executor", ["local", "ssh"])
def test_kill_9_of_relayd_run_mid_pull_then_restart(
    executor: str, tmp_path: Path, fake_drive: FakeDrive, request: pytest.FixtureRequest
) -> None:
    sshd = request.getfixturevalue("sshd") if executor == "ssh" else None
    world = World(tmp_path, fake_drive, sshd)
    pieces = 16
    data = os.urandom(pieces * PIECE)
    file_id = upload_to_fake_drive(
        fake_drive, data, "relayd/acme/tiny/model.bin", drive_id=fake_drive.user.resource_drive_id
    )
    facts = {"model.bin": (len(data), hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest())}
    seed_pulls(world.store, "acme/tiny", facts, {"model.bin": file_id})
    world.files = {"acme/tiny/model.bin": data}
    token_file = tmp_path / "refresh-token"
    token_file.write_text(fake_drive.issue_refresh_token())
    token_file.chmod(0o600)
    config = daemon_config(world, tmp_path, token_file)
    fake_drive.settings.download_bandwidth = 512 * 1024
    log_path = tmp_path / "daemon.log"

    def start() -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "relayd", "run", "-c", str(config)],
                stdout=log,
                stderr=log,
                env={**os.environ, "RELAYD_AGENT_MARKER": world.marker},
            )

    def done_pieces() -> int:
        return sum(1 for t in world.pulls() for p in world.pieces(t.id) if p.done)

    daemon = start()
    try:
        assert wait_until(lambda: done_pieces() >= 3, 60), log_path.read_text()[-3000:]
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        assert no_agent_left(world.marker), "an agent outlived the daemon"
        partial = world.vm_root / "acme/tiny/model.bin.relayd-partial"
        assert partial.exists() and not (world.vm_root / "acme/tiny/model.bin").exists()
        before = done_pieces()
        assert before < pieces
        fake_drive.settings.download_bandwidth = None
        daemon = start()
        assert wait_until(lambda: world.pulls()[0].state == DONE, 120), log_path.read_text()[-3000:]
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, log_path.read_text()[-3000:]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    world.check_landed()
    (transfer,) = world.pulls()
    sends = [p.sends for p in world.pieces(transfer.id)]
    assert 0 <= sum(sends) - pieces <= world.section.connections, sends


def test_daemon_stop_mid_pull_stops_at_a_durable_point(tmp_path: Path, fake_drive: FakeDrive) -> None:
    world = World(tmp_path, fake_drive)
    world.add("acme/tiny", {"model.bin": os.urandom(12 * PIECE)})
    fake_drive.settings.download_bandwidth = 256 * 1024
    engine = world.engine()
    runner = threading.Thread(target=engine.run_until_idle, kwargs={"timeout": 120})
    runner.start()
    assert wait_until(lambda: any(p.done for t in world.pulls() for p in world.pieces(t.id)), 60)
    started = time.monotonic()
    assert engine.drain(15), "the pull did not stop within the grace"
    runner.join(10)
    assert time.monotonic() - started < 10
    assert no_agent_left(world.marker)
    (transfer,) = world.pulls()
    assert transfer.state == "pending"  # released with its durable pieces kept
    kept = sum(p.done for p in world.pieces(transfer.id))
    assert 0 < kept < 12
    fake_drive.settings.download_bandwidth = None
    world.run()
    world.check_landed()
    assert sum(p.sends for p in world.pieces(transfer.id)) - 12 <= world.section.connections
