#!/usr/bin/env python3
"""Benchmark the pan_upload hop against the fake drive (docs/benchmarks.md, "pan_upload").

Everything runs on this machine: the fake Aliyun Drive (sandbox/relayd_sandbox/drive.py) in this process, and
relayd as the real daemon in a subprocess (`relayd run`), so /usr/bin/time sees only relayd. With
``--backend aligo`` (the default) real aligo 6.2.8 does the API calls, through the redirect adapter; with
``--backend open`` relayd's Open Platform backend does (after a QR login the fake confirms). The part
size is the drive's own 10 MiB.

    .venv/bin/python bench/drive_bench.py                     # all three (about 2 minutes, 24 GiB of disk)
    .venv/bin/python bench/drive_bench.py --backend open      # the same on the Open Platform backend
    .venv/bin/python bench/drive_bench.py --rapid 1GiB --resume 200MiB --rss 2GiB   # a quick look

Measured:
  rapid    a staged --rapid file (4 GiB) whose content the drive already holds: payload bytes the fake
           received (must be 0) and the transfer's started_at → finished_at (must be < 2 s), in process
           through the real engine, and as the daemon's whole run
  resume   a --resume file (200 MiB) uploaded by `relayd run` at --bandwidth, killed with SIGKILL in the
           middle of a part, then restarted: bytes the fake received for the upload beyond the file's
           size (must be ≤ one part) and parts received twice
  rss      peak RSS of `relayd run --once` uploading a --rss file (8 GiB) (/usr/bin/time -v; ≤ 150 MiB)
           and its throughput over loopback

Big files are written under --workdir and deleted afterwards; check `df -h` first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from relayd.catalogue import migrate
from relayd.catalogue.schema import Transfer
from relayd.catalogue.store import FileSpec, HopRules, RepoSpec, Store
from relayd.config import RetryConfig, StagingConfig, load_config
from relayd.drive import make_drive
from relayd.drive.open_backend import OpenDrive
from relayd.engine import Engine, EngineSettings
from relayd.hops.base import HopContext, Services
from relayd.hops.pan_upload import PanUploadHop
from relayd.staging import Staging
from relayd.units import parse_size
from relayd_sandbox.drive import FakeDrive

MiB = 1024 * 1024
PART = 10 * MiB
BIN = Path(sys.executable).parent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_file(path: Path, size: int) -> tuple[str, str]:
    """Write *size* pseudo-random bytes to *path* (a random 64 MiB block, each copy salted so the
    content is not trivially repetitive); return (sha256, sha1)."""
    block = os.urandom(64 * MiB)
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(usedforsecurity=False)
    written = 0
    with path.open("wb") as out:
        while written < size:
            chunk = block[: min(len(block), size - written)]
            chunk = written.to_bytes(8, "little") + chunk[8:] if len(chunk) >= 8 else chunk
            out.write(chunk)
            sha256.update(chunk)
            sha1.update(chunk)
            written += len(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


class World:
    """A catalogue, staging, a bootstrap token and a daemon config for one scenario."""

    def __init__(self, root: Path, fake: FakeDrive, backend: str) -> None:
        self.root = root
        self.fake = fake
        self.backend = backend
        root.mkdir(parents=True, exist_ok=True)
        self.db = root / "catalogue.db"
        self.store = Store(f"sqlite:///{self.db}")
        migrate.ensure_schema(self.store.engine, auto_upgrade=False)
        self.staging = Staging(StagingConfig(dir=root / "staging", max_bytes=10**14, min_free=0))
        self.token_file = root / "refresh-token"
        self.token_file.write_text(fake.issue_refresh_token())
        self.token_file.chmod(0o600)
        self.config = root / "relayd.toml"
        self.config.write_text(
            f"""
