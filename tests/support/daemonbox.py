"""A relayd daemon in a subprocess over a temporary catalogue, with local_copy as its route."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from relayd.catalogue import migrate
from relayd.catalogue.schema import Piece, Snapshot, Transfer
from relayd.catalogue.store import RepoSpec, Store
from tests.support.daemonlog import DaemonLog


class DaemonSandbox(DaemonLog):
    """Paths, config, catalogue access and daemon processes for one test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.source = root / "source"
        self.dest = root / "dest"
        self.config_path = root / "relayd.toml"
        self.log_path = root / "daemon.log"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.write_config()
        self.store = Store(f"sqlite:///{root / 'catalogue.db'}")
        migrate.ensure_schema(self.store.engine, auto_upgrade=False)

    def write_config(self, *, max_rate: str = "0", piece_size: str = "256 KiB", extra: str = "") -> None:
        self.config_path.write_text(
            f"""
[daemon]
state_dir = "{self.root / "state"}"
workers = 4
lease = "10s"
shutdown_grace = "10s"
poll_jitter = "0s"
idle_wait = "0.2s"
[catalogue]
url = "sqlite:///{self.root / "catalogue.db"}"
[retry]
initial = "0.2s"
maximum = "2s"
[staging]
dir = "{self.root / "staging"}"
max_bytes = "10 GB"
min_free = "0"
[local_copy]
source = "{self.source}"
dest = "{self.dest}"
piece_size = "{piece_size}"
concurrency = 2
max_rate = "{max_rate}"
{extra}
"""
        )
        self.config_path.chmod(0o600)

    def make_repo(self, name: str, files: dict[str, int], *, every: float = 3600) -> dict[str, str]:
        """Write files of the given sizes under the source and add the repo; return path → sha256."""
        digests = {}
        for path, size in files.items():
            target = self.source / name / path
            target.parent.mkdir(parents=True, exist_ok=True)
            data = os.urandom(size)
            target.write_bytes(data)
            digests[path] = hashlib.sha256(data).hexdigest()
        self.store.add_repo(RepoSpec(name=name, every=every, route=("local_copy",)))
        return digests

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.log_path.open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "relayd", "run", "-c", str(self.config_path), *args],
            stdout=log,
            stderr=log,
            env={**os.environ, **(env or {})},
        )
        self.processes.append(process)
        return process

    def relayctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run relayctl with *args* against this box's config; return the finished process."""
        return subprocess.run(
            [sys.executable, "-m", "relayd.cli", "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def transfers(self) -> list[Transfer]:
        with self.store.read() as session:
            return list(session.query(Transfer).order_by(Transfer.id))

    def pieces(self) -> list[Piece]:
        with self.store.read() as session:
            return list(session.query(Piece).order_by(Piece.transfer_id, Piece.idx))

    def snapshots(self) -> list[Snapshot]:
        with self.store.read() as session:
            return list(session.query(Snapshot).order_by(Snapshot.id))

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(10)
        self.store.close()
