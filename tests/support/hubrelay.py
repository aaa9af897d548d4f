"""Helpers for relays against the fake Hub: the real huggingface_hub client, the real engine, poller
and download hop over a temporary catalogue and staging directory (in process), or the real daemon
(subprocess)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

from relayd.assembly import build_sources, hop_rules
from relayd.catalogue import migrate
from relayd.catalogue.schema import PENDING, RUNNING, WAITING, Piece, Repo, Transfer
from relayd.catalogue.store import RepoSpec, Store, new_owner_id
from relayd.config import Config, parse_config
from relayd.engine import Engine, EngineSettings
from relayd.hops import load_hop_class
from relayd.hops.base import Hop, HopContext
from relayd.poll import Poller, PollResult
from relayd.staging import Staging
from relayd_sandbox.hub import FakeHub

TOKEN = "hf_alice_0123456789"


class HubRelay:
    """A fake Hub (user ``alice`` with TOKEN) and a relay of its repos into staging."""

    def __init__(self, root: Path, hub: FakeHub) -> None:
        self.root = root
        self.hub = hub
        self.config_path = root / "relayd.toml"
        self.log_path = root / "daemon.log"
        self.db = root / "catalogue.db"
        self.staging_dir = root / "staging"
        self.processes: list[subprocess.Popen[bytes]] = []
        root.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.store = Store(f"sqlite:///{self.db}")
        migrate.ensure_schema(self.store.engine, auto_upgrade=False)
        self.engine: Engine | None = None
        self.poller: Poller | None = None
        self.cancel = threading.Event()

    # -- config ------------------------------------------------------------------------------------

    def write_config(
        self,
        *,
        token: str | None = TOKEN,
        connections: int = 4,
        concurrency: int = 4,
        piece_size: str = "256 KiB",
        stall_timeout: str = "1s",
        timeout: str = "5s",
        extra: str = "",
    ) -> None:
        token_line = f'token = "{token}"' if token else 'token_env = "RELAYD_TEST_NO_SUCH_TOKEN"'
        self.config_path.write_text(
            f"""
[daemon]
state_dir = "{self.root / "state"}"
workers = 8
lease = "30s"
shutdown_grace = "5s"
poll_jitter = "0s"
idle_wait = "0.2s"
watch_config = false
[catalogue]
url = "sqlite:///{self.db}"
[retry]
initial = "0.05s"
maximum = "0.3s"
[staging]
dir = "{self.staging_dir}"
max_bytes = "100 GB"
min_free = "0"
[hub]
endpoint = "{self.hub.endpoint}"
{token_line}
connections = {connections}
concurrency = {concurrency}
piece_size = "{piece_size}"
stall_timeout = "{stall_timeout}"
timeout = "{timeout}"
{extra}
"""
        )
        self.config_path.chmod(0o600)

    def config(self) -> Config:
        return parse_config(tomllib.loads(self.config_path.read_text()), self.config_path)

    # -- repos -------------------------------------------------------------------------------------

    def add_repo(
        self,
        name: str,
        *,
        repo_type: str = "model",
        revision: str = "main",
        include: tuple[str, ...] = (),
        exclude: tuple[str, ...] = (),
    ) -> None:
        self.store.add_repo(
            RepoSpec(
                name=name,
                every=3600,
                route=("download",),
                repo_type=repo_type,
                revision=revision,
                include=include,
                exclude=exclude,
            ),
            replace=True,
        )

    def repo(self, name: str) -> Repo:
        repo = self.store.repo(name)
        assert repo is not None
        return repo

    # -- the relay, in process ---------------------------------------------------------------------

    def build(self) -> HubRelay:
        """(Re)build the hops, sources, poller and engine from the config file."""
        config = self.config()
        self.staging = Staging(config.staging)
        self.cancel = threading.Event()
        ctx = HopContext(self.store, self.staging, config.daemon.state_dir, self.cancel, new_owner_id())
        hops: dict[str, Hop] = {"download": load_hop_class("download")(config.section_for("download"), ctx)}
        self.store.rules = hop_rules(hops)
        sources, source_for_hop = build_sources(config, hops)
        self.poller = Poller(self.store, sources, source_for_hop)
        settings = EngineSettings(
            workers=config.daemon.workers,
            lease=config.daemon.lease,
            idle_wait=0.05,
            retry=config.retry,
            limits={name: config.concurrency_for(name) for name in hops},
        )
        self.engine = Engine(self.store, self.staging, hops, ctx, settings)
        return self

    def poll(self, name: str | None = None) -> list[PollResult]:
        if self.poller is None:
            self.build()
        assert self.poller is not None
        return [self.poller.poll(repo) for repo in self.store.repos() if name in (None, repo.name)]

    def run(self, timeout: float = 30) -> list[Transfer]:
        """Run the engine until no transfer is pending, running or waiting (or *timeout*)."""
        if self.engine is None:
            self.build()
        assert self.engine is not None
        deadline = time.monotonic() + timeout
        while True:
            self.engine.run_until_idle(timeout=max(0.1, deadline - time.monotonic()))
            transfers = self.transfers()
            if not any(t.state in (PENDING, RUNNING, WAITING) for t in transfers):
                return transfers
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"transfers still busy: {[(t.id, t.state, t.last_error) for t in transfers]}"
                )
            time.sleep(0.05)

    def relay(self, timeout: float = 30) -> list[Transfer]:
        self.poll()
        return self.run(timeout)

    # -- the daemon, in a subprocess ---------------------------------------------------------------

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = self.log_path.open("ab")
        script = Path(sys.executable).with_name("relayd")  # .venv/bin/relayd, as a service runs it
        command = [str(script)] if script.exists() else [sys.executable, "-m", "relayd"]
        process = subprocess.Popen(
            [*command, "run", "-c", str(self.config_path), *args],
            stdout=log,
            stderr=log,
        )
        self.processes.append(process)
        return process

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; daemon log:\n{self.log()[-4000:]}")

    # -- looking at the result ---------------------------------------------------------------------

    def transfers(self) -> list[Transfer]:
        with self.store.read() as session:
            return list(session.query(Transfer).order_by(Transfer.id))

    def transfer(self, path: str, repo: str | None = None) -> Transfer:
        from relayd.catalogue.schema import File

        with self.store.read() as session:
            query = session.query(Transfer).join(File, File.id == Transfer.file_id).filter(File.path == path)
            if repo is not None:
                query = query.join(Repo, Repo.id == Transfer.repo_id).filter(Repo.name == repo)
            found = query.order_by(Transfer.id.desc()).first()
            assert found is not None, f"no transfer for {path}"
            return found

    def pieces(self, transfer_id: int) -> list[Piece]:
        with self.store.read() as session:
            return list(session.query(Piece).filter(Piece.transfer_id == transfer_id).order_by(Piece.idx))

    def staged(self, sha256: str) -> Path:
        return self.staging_dir / "blobs" / sha256[:2] / sha256

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(10)
        if self.engine is not None:
            self.engine.drain(1)
        self.store.close()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def files_outside(root: Path, allowed: tuple[Path, ...]) -> list[Path]:
    """Return every file under *root* that is not under one of *allowed*."""
    found = []
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if not any(path.is_relative_to(base) for base in allowed):
                found.append(path)
    return found