[daemon]
state_dir = "{root / "state"}"
workers = 4
lease = "30s"
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
dir = "{root / "staging"}"
max_bytes = "100 TB"
min_free = "0"
[hub]
endpoint = "http://127.0.0.1:9"
[drive]
api_url = "{fake.api_url}"
refresh_token_file = "{self.token_file}"
root = "/relayd"
timeout = "60s"
{self._open_keys()}"""
        )
        self.config.chmod(0o600)
        if backend == "open":
            self._qr_login()

    def _open_keys(self) -> str:
        """The Open Platform backend's keys: an app registered on the fake, its secret in a file."""
        if self.backend != "open":
            return ""
        app = self.fake.register_app()
        secret = self.root / "client-secret"
        secret.write_text(app.client_secret)
        secret.chmod(0o600)
        return f'backend = "open"\nclient_id = "{app.client_id}"\nclient_secret_file = "{secret}"\n'

    def _qr_login(self) -> None:
        """Log in as `relayctl drive login` does, the fake confirming the QR code."""
        drive = OpenDrive(load_config(self.config).drive, self.root / "state")
        try:
            qr = drive.auth.start_qr()
            self.fake.scan_qr(qr.sid)
            _, code = drive.auth.qr_status(qr.sid)
            drive.auth.finish(code, qr.verifier)
        finally:
            drive.close()

    def stage(self, repo: str, path: str, size: int) -> tuple[Path, str, str]:
        """Write a *size*-byte file straight into staging and record it as downloaded."""
        partial = self.staging.partial_path("bench")
        log(f"  writing {size / MiB:.0f} MiB for {repo}/{path}")
        sha256, sha1 = write_file(partial, size)
        staged = self.staging.promote(partial, sha256)
        row, _ = self.store.add_repo(RepoSpec(name=repo, every=86400, route=("download", "pan_upload")))
        self.store.record_snapshot(
            row.id,
            hashlib.sha1(repo.encode(), usedforsecurity=False).hexdigest(),
            [FileSpec(path, size, True, sha256)],
        )
        transfer = self.store.claim("download", "bench", 60)
        assert transfer is not None
        self.store.complete(
            transfer.id, "bench", {}, sha256=sha256, sha1=sha1, staged_path=self.staging.relative(staged)
        )
        return staged, sha256, sha1

    def transfer(self) -> Transfer:
        with self.store.read() as session:
            found = session.query(Transfer).filter(Transfer.hop == "pan_upload").one()
            return found

    def daemon(self, *args: str, timed: bool = False) -> subprocess.Popen[bytes]:
        command = [str(BIN / "relayd"), "run", "-c", str(self.config), *args]
        if timed:
            command = ["/usr/bin/time", "-v", *command]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.root, ignore_errors=True)


def scenario_rapid(workdir: Path, fake: FakeDrive, size: int, backend: str) -> dict[str, Any]:
    log(f"rapid: {size / MiB:.0f} MiB already on the drive")
    world = World(workdir / "rapid", fake, backend)
    try:
        staged, _, sha1 = world.stage("bench/rapid", "model.safetensors", size)
        log("  making the content known to the fake (as another user's upload would)")
        fake.seed_content(staged)
        before = fake.stats()
        drive = make_drive(load_config(world.config).drive, world.root / "state", world.store)
        ctx = HopContext(
            world.store,
            world.staging,
            world.root / "state",
            threading.Event(),
            "bench",
            Services({"drive": lambda: drive}),
        )
        hop = PanUploadHop(load_config(world.config).drive, ctx)
        drive.ensure_folder("/relayd")  # the login (one refresh) is not part of the upload
        world.store.rules = HopRules(reads_staging=frozenset({"pan_upload"}))
        engine = Engine(
            world.store,
            world.staging,
            {"pan_upload": hop},
            ctx,
            EngineSettings(
                workers=2, lease=60, idle_wait=0.02, retry=RetryConfig(1, 10, 2), limits={"pan_upload": 3}
            ),
        )
        started = time.monotonic()
        engine.run_until_idle(timeout=60)
        wall = time.monotonic() - started
        engine.drain(5)
        transfer = world.transfer()
        assert transfer.state == "done", transfer.last_error
        after = fake.stats()
        elapsed = (transfer.finished_at - transfer.started_at).total_seconds()  # type: ignore[operator]
        result = {
            "size": size,
            "payload_bytes": after.put_bytes - before.put_bytes,
            "rapid_hits": after.rapid_upload_hits - before.rapid_upload_hits,
            "transfer_seconds": round(elapsed, 3),
            "engine_wall_seconds": round(wall, 3),
            "api_calls": sum(after.calls.values()) - sum(before.calls.values()),
            "rapid_handle": transfer.handles.get("rapid"),
            "content_hash_ok": transfer.handles.get("content_hash") == sha1.upper(),
        }
        log(f"  {json.dumps(result)}")
        return result
    finally:
        world.close()


