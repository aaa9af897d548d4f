"""Sites against one daemon, on the loopback sandbox (issue 17):

* ``route``: 4 equal shards through the whole default route with one daemon on a SQLite catalogue, then
  on a fresh sandbox with two daemons (abroad: download + pan_upload; vm: vm_pull + lfs_push, the VM's
  side local) on one throwaway PostgreSQL catalogue. Goal: the two-site time ≤ 1.3× the one-daemon time.
* ``download``: a download-only route (a verified mirror) of 4 shards, each Hub connection capped,
  with one download daemon and then with two on one PostgreSQL catalogue (each with its own staging).
  Goal: two workers ≥ 1.7× as fast as one.

Each time runs from `relayctl add` to the snapshot done, read from the catalogue every 0.1 s.

    .venv/bin/python bench/sites_bench.py [--shard-size "64 MiB"] [--drive-cap "20 MB"]
                                          [--hub-cap "8 MB"] [--only route|download]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

from relayd.catalogue.schema import Repo, Snapshot
from relayd.catalogue.store import Store
from relayd.units import format_size, parse_size
from relayd_sandbox.postgres import ThrowawayPostgres
from relayd_sandbox.route import REPO, RouteSandbox

SITES = {"abroad": ["download", "pan_upload"], "vm": ["vm_pull", "lfs_push"]}


def snapshot_done(url: str) -> bool:
    store = Store(url)
    try:
        with store.read() as session:
            state = session.scalar(
                select(Snapshot.state).join(Repo, Repo.id == Snapshot.repo_id).where(Repo.name == REPO)
            )
        return state == "done"
    finally:
        store.close()


def timed(
    box: RouteSandbox, url: str, configs: list[Path], route: str | None, timeout: float = 1800
) -> float:
    """Start a daemon per config, add the repo, return the seconds until its snapshot is done."""
    daemons = [box.start_daemon(config=config, log_path=config.with_suffix(".log")) for config in configs]
    try:
        time.sleep(3)  # the daemons up before the clock starts
        args = ["add", REPO, "--every", "1h"] + (["--route", route] if route else [])
        added = box.relayctl(*args, config=configs[0])
        assert added.returncode == 0, added.stderr
        started = time.perf_counter()
        deadline = started + timeout
        while not snapshot_done(url):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"not done within {timeout:.0f}s; see {configs[0].with_suffix('.log')}")
            time.sleep(0.1)
        return time.perf_counter() - started
    finally:
        for daemon in daemons:
            box.stop_daemon(daemon)


def sandbox(root: Path, args: argparse.Namespace, **tuning: int) -> RouteSandbox:
    box = RouteSandbox(root, shards=4, shard_size=args.shard_size, ssh=False, piece_size="8 MiB", **tuning)
    box.start()
    assert box.drive is not None and box.hub is not None
    box.drive.settings.download_bandwidth = args.drive_cap or None
    box.hub.bandwidth_cap = args.hub_cap or None
    return box


def one_and_two(
    root: Path, args: argparse.Namespace, sites: dict[str, list[str]], route: str | None, **tuning: int
) -> tuple[float, float]:
    """Return the seconds with one daemon (SQLite) and with a daemon per entry of *sites* (PostgreSQL)."""
    box = sandbox(root / "one", args, **tuning)
    try:
        box.write_config()
        one = timed(box, f"sqlite:///{box.root / 'state' / 'catalogue.db'}", [box.config_path], route)
    finally:
        box.stop()
    box = sandbox(root / "two", args, **tuning)
    try:
        with ThrowawayPostgres() as server:
            url = server.create_database("relayd_sites_bench")
            configs = []
            for site, hops in sites.items():
                config = box.root / f"{site}.toml"
                box.write_site_config(config, site=site, hops=hops, catalogue_url=url)
                configs.append(config)
            two = timed(box, url, configs, route)
    finally:
        box.stop()
    return one, two


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shard-size", type=parse_size, default=parse_size("64 MiB"))
    parser.add_argument("--drive-cap", type=parse_size, default=parse_size("20 MB"), help="per drive link")
    parser.add_argument("--hub-cap", type=parse_size, default=parse_size("8 MB"), help="per Hub connection")
    parser.add_argument("--only", choices=("route", "download"))
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="relayd-sites-bench-"))
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    shards = f"4 × {format_size(args.shard_size)}"
    missed = False
    if args.only in (None, "route"):
        hub_cap, args.hub_cap = args.hub_cap, 0  # the whole route: only the drive's links are capped
        one, two = one_and_two(root / "route", args, SITES, None)
        args.hub_cap = hub_cap
        ratio = two / one
        missed |= ratio > 1.3
        print(
            f"route, {shards}, drive links at {format_size(args.drive_cap)}/s: one daemon {one:.1f} s, "
            f"two sites {two:.1f} s: {ratio:.2f}× ({'met' if ratio <= 1.3 else 'NOT MET'}, goal ≤ 1.3×)"
        )
    if args.only in (None, "download"):
        workers = {"dl-1": ["download"], "dl-2": ["download"]}
        # One file at a time over one connection per daemon: the cap per connection is the limit.
        one, two = one_and_two(root / "download", args, workers, "download", connections=1, concurrency=1)
        speedup = one / two
        missed |= speedup < 1.7
        print(
            f"download, {shards}, Hub connections at {format_size(args.hub_cap)}/s, one file and one "
            f"connection per daemon: one worker {one:.1f} s, two {two:.1f} s: {speedup:.2f}× "
            f"({'met' if speedup >= 1.7 else 'NOT MET'}, goal ≥ 1.7×)"
        )
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
