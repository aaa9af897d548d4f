"""ms_upload: a blob PUT from staging against ``curl -T`` to the same fake, and the agent's memory.

Usage: .venv/bin/python bench/ms_bench.py [--size "2 GiB"] [--rss-size "8 GiB"] [--rounds 3] [--dir /work]

One sandbox git + LFS server (with ModelScope's HTTP API, sandbox/relayd_sandbox/ms_api.py) runs in its
own process on 127.0.0.1 (lfs_bench.py's ServerProcess). Per round, to a fresh repository (the
server's copy of the blob is dropped between rounds, so the pre-check always says "send it"):

1. relayd: the agent's ``ms_blobs`` through the local executor, as the hop runs it from staging
   (agent start, pre-check, one streamed PUT guarded by size/mtime/inode);
2. curl: one ``curl -T FILE`` PUT of the same file to the same href, with the session cookie (from a
   header file, never argv).

Throughput is file bytes / wall time for each; rounds alternate which side goes first and the median
ratio is reported (the machine is shared). Then the agent alone (``python -m relayd.vm.agent``, as the
executors start it) uploads a --rss-size file under ``/usr/bin/time``; its peak RSS is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lfs_bench import ServerProcess, make_model

from relayd.config import parse_config
from relayd.units import format_size, parse_size
from relayd.vm.executor import LocalExecutor, local_executor

OWNER = "bench"
ROOT = Path(__file__).resolve().parents[1]


def relayd_put(
    executor: LocalExecutor, server: ServerProcess, repo: str, path: Path, oid: str, size: int
) -> float:
    params = {
        "endpoint": server.base_url,
        "repo": f"{OWNER}/{repo}",
        "objects": [{"oid": oid, "size": size, "path": str(path)}],
        "verify": "stat",
    }
    started = time.monotonic()
    result = executor.call("ms_blobs", params, secrets={"token": server.token})
    took = time.monotonic() - started
    assert result["objects"][0]["sent"] == size, result
    return took


def curl_put(server: ServerProcess, repo: str, path: Path, oid: str, headers: Path) -> float:
    href = f"{server.base_url}/api/v1/repos/models/{OWNER}/{repo}/info/lfs/objects/{oid}"
    started = time.monotonic()
    subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-H", f"@{headers}", "-T", str(path), href], check=True
    )
    return time.monotonic() - started


def agent_rss(server: ServerProcess, path: Path, oid: str, size: int) -> tuple[int, float]:
    """Upload *path* with the agent alone under /usr/bin/time; return (peak RSS in KiB, seconds)."""
    server.new_repo(OWNER, "rss")
    request = {
        "op": "ms_blobs",
        "params": {
            "endpoint": server.base_url,
            "repo": f"{OWNER}/rss",
            "objects": [{"oid": oid, "size": size, "path": str(path)}],
            "verify": "stat",
        },
        "secrets": {"token": server.token},
    }
    with tempfile.NamedTemporaryFile("r") as report:
        started = time.monotonic()
        # The agent's stdin stays open until its result: its end means "the link died".
        child = subprocess.Popen(
            ["/usr/bin/time", "-f", "%M", "-o", report.name, sys.executable, "-m", "relayd.vm.agent"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(json.dumps(request) + "\n")
        child.stdin.flush()
        last: dict[str, object] = {}
        for line in child.stdout:
            last = json.loads(line)
            if last.get("event") == "result":
                break
        child.stdin.close()
        child.wait(60)
        took = time.monotonic() - started
        assert last.get("ok"), last
        return int(report.read().strip().splitlines()[-1]), took


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="2 GiB")
    parser.add_argument("--rss-size", default="8 GiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    size, rss_size = parse_size(args.size), parse_size(args.rss_size)
    work = Path(tempfile.mkdtemp(prefix="ms-bench-", dir=args.dir))
    server = ServerProcess(work / "server")
    config = parse_config(
        {"daemon": {"state_dir": str(work / "state")}, "vm": {"executor": "local", "root": str(work / "vm")}},
        work / "relayd.toml",
    )
    executor = local_executor(config.vm)
    headers = work / "headers"
    headers.write_text(f"Cookie: m_session_id={server.token}\n")
    headers.chmod(0o600)
    try:
        files = make_model(work / "staging", size, 1)
        [(name, (oid, real_size))] = [(k, v) for k, v in files.items()]
        path = work / "staging" / name
        ours: list[float] = []
        theirs: list[float] = []
        repo = "model"
        server.new_repo(OWNER, repo)
        for number in range(args.rounds):
            order = ("relayd", "curl") if number % 2 == 0 else ("curl", "relayd")
            for side in order:
                server.drop_objects(OWNER, repo)
                if side == "relayd":
                    ours.append(real_size / relayd_put(executor, server, repo, path, oid, real_size))
                else:
                    theirs.append(real_size / curl_put(server, repo, path, oid, headers))
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        mib = 1024 * 1024
        print(f"file {format_size(real_size)}; load {os.getloadavg()}")
        print("relayd ms_blobs MiB/s:", " / ".join(f"{r / mib:.0f}" for r in ours))
        print("curl -T MiB/s:        ", " / ".join(f"{r / mib:.0f}" for r in theirs))
        print(f"ratio median {statistics.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)})")
        path.unlink()
        server.drop_objects(OWNER, repo)
        big = make_model(work / "big", rss_size, 1)
        [(big_name, (big_oid, big_size))] = [(k, v) for k, v in big.items()]
        peak, took = agent_rss(server, work / "big" / big_name, big_oid, big_size)
        print(f"agent peak RSS for {format_size(big_size)}: {peak / 1024:.1f} MiB ({took:.0f} s)")
    finally:
        executor.close()
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