def scenario_resume(
    workdir: Path, fake: FakeDrive, size: int, bandwidth: float, backend: str
) -> dict[str, Any]:
    log(f"resume: {size / MiB:.0f} MiB at {bandwidth / MiB:.0f} MiB/s, SIGKILL mid-part, restart")
    world = World(workdir / "resume", fake, backend)
    try:
        world.stage("bench/resume", "model.safetensors", size)
        fake.settings.upload_bandwidth = bandwidth
        first = world.daemon()
        kill_after_parts = max(2, (size // PART) // 2)
        while not fake.uploads() or len(fake.uploads()[0].parts) < kill_after_parts:
            time.sleep(0.02)
            if first.poll() is not None:
                raise RuntimeError("the daemon stopped early: " + first.stderr.read().decode()[-2000:])  # type: ignore[union-attr]
        time.sleep(PART / bandwidth / 2)  # half-way into the next part
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        (upload,) = fake.uploads()
        at_kill = fake.stats().put_bytes_by_upload[upload.upload_id]
        parts_at_kill = len(upload.parts)
        fake.settings.upload_bandwidth = None
        second = world.daemon()
        deadline = time.monotonic() + 600
        while world.transfer().state != "done":
            if time.monotonic() > deadline or second.poll() is not None:
                raise RuntimeError("the restarted daemon did not finish")
            time.sleep(0.1)
        second.send_signal(signal.SIGTERM)
        second.wait(30)
        stats = fake.stats()
        received = stats.put_bytes_by_upload[upload.upload_id]
        result = {
            "size": size,
            "part_size": PART,
            "parts": -(-size // PART),
            "parts_at_the_drive_when_killed": parts_at_kill,
            "bytes_received_when_killed": at_kill,
            "bytes_received_total": received,
            "bytes_sent_again": received - size,
            "parts_sent_again": round((received - size) / PART, 3),
            "upload_ids": len(fake.uploads()),
            "parts_received": stats.parts_received,
        }
        log(f"  {json.dumps(result)}")
        return result
    finally:
        fake.settings.upload_bandwidth = None
        world.close()


def scenario_rss(workdir: Path, fake: FakeDrive, size: int, backend: str) -> dict[str, Any]:
    log(f"rss: `relayd run --once` uploading {size / MiB:.0f} MiB under /usr/bin/time -v")
    world = World(workdir / "rss", fake, backend)
    try:
        world.stage("bench/rss", "model.safetensors", size)
        before = fake.stats().put_bytes
        process = world.daemon("--once", timed=True)
        _, err = process.communicate(timeout=3600)
        text = err.decode(errors="replace")
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
        transfer = world.transfer()
        if transfer.state != "done":
            raise RuntimeError(f"the upload did not finish: {transfer.last_error}\n{text[-3000:]}")
        elapsed = (transfer.finished_at - transfer.started_at).total_seconds()  # type: ignore[operator]
        result = {
            "size": size,
            "peak_rss_mib": round(int(match.group(1)) / 1024, 1) if match else None,
            "process_wall": wall.group(1) if wall else None,
            "transfer_seconds": round(elapsed, 1),
            "throughput_mib_s": round(size / MiB / elapsed, 1),
            "payload_bytes": fake.stats().put_bytes - before,
        }
        log(f"  {json.dumps(result)}")
        return result
    finally:
        world.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/relayd-drive-bench"))
    parser.add_argument("--rapid", default="4GiB", help="size of the rapid-upload file (0 to skip)")
    parser.add_argument("--resume", default="200MiB", help="size of the resumed upload (0 to skip)")
    parser.add_argument("--rss", default="8GiB", help="size of the RSS upload (0 to skip)")
    parser.add_argument("--bandwidth", default="40MiB", help="upload rate before the kill")
    parser.add_argument("--backend", choices=("aligo", "open"), default="aligo", help="the drive backend")
    args = parser.parse_args()
    backend: str = args.backend
    workdir: Path = args.workdir
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    results: dict[str, Any] = {}
    try:
        with FakeDrive(workdir / "fake") as fake:
            if parse_size(args.rapid):
                results["rapid"] = scenario_rapid(workdir, fake, parse_size(args.rapid), backend)
            if parse_size(args.resume):
                results["resume"] = scenario_resume(
                    workdir, fake, parse_size(args.resume), float(parse_size(args.bandwidth)), backend
                )
            if parse_size(args.rss):
                results["rss"] = scenario_rss(workdir, fake, parse_size(args.rss), backend)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["backend"] = backend
    print(json.dumps(results, indent=2))
    failures = []
    rapid = results.get("rapid")
    if rapid and (rapid["payload_bytes"] != 0 or rapid["transfer_seconds"] >= 2):
        failures.append("rapid upload")
    resume = results.get("resume")
    if resume and resume["bytes_sent_again"] > PART:
        failures.append("resume")
    rss = results.get("rss")
    if rss and (rss["peak_rss_mib"] is None or rss["peak_rss_mib"] > 150):
        failures.append("rss")
    if failures:
        log("FAILED: " + ", ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
