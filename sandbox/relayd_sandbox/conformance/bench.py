"""One conformance test's world: a catalogue and staging under a temporary root, the hop's harness
with its real servers, and the ways the suite runs the hop: by hand (plan, move, verify), under the
engine in this process, or under the engine in a child process killed with SIGKILL at a piece."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from relayd.catalogue.schema import DONE, PENDING, RUNNING, WAITING, File, Piece, Transfer
from relayd.catalogue.store import FileSpec, RepoSpec
from relayd.hops.base import FileInfo
from relayd.staging import Staging
from relayd_sandbox.conformance.harness import REPO, DriveHarness, Fixture, HopHarness
from relayd_sandbox.conformance.running import Built, PieceHook, Port, SaveHook, build, open_store, parse
from relayd_sandbox.processes import processes_with_cmdline

#: How long a run may take before the suite calls it stuck.
RUN_TIMEOUT = 90.0
SEEDER = "conformance-seeder"


@dataclass(frozen=True)
class Completion:
    """How a hop before the one under test left a file: its handles and what it learned."""

    handles: dict[str, Any]
    sha256: str | None = None
    sha1: str | None = None
    staged_path: str | None = None


@dataclass(frozen=True)
class Row:
    """A transfer of the hop under test, as the catalogue has it."""

    id: int
    path: str
    state: str
    error_class: str | None
    last_error: str | None


@dataclass(frozen=True)
class PieceRow:
    transfer_id: int
    index: int
    length: int
    done: bool
    sends: int


class Bench:
    """A catalogue, staging and config under *root*, and the harness of the hop under test."""

    def __init__(
        self,
        root: Path,
        harness: type[HopHarness],
        fixture: Fixture,
        drive: type[DriveHarness] | None = None,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.hop = harness.hop
        self.marker = f"relayd-conformance-{uuid.uuid4().hex[:12]}"
        self.drive = drive(root / "drive", fixture) if drive is not None else None
        self.harness = harness(self, fixture, self.drive)
        self.hooks = [f"{cls.__module__}:{cls.__qualname__}" for cls in (harness, drive) if cls is not None]
        self.config_data: dict[str, Any] = {
            "daemon": {"state_dir": str(root / "state")},
            "catalogue": {"url": f"sqlite:///{root / 'catalogue.db'}"},
            "staging": {"dir": str(root / "staging"), "max_bytes": "10 GB", "min_free": "0"},
            "retry": {"initial": "0.5s", "maximum": "1s"},
            **self.harness.sections(),
        }
        self.config = parse(self.config_data, root)
        if self.drive is not None:
            self.drive.prepare(self.config)
        self.store = open_store(self.config)
        self.staging = Staging(self.config.staging)
        self.files = self.harness.files()

    # -- seeding ------------------------------------------------------------------------------------

    @staticmethod
    def content(size: int) -> bytes:
        """Return *size* bytes that differ from any other size's (no rapid upload or dedupe hit)."""
        return random.Random(size).randbytes(size)

    def stage(self, data: bytes) -> str:
        """Put *data* in staging under its sha256, as the download hop leaves it; return its relative
        path."""
        staging = self.staging
        target = staging.blob_path(hashlib.sha256(data).hexdigest())
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return staging.relative(target)

    def add_snapshot(
        self,
        route: Sequence[str],
        files: Mapping[str, bytes] | Sequence[FileSpec],
        *,
        commit: str | None = None,
        destinations: Mapping[str, Any] | None = None,
    ) -> None:
        """Add REPO with *route* and record a snapshot of *files* (path → bytes, LFS files; or specs)."""
        specs = (
            [
                FileSpec(path, len(data), True, hashlib.sha256(data).hexdigest())
                for path, data in files.items()
            ]
            if isinstance(files, Mapping)
            else list(files)
        )
        repo, _ = self.store.add_repo(
            RepoSpec(name=REPO, every=86400, route=tuple(route), destinations=dict(destinations or {})),
            replace=True,
        )
        commit = (
            commit or hashlib.sha1(repr(sorted(specs, key=str)).encode(), usedforsecurity=False).hexdigest()
        )
        self.store.record_snapshot(repo.id, commit, specs)

    def complete_earlier(
        self, route: Sequence[str], completion: Callable[[str, FileInfo], Completion]
    ) -> None:
        """Complete the transfers of every hop before the one under test, in route order, with what
        *completion* says each left (given the hop and the file)."""
        for earlier in route[: list(route).index(self.hop)]:
            while (transfer := self.store.claim(earlier, SEEDER, 60)) is not None:
                file = self.store.load_job(transfer.id).file
                assert file is not None
                done = completion(earlier, file)
                self.store.complete(
                    transfer.id,
                    SEEDER,
                    done.handles,
                    sha256=done.sha256,
                    sha1=done.sha1,
                    staged_path=done.staged_path,
                )

    # -- running ------------------------------------------------------------------------------------

    def build(self, port: Port) -> Built:
        """Start the hop afresh (a new daemon: new services, a new cancel event) over *port*."""
        self.store.reset_orphaned()  # what a daemon does at start: a killed run's claims come back
        return build(self.config, self.hop, self.store, port, self.hooks, hop_class=self.harness.hop_class)

    def port(self, on_pieces: PieceHook | None = None, on_save: SaveHook | None = None) -> Port:
        """Return a port to the catalogue that calls the harness's ``landed`` when a transfer's last
        piece is recorded, then *on_pieces*; and *on_save* after each save of handles."""
        from relayd_sandbox.conformance.running import all_done

        def hook(transfer_id: int) -> None:
            if all_done(self.store, transfer_id):
                self.harness.landed(transfer_id)
            if on_pieces is not None:
                on_pieces(transfer_id)

        return Port(self.store, hook, on_save)

    @contextmanager
    def started(self, port: Port | None = None) -> Iterator[Built]:
        """Yield a started hop (``build``), drained and closed afterwards."""
        built = self.build(port or self.port())
        try:
            yield built
        finally:
            built.engine.drain(10)

    def run(self, port: Port | None = None) -> list[Row]:
        """Run the engine until no transfer is pending, running or waiting (retries included); return
        the rows."""
        deadline = time.monotonic() + RUN_TIMEOUT
        with self.started(port) as built:
            while True:
                built.engine.run_until_idle(timeout=max(1.0, deadline - time.monotonic()))
                rows = self.transfers()
                busy = [row for row in rows if row.state in (PENDING, RUNNING, WAITING)]
                if not busy:
                    return rows
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.hop}: transfers still busy after {RUN_TIMEOUT:.0f}s: {busy}")
                time.sleep(0.05)

    def run_killed(self, kill: str) -> None:
        """Run the hop in a child process that kills itself with SIGKILL at *kill* (``"first"`` or
        ``"last"``, see child.py); then wait until no VM agent it started is left."""
        spec = self.root / f"child-{uuid.uuid4().hex[:8]}.json"
        spec.write_text(
            json.dumps(
                {
                    "root": str(self.root),
                    "config": self.config_data,
                    "hop": self.hop,
                    "hooks": self.hooks,
                    "hop_class": self.harness.hop_class,
                    "kill": kill,
                }
            )
        )
        env = {**os.environ, "RELAYD_AGENT_MARKER": self.marker}
        child = subprocess.run(
            [sys.executable, "-m", "relayd_sandbox.conformance.child", str(spec)],
            env=env,
            capture_output=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        if child.returncode != -9:
            raise AssertionError(
                f"{self.hop}: the child was to die by SIGKILL at the {kill} piece, it exited with "
                f"{child.returncode}:\n{child.stderr.decode(errors='replace')[-3000:]}"
            )
        self.settle()

    def settle(self, timeout: float = 15.0) -> None:
        """Wait until no process carrying this bench's agent marker is alive (a killed daemon's VM
        agents end when their input closes), then until the server's byte count stops moving (it
        counts what it wrote into connections the kill broke a moment later, ``quiet``). Raise
        AssertionError if agents outlive *timeout*."""
        deadline = time.monotonic() + timeout
        while processes_with_cmdline(self.marker):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"agents outlived the killed daemon: {processes_with_cmdline(self.marker)}"
                )
            time.sleep(0.05)
        self.quiet(max(1.0, deadline - time.monotonic()))

    def quiet(self, timeout: float = 10.0) -> None:
        """Wait (up to *timeout*) until the server's byte count stops moving."""
        deadline = time.monotonic() + timeout
        counted = self.harness.received()
        while time.monotonic() < deadline:
            time.sleep(0.3)
            before, counted = counted, self.harness.received()
            if before == counted:
                return

    # -- looking ------------------------------------------------------------------------------------

    def transfers(self) -> list[Row]:
        """Return the file transfers of the hop under test, oldest first."""
        with self.store.read() as session:
            rows = session.execute(
                select(Transfer, File.path)
                .join(File, File.id == Transfer.file_id)
                .where(Transfer.hop == self.hop)
                .order_by(Transfer.id)
            ).all()
            return [Row(t.id, path, t.state, t.error_class, t.last_error) for t, path in rows]

    def pieces(self) -> list[PieceRow]:
        """Return every piece of the hop's file transfers."""
        ids = [row.id for row in self.transfers()]
        with self.store.read() as session:
            found = session.scalars(
                select(Piece).where(Piece.transfer_id.in_(ids)).order_by(Piece.transfer_id, Piece.idx)
            )
            return [PieceRow(p.transfer_id, p.idx, p.length, p.done, p.sends) for p in found]

    def all_done(self) -> bool:
        rows = self.transfers()
        return bool(rows) and all(row.state == DONE for row in rows)

    def close(self) -> None:
        self.harness.close()
        self.store.close()
