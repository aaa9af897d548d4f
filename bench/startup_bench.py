#!/usr/bin/env python3
"""Time `relayd run --once` with nothing to do (a catalogue at head, no repo): the start-up a run pays
before its first byte, in wall time and CPU seconds (/usr/bin/time), several rounds (docs/benchmarks.md).

    .venv/bin/python bench/startup_bench.py                       # this checkout, 5 rounds
    .venv/bin/python bench/startup_bench.py --other /tmp/old-checkout   # interleaved with another
    .venv/bin/python bench/startup_bench.py --route download          # with a (paused) download-only repo

With --other, the rounds alternate between this checkout's relayd and the other checkout's (run with
PYTHONPATH pointing there), so a machine whose load changes treats both alike.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from installed import bench_env

BIN = Path(sys.executable).parent
CONFIG = """
[daemon]
state_dir = "{root}/state"
watch_config = false
[catalogue]
url = "sqlite:///{root}/catalogue.db"
[staging]
dir = "{root}/staging"
min_free = "0"
[hub]
endpoint = "http://127.0.0.1:9"
token_env = "RELAYD_BENCH_NO_TOKEN"
"""


def once(config: Path, checkout: Path | None) -> tuple[float, float]:
    """Return (wall s, user + sys s) of one `relayd run --once -c config`."""
    env = bench_env(config.parent, checkout)
    process = subprocess.run(
        ["/usr/bin/time", "-f", "%e %U %S", str(BIN / "relayd"), "run", "--once", "-c", str(config)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    wall, user, system = (float(x) for x in re.findall(r"[\d.]+", process.stderr.strip().splitlines()[-1]))
    return wall, user + system


def add_paused_repo(db: Path, route: tuple[str, ...]) -> None:
    """Add a paused repo with *route*: start-up sees the route, and no poll runs."""
    from relayd.catalogue.store import RepoSpec, Store

    store = Store(f"sqlite:///{db}")
    try:
        store.add_repo(RepoSpec(name="bench/startup", every=3600, route=route))
        store.set_paused("bench/startup", True)
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--other", type=Path, help="another checkout to interleave with (before/after)")
    parser.add_argument("--route", help="add a paused repo with this route (comma-separated hops)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        config = root / "relayd.toml"
        config.write_text(CONFIG.format(root=root))
        once(config, None)  # creates the catalogue, warms the page cache and the bytecode cache
        if args.route:
            add_paused_repo(root / "catalogue.db", tuple(args.route.split(",")))
        other = args.other
        if other:
            once(config, other)  # the other checkout's bytecode cache
        runs: dict[str, list[tuple[float, float]]] = {"this": [], "other": []}
        for _ in range(args.rounds):
            runs["this"].append(once(config, None))
            if other:
                runs["other"].append(once(config, other))
    print(f"load {os.getloadavg()[0]:.2f} at the end")
    for name, rows in runs.items():
        if rows:
            walls = ", ".join(f"{w:.2f}" for w, _ in rows)
            cpus = ", ".join(f"{c:.2f}" for _, c in rows)
            print(
                f"{name}: wall {walls} s (median {statistics.median(w for w, _ in rows):.2f}); "
                f"CPU {cpus} s (median {statistics.median(c for _, c in rows):.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
