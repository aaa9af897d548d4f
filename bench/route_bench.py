"""The whole route against its slowest hop: 4 equal shards through download → pan_upload → vm_pull →
lfs_push must finish in ≤ 1.3× the time of the slowest hop measured alone on the same shards, with the
staging disk's peak ≤ 2 shards.

Usage: .venv/bin/python bench/route_bench.py [--shard-size "256 MiB"] [--ssh/--no-ssh] [--drive-cap "20 MB"]
                                             [--dir DIR] [--timeline]

--drive-cap limits each download link of the fake drive (bytes/s), as the real drive throttles its
links: then vm_pull is the route's bottleneck, as it is in practice. Without it every service shares
this machine's two cores and all four hops run at similar speeds; a pipeline of 4 equal shards through
4 equal stages cannot take less than (4 + 3) / 4 = 1.75× one stage.

Each hop alone: one sandbox, one daemon; the download-only route first (it keeps its staged copies, a
verified mirror), then for each later hop a repo with the same content whose earlier hops cost nothing
(content already staged, the drive's rapid upload), so its time is that hop's. The whole route: a fresh
sandbox (nothing to skip), staging capped at 2 shards, its usage sampled every 0.1 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import select

from relayd.catalogue.schema import File, Repo, Snapshot, Transfer
from relayd.catalogue.store import Store
from relayd.units import format_size, parse_size
from relayd_sandbox.hub import make_model_repo
from relayd_sandbox.route import REPO, RouteSandbox


def wait_done(box: RouteSandbox, name: str, timeout: float = 3600) -> None:
    store = Store(f"sqlite:///{box.root / 'state' / 'catalogue.db'}")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with store.read() as session:
                states = list(
                    session.scalars(
                        select(Snapshot.state).join(Snapshot.repo).where(Snapshot.repo.has(name=name))
                    )
                )
            if states and states[-1] == "done":
                return
            time.sleep(0.1)
        raise TimeoutError(f"{name} did not finish")
    finally:
        store.close()


def timed_relay(
    box: RouteSandbox, name: str, route: str, hop: str | None = None, *, timeline: bool = False
) -> float:
    """Relay *name* along *route*; return the seconds from the first transfer's start to the end of
    *hop*'s last transfer (or of the whole snapshot), as the catalogue recorded them (so the poll's
    pick-up delay is not counted). With *timeline*, print every transfer's start and end."""
    result = box.relayctl("add", name, "--route", route, "--every", "1h")
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    wait_done(box, name)
    store = Store(f"sqlite:///{box.root / 'state' / 'catalogue.db'}")
    try:
        with store.read() as session:
            rows = session.execute(
                select(Transfer.hop, File.path, Transfer.started_at, Transfer.finished_at)
                .join(Repo, Repo.id == Transfer.repo_id)
                .outerjoin(File, File.id == Transfer.file_id)
                .where(Repo.name == name)
            ).all()
    finally:
        store.close()
    spans = [
        (hop_name, path, started, finished)
        for hop_name, path, started, finished in rows
        if started is not None and finished is not None and (hop is None or hop_name == hop)
    ]
    first = min(started for _, _, started, _ in spans)
    if timeline:
        for hop_name, path, started, finished in sorted(spans, key=lambda row: row[2]):
            print(
                f"    {hop_name:<10} {path or '(snapshot commit)':<40} "
                f"{(started - first).total_seconds():6.2f} → {(finished - first).total_seconds():6.2f} s"
            )
    return (max(finished for _, _, _, finished in spans) - first).total_seconds()


def du(path: Path) -> int:
    total = 0
    for directory, _dirs, files in os.walk(path):
        for file in files:
            try:
                total += os.lstat(os.path.join(directory, file)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shard-size", default="256 MiB")
    parser.add_argument("--ssh", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--drive-cap", default="0", help="bytes/s per drive download link (0 = none)")
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--timeline", action="store_true", help="print the whole route's transfers")
    args = parser.parse_args()
    shard = parse_size(args.shard_size)
    cap = parse_size(args.drive_cap)
    root = args.dir or Path(tempfile.mkdtemp(prefix="relayd-route-bench-"))
    capped = f"{format_size(cap)}/s" if cap else "nothing"
    print(
        f"4 shards of {format_size(shard)}, VM over {'SSH' if args.ssh else 'the local executor'}, "
        f"drive links capped at {capped}, in {root}"
    )

    # Each hop alone.
    alone: dict[str, float] = {}
    box = RouteSandbox(root / "alone", shards=4, shard_size=shard, ssh=args.ssh)
    box.start()
    if cap and box.drive is not None:
        box.drive.settings.download_bandwidth = cap
    daemon = box.start_daemon()
    try:
        alone["download"] = timed_relay(box, REPO, "download", "download")
        assert box.hub is not None and box.git is not None
        for hop, route in (
            ("pan_upload", "download,pan_upload"),
            ("vm_pull", "download,pan_upload,vm_pull"),
            ("lfs_push", "download,lfs_push"),
        ):
            name = f"demo/alone-{hop.replace('_', '-')}"
            make_model_repo(box.hub, name, shards=4, shard_size=shard)
            box.git.new_repo("demo", name.split("/")[1])
            alone[hop] = timed_relay(box, name, route, hop)
    finally:
        box.stop_daemon(daemon)
        box.stop()
    for hop, seconds in alone.items():
        print(f"  {hop:<10} alone: {seconds:7.1f} s  ({4 * shard / seconds / 2**20:7.1f} MiB/s)")
    slowest_hop, slowest = max(alone.items(), key=lambda item: item[1])

    # The whole route, fresh, with staging capped at two shards.
    box = RouteSandbox(
        root / "route", shards=4, shard_size=shard, ssh=args.ssh, staging_max=str(2 * shard + 2**20)
    )
    box.start()
    if cap and box.drive is not None:
        box.drive.settings.download_bandwidth = cap
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, du(box.root / "staging"))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    daemon = box.start_daemon()
    try:
        whole = timed_relay(box, REPO, "download,pan_upload,vm_pull,lfs_push", timeline=args.timeline)
    finally:
        stop.set()
        sampler.join()
        box.stop_daemon(daemon)
        box.stop()
    ratio = whole / slowest
    print(
        f"  whole route: {whole:7.1f} s = {ratio:.2f}× the slowest hop alone ({slowest_hop}, {slowest:.1f} s)"
    )
    print(f"  staging peak: {format_size(peak)} = {peak / shard:.2f} shards")
    met = ratio <= 1.3 and peak <= 2 * shard + 2**20
    print("goals (≤ 1.3×, staging ≤ 2 shards):", "met" if met else "MISSED")
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
