"""Ask the end first: a 4-shard snapshot whose blobs ModelScope already holds, against the full route.

Usage: .venv/bin/python bench/held_bench.py [--shard-size "64 MiB"] [--ssh/--no-ssh] [--dir DIR]

One route sandbox (sandbox/relayd_sandbox/route.py), one daemon, the route
download → pan_upload → vm_pull → ms_upload:

1. the sandbox's model (4 shards) relayed in full: nothing is held anywhere yet;
2. a second Hub repo with the same weights (``RouteSandbox.add_mirror``) to another ModelScope repo:
   the pre-check says ModelScope holds every shard, so every hop skips them.

For each: the time from ``relayctl add`` to the snapshot done (the poll included), the catalogue's span
from the first transfer's start to the last's end (route_bench.py's ``timed_relay`` measure), and
the payload bytes each hop moved for that repo (bytes_moved; the small files still travel).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from route_bench import wait_done
from sqlalchemy import func, select

from relayd.catalogue.schema import Repo, Transfer
from relayd.catalogue.store import Store
from relayd.units import format_size, parse_size
from relayd_sandbox.route import REPO, RouteSandbox

HOPS = ("download", "pan_upload", "vm_pull", "ms_upload")


def relay(box: RouteSandbox, name: str, target: str) -> tuple[float, dict[str, int]]:
    """Add *name* to go to *target*; return (seconds from add to done, payload bytes moved by hop)."""
    started = time.monotonic()
    result = box.relayctl(
        "add", name, "--route", ",".join(HOPS), "--every", "1h", "--modelscope-repo", target
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    wait_done(box, name)
    took = time.monotonic() - started
    store = Store(f"sqlite:///{box.root / 'state' / 'catalogue.db'}")
    try:
        with store.read() as session:
            rows = session.execute(
                select(Transfer.hop, func.sum(Transfer.bytes_moved))
                .join(Repo, Repo.id == Transfer.repo_id)
                .where(Repo.name == name)
                .group_by(Transfer.hop)
            ).all()
    finally:
        store.close()
    return took, {hop: int(moved or 0) for hop, moved in rows}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shard-size", default="64 MiB")
    parser.add_argument("--ssh", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    shard = parse_size(args.shard_size)
    root = args.dir or Path(tempfile.mkdtemp(prefix="relayd-held-bench-"))
    print(
        f"4 shards of {format_size(shard)}, VM over {'SSH' if args.ssh else 'the local executor'}; "
        f"load {os.getloadavg()}"
    )
    box = RouteSandbox(root, shards=4, shard_size=shard, ssh=args.ssh)
    box.start()
    daemon = box.start_daemon()
    try:
        full, moved = relay(box, REPO, REPO)
        print(
            f"full route:   {full:6.1f} s; moved "
            + ", ".join(f"{h} {format_size(moved.get(h, 0))}" for h in HOPS)
        )
        mirror, target = box.add_mirror()
        held, moved = relay(box, mirror, target)
        print(
            f"already held: {held:6.1f} s; moved "
            + ", ".join(f"{h} {format_size(moved.get(h, 0))}" for h in HOPS)
        )
        assert box.git is not None
        print(f"ModelScope received {format_size(box.git.counters().put_bytes)} in all (the full route's)")
    finally:
        box.stop_daemon(daemon)
        box.stop()
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
