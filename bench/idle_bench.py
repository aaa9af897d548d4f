"""Idle daemon CPU: 200 repos, nothing to move; relayd must stay under 1 % of one core.

Usage: .venv/bin/python bench/idle_bench.py [--repos 200] [--seconds 60]

Builds a catalogue of N local repos (one small file each), lets the daemon poll and copy them all,
then measures the daemon's CPU time (utime + stime from /proc) over an idle window.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relayd.catalogue import migrate
from relayd.catalogue.store import RepoSpec, Store


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def prepare(root: Path, repos: int, extra: str = "") -> tuple[Path, Store]:
    """Write a config (plus *extra* TOML) and a catalogue of *repos* local repos of one small file each
    under *root*; return the config's path and the catalogue."""
    config = root / "relayd.toml"
    config.write_text(
        f"""[daemon]
state_dir = "{root / "state"}"
[catalogue]
url = "sqlite:///{root / "catalogue.db"}"
[staging]
dir = "{root / "staging"}"
min_free = "0"
[local_copy]
source = "{root / "source"}"
dest = "{root / "dest"}"
{extra}"""
    )
    store = Store(f"sqlite:///{root / 'catalogue.db'}")
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    for index in range(repos):
        name = f"bench/repo{index:04d}"
        (root / "source" / name).mkdir(parents=True)
        (root / "source" / name / "config.json").write_text(f'{{"n": {index}}}')
        store.add_repo(RepoSpec(name=name, every=3600, route=("local_copy",)))
    return config, store


def relayed(store: Store, repos: int, timeout: float = 300) -> bool:
    """Wait until the daemon copied every repo's file; return whether it did within *timeout*."""
    from sqlalchemy import func, select

    from relayd.catalogue.schema import Transfer

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store.read() as session:
            done = session.scalar(select(func.count()).select_from(Transfer).where(Transfer.state == "done"))
        if done == repos:
            return True
        time.sleep(1)
    return False


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repos", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="relayd-idle-"))
    config, store = prepare(root, args.repos)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "relayd", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not relayed(store, args.repos):
            print("the daemon did not relay the repos in time", file=sys.stderr)
            return 1
        time.sleep(5)  # let the last polls settle
        start_cpu, start = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(args.seconds)
        used = cpu_seconds(daemon.pid) - start_cpu
        elapsed = time.monotonic() - start
        share = 100 * used / elapsed
        print(
            f"repos: {args.repos}, idle window: {elapsed:.0f}s, CPU: {used:.2f}s = {share:.2f}% of one core"
        )
        print("goal: < 1 % of one core:", "met" if share < 1 else "MISSED")
        return 0 if share < 1 else 1
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        store.close()


if __name__ == "__main__":
    sys.exit(main())
