#!/usr/bin/env python3
"""Benchmark the vm_pull hop over SSH on loopback against one curl of the same URL (docs/benchmarks.md).

One fake drive (started here) serves one generated file; a sandbox sshd on 127.0.0.1 plays the VM.
For each case, curl fetches a fresh download link of that file with the same Referer header into the
work directory, and the real vm_pull hop (engine in this process, the agent on the "VM" over SSH)
pulls the same file to the VM root, hashing it there (sha256 + sha1) and renaming it into place.

    .venv/bin/python bench/vm_pull_bench.py                   # the full run (about 2 minutes)
    .venv/bin/python bench/vm_pull_bench.py --size 256MiB     # a quick look

Cases:
  capped    the drive limits each download connection to --cap bytes/s (as the real drive throttles
            each link): curl (one connection) vs vm_pull at its default 2 connections
  uncapped  no limit: loopback, bounded by this machine's CPU and disk
  dropped   capped; every SSH session is killed once 3 pieces are durable: vm_pull reconnects and
            continues; counted: pieces fetched again (piece sends beyond one each)

vm_pull's time is the wall time of the engine run (readiness check over SSH, link, ranged GETs,
fsync per piece, the VM-side hash, the rename); curl's is its process's wall time. Results are printed
as Markdown and written to <workdir>/results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from relayd.catalogue import migrate
from relayd.catalogue.schema import Piece, Transfer
from relayd.catalogue.store import HopRules, Store
from relayd.config import RetryConfig, StagingConfig
from relayd.engine import Engine, EngineSettings
from relayd.hops.base import HopContext, Services
from relayd.hops.vm_pull import VmPullHop
from relayd.staging import Staging
from relayd.units import parse_size
from relayd.vm.executor import make_executor
from relayd_sandbox.drive import FakeDrive
from relayd_sandbox.sshd import SandboxSshd
from relayd_sandbox.vm_testkit import FakeDriveLinks, seed_pulls, upload_to_fake_drive, vm_config

MiB = 1024 * 1024
MB = 1000 * 1000
VM_PATH = "/usr/local/bin:/usr/bin:/bin"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_file(path: Path, size: int) -> tuple[str, str]:
    """Write *size* incompressible bytes to *path*; return (sha256, sha1)."""
    block = os.urandom(16 * MiB)
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(usedforsecurity=False)
    with path.open("wb") as out:
        written = 0
        while written < size:
            chunk = block[: min(len(block), size - written)]
            out.write(chunk)
            sha256.update(chunk)
            sha1.update(chunk)
            written += len(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def run_curl(links: FakeDriveLinks, file_id: str, target: Path) -> float:
    """Fetch the file once with curl (same URL kind, same Referer); return the seconds it took."""
    link = links.download_url(file_id)
    target.unlink(missing_ok=True)
    argv = ["curl", "-sS", "--fail", "-o", str(target)]
    for name, value in link.headers.items():
        argv += ["-H", f"{name}: {value}"]
    started = time.perf_counter()
    # The signed URL goes through curl's stdin config, not its argv (it is a capability).
    subprocess.run([*argv, "-K", "-"], input=f'url = "{link.url}"\n', text=True, check=True)
    return time.perf_counter() - started


class Case:
    """One vm_pull run: a fresh catalogue and VM root, the file seeded as already on the drive."""

    def __init__(self, work: Path, name: str, drive: FakeDrive, sshd: SandboxSshd, piece: int, conns: int):
        self.root = work / name
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.store = Store(f"sqlite:///{self.root / 'catalogue.db'}")
        migrate.ensure_schema(self.store.engine, auto_upgrade=False)
        self.staging = Staging(StagingConfig(dir=self.root / "staging", max_bytes=10**13, min_free=0))
        self.section = vm_config(
            executor="ssh",
            host="127.0.0.1",
            root=str(self.root / "vm"),
            ssh_config_file=sshd.ssh_config_file,
            python="python3",
            path=VM_PATH,
            piece_size=piece,
            connections=conns,
        )
        self.links = FakeDriveLinks(
            drive.api_url, drive.issue_access_token(), drive_id=drive.default_drive_id
        )

    def run(self, file_id: str, facts: tuple[int, str, str], on_start: Any = None) -> float:
        seed_pulls(self.store, "bench/model", {"model.safetensors": facts}, {"model.safetensors": file_id})
        executor = make_executor(self.section)
        services = Services({"drive": lambda: self.links, "vm": lambda: executor})
        ctx = HopContext(self.store, self.staging, self.root / "state", threading.Event(), "bench", services)
        hop = VmPullHop(self.section, ctx)
        self.store.rules = HopRules()
        settings = EngineSettings(
            workers=2,
            lease=60.0,
            idle_wait=0.05,
            retry=RetryConfig(initial=0.1, maximum=1.0, multiplier=2.0),
            limits={"vm_pull": 1},
        )
        engine = Engine(self.store, self.staging, {"vm_pull": hop}, ctx, settings)
        if on_start is not None:
            threading.Thread(target=on_start, args=(self,), daemon=True).start()
        started = time.perf_counter()
        try:
            engine.run_until_idle(timeout=3600)
        finally:
            elapsed = time.perf_counter() - started
            engine.drain(5)
        transfer = self.transfer()
        if transfer.state != "done":
            raise SystemExit(f"vm_pull did not finish: {transfer.state} {transfer.last_error}")
        return elapsed

    def transfer(self) -> Transfer:
        with self.store.read() as session:
            return session.query(Transfer).filter(Transfer.hop == "vm_pull").one()

    def pieces(self) -> list[Piece]:
        with self.store.read() as session:
            transfer = session.query(Transfer).filter(Transfer.hop == "vm_pull").one()
            return list(session.query(Piece).filter(Piece.transfer_id == transfer.id))

    def landed(self) -> Path:
        return self.root / "vm/bench/model/model.safetensors"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1GiB", help="file size (default 1GiB)")
    parser.add_argument("--cap", default="20MB", help="per-connection limit for the capped cases (20MB/s)")
    parser.add_argument("--piece-size", default="64MiB", help="vm.piece_size (default 64MiB, the default)")
    parser.add_argument("--connections", type=int, default=2, help="vm.connections (default 2, the default)")
    parser.add_argument("--workdir", default="/var/tmp/relayd-vm-bench")
    args = parser.parse_args()
    size, cap, piece = parse_size(args.size), parse_size(args.cap), parse_size(args.piece_size)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    source = work / "source.bin"
    log(f"generating {size} bytes")
    sha256, sha1 = make_file(source, size)
    facts = (size, sha256, sha1)
    results: dict[str, Any] = {
        "size": size,
        "cap": cap,
        "piece_size": piece,
        "connections": args.connections,
        "python": platform.python_version(),
        "cases": {},
    }
    with FakeDrive(work / "drive") as drive, SandboxSshd() as sshd:
        # Measure the link, not the drive's concurrent-download cap.
        drive.settings.download_cap_per_app = drive.settings.download_cap_per_user = None
        file_id = upload_to_fake_drive(drive, source, "bench/model.safetensors")
        links = FakeDriveLinks(drive.api_url, drive.issue_access_token(), drive_id=drive.default_drive_id)
        for name, bandwidth in (("capped", float(cap)), ("uncapped", None)):
            drive.settings.download_bandwidth = bandwidth
            log(f"{name}: curl")
            curl = run_curl(links, file_id, work / "curl.bin")
            if hashlib.sha256((work / "curl.bin").read_bytes()).hexdigest() != sha256:
                raise SystemExit("curl fetched the wrong bytes")
            (work / "curl.bin").unlink()
            log(f"{name}: vm_pull over ssh")
            case = Case(work, name, drive, sshd, piece, args.connections)
            pulled = case.run(file_id, facts)
            case.landed().unlink()
            results["cases"][name] = {
                "curl_s": curl,
                "curl_mb_s": size / curl / MB,
                "vm_pull_s": pulled,
                "vm_pull_mb_s": size / pulled / MB,
                "ratio": curl / pulled,
                "resent_pieces": sum(p.sends for p in case.pieces()) - len(case.pieces()),
            }
            log(json.dumps(results["cases"][name]))

        drive.settings.download_bandwidth = float(cap)
        killed: list[int] = []

        def drop_after_three_pieces(case: Case) -> None:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                with contextlib.suppress(Exception):  # the transfer is not claimed yet
                    if sum(p.done for p in case.pieces()) >= 3:
                        killed.extend(sshd.kill_sessions())
                        return
                time.sleep(0.05)

        log("dropped: vm_pull over ssh, every SSH session killed after 3 pieces")
        case = Case(work, "dropped", drive, sshd, piece, args.connections)
        pulled = case.run(file_id, facts, on_start=drop_after_three_pieces)
        pieces = case.pieces()
        results["cases"]["dropped"] = {
            "vm_pull_s": pulled,
            "vm_pull_mb_s": size / pulled / MB,
            "sessions_killed": len(killed),
            "pieces": len(pieces),
            "resent_pieces": sum(p.sends for p in pieces) - len(pieces),
            "attempts": case.transfer().attempts,
        }
        log(json.dumps(results["cases"]["dropped"]))
        case.landed().unlink()
    source.unlink()
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(render(results))
    return 0


def render(results: dict[str, Any]) -> str:
    size_mib = results["size"] / MiB
    lines = [
        f"file {size_mib:.0f} MiB, pieces {results['piece_size'] // MiB} MiB, "
        f"{results['connections']} connections, per-connection cap {results['cap'] / MB:.0f} MB/s",
        "",
        "| case | curl (1 connection) | vm_pull over SSH | vm_pull / curl | pieces fetched again |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in ("capped", "uncapped"):
        case = results["cases"][name]
        lines.append(
            f"| {name} | {case['curl_mb_s']:.1f} MB/s ({case['curl_s']:.1f} s) | "
            f"{case['vm_pull_mb_s']:.1f} MB/s ({case['vm_pull_s']:.1f} s) | {case['ratio']:.2f}× | "
            f"{case['resent_pieces']} |"
        )
    dropped = results["cases"]["dropped"]
    lines.append(
        f"| capped, SSH dropped after 3 pieces | – | {dropped['vm_pull_mb_s']:.1f} MB/s "
        f"({dropped['vm_pull_s']:.1f} s) | – | {dropped['resent_pieces']} of {dropped['pieces']} "
        f"(≤ {results['connections']}) |"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
