#!/usr/bin/env python3
"""Benchmark the download hop on the fake Hub against aria2c and hf_hub_download (docs/benchmarks.md).

Everything runs in one process tree on this machine, against one fake Hub (started here) serving one
generated file: relayd runs as `relayd run --once` in a subprocess (so /usr/bin/time sees only relayd),
aria2c and hf_hub_download run as subprocesses too.

    .venv/bin/python bench/download_bench.py                       # the full run (about 6 minutes)
    .venv/bin/python bench/download_bench.py --size 256MiB --big 1GiB --skip-hf   # a quick look

Measured:
  capped    each connection limited to --cap bytes/s (20 MB/s): aria2c -x N -s N, relayd at N
            connections for a sweep of N, relayd at its defaults, hf_hub_download (HF_HUB_DISABLE_XET=1)
  uncapped  the disk's write rate (write + fsync), the sha1+sha256 hashing rate (two threads, as relayd
            hashes), relayd at a sweep of connection counts and at its defaults, aria2c -x 16
  memory    peak RSS of relayd downloading the --big file at its defaults (/usr/bin/time -v)

relayd's time is its transfer's started_at → finished_at in the catalogue (metadata, pieces, hash
verification, rename into staging); aria2c's is its process's wall time; hf_hub_download's is the call
itself, timed inside its process. Results go to --results (JSON) and are printed as Markdown.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")

from relayd.catalogue import migrate
from relayd.catalogue.schema import Transfer
from relayd.catalogue.store import RepoSpec, Store
from relayd.digest import PrefixHasher
from relayd.units import parse_size
from relayd_sandbox.hub import FakeHub, Generated

MiB = 1024 * 1024
MB = 1000 * 1000
REPO = "bench/model"
BIG_REPO = "bench/big"
WEIGHTS = "model-00001-of-00001.safetensors"
BIN = Path(sys.executable).parent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- references -------------------------------------------------------------------------------------


def disk_write_rate(directory: Path, size: int) -> float:
    """Return bytes/s for writing *size* bytes of incompressible data to a file and fsyncing it."""
    block = os.urandom(64 * MiB)
    path = directory / "disk-write-test"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        started = time.perf_counter()
        written = 0
        while written < size:
            written += os.write(fd, memoryview(block)[: min(len(block), size - written)])
        os.fsync(fd)
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
        path.unlink()
    return size / elapsed


def hash_rates(size: int) -> dict[str, float]:
    """Return bytes/s for sha1+sha256 as relayd computes them (PrefixHasher: one thread per hash),
    and for each hash alone."""
    block = memoryview(os.urandom(64 * MiB))
    rounds = max(1, size // len(block))
    hasher = PrefixHasher(rounds * len(block))
    started = time.perf_counter()
    for _ in range(rounds):
        hasher.update(block)
    both = rounds * len(block) / (time.perf_counter() - started)
    hasher.close()
    rates = {"sha1+sha256 (PrefixHasher, 2 threads)": both}
    for name in ("sha256", "sha1"):
        digest = hashlib.new(name)
        started = time.perf_counter()
        for _ in range(max(1, rounds // 4)):
            digest.update(block)
        rates[f"{name} alone"] = max(1, rounds // 4) * len(block) / (time.perf_counter() - started)
    return rates


# -- the contenders ---------------------------------------------------------------------------------


def run_relayd(
    hub: FakeHub,
    work: Path,
    label: str,
    *,
    repo: str,
    size: int,
    connections: int | None = None,
) -> dict[str, Any]:
    """Relay *repo* with `relayd run --once` (connections None = relayd's default); return the result."""
    root = work / f"relayd-{label}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    config = root / "relayd.toml"
    hub_lines = [f'endpoint = "{hub.endpoint}"', 'token_env = "RELAYD_BENCH_NO_TOKEN"']
    if connections is not None:
        hub_lines.append(f"connections = {connections}")
    config.write_text(
        f"""
[daemon]
state_dir = "{root / "state"}"
watch_config = false
poll_jitter = "0s"
[catalogue]
url = "sqlite:///{root / "catalogue.db"}"
[staging]
dir = "{root / "staging"}"
max_bytes = "1 TB"
min_free = "0"
[hub]
{chr(10).join(hub_lines)}
"""
    )
    store = Store(f"sqlite:///{root / 'catalogue.db'}")
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    store.add_repo(RepoSpec(name=repo, every=3600, route=("download",), include=(WEIGHTS,)))
    command = ["/usr/bin/time", "-v", str(BIN / "relayd"), "run", "--once", "-c", str(config)]
    command += ["--log-level", "warning"]
    load = os.getloadavg()[0]
    served = hub.bytes_served()
    started = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    with store.read() as session:
        transfer = session.query(Transfer).one()
        state, error = transfer.state, transfer.last_error
        assert transfer.started_at is not None and transfer.finished_at is not None, (state, error)
        seconds = (transfer.finished_at - transfer.started_at).total_seconds()
    store.close()
    if process.returncode != 0 or state != "done":
        raise RuntimeError(f"relayd {label} failed ({state}: {error}):\n{process.stderr[-3000:]}")
    result: dict[str, Any] = {
        "tool": "relayd",
        "label": label,
        "connections": connections,
        "seconds": seconds,
        "wall": wall,
        "MB/s": size / seconds / MB,
        "served_MiB": (hub.bytes_served() - served) / MiB,
        "load": load,
        **time_v(process.stderr),
    }
    shutil.rmtree(root, ignore_errors=True)
    return result


def time_v(stderr: str) -> dict[str, float]:
    """Return peak RSS (MiB) and CPU seconds from /usr/bin/time -v's report."""
    found: dict[str, float] = {}
    for key, pattern, scale in (
        ("peak_rss_MiB", r"Maximum resident set size \(kbytes\): (\d+)", 1 / 1024),
        ("user_s", r"User time \(seconds\): ([\d.]+)", 1.0),
        ("sys_s", r"System time \(seconds\): ([\d.]+)", 1.0),
    ):
        match = re.search(pattern, stderr)
        if match:
            found[key] = float(match.group(1)) * scale
    return found


def run_aria2c(url: str, work: Path, size: int, connections: int) -> dict[str, Any]:
    target = work / "aria2c"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    command = [
        "/usr/bin/time",
        "-v",
        "aria2c",
        "-x",
        str(connections),
        "-s",
        str(connections),
        "--file-allocation=falloc",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "--console-log-level=warn",
        "--summary-interval=0",
        "--download-result=hide",
        "-d",
        str(target),
        "-o",
        "out.bin",
        url,
    ]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    assert (target / "out.bin").stat().st_size == size
    shutil.rmtree(target, ignore_errors=True)
    return {
        "tool": "aria2c",
        "label": f"aria2c -x {connections} -s {connections}",
        "connections": connections,
        "seconds": seconds,
        "MB/s": size / seconds / MB,
        "load": load,
        **time_v(process.stderr),
    }


HF_SCRIPT = """
import sys, time
from huggingface_hub import hf_hub_download
endpoint, repo, filename, local_dir = sys.argv[1:5]
started = time.perf_counter()
hf_hub_download(repo, filename, endpoint=endpoint, local_dir=local_dir, token=False)
print(time.perf_counter() - started)
"""


def run_hf(hub: FakeHub, work: Path, size: int) -> dict[str, Any]:
    target = work / "hf"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    env = {
        **os.environ,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(work / "hf-home"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    process = subprocess.run(
        [sys.executable, "-c", HF_SCRIPT, hub.endpoint, REPO, WEIGHTS, str(target)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = float(process.stdout.strip().splitlines()[-1])
    assert (target / WEIGHTS).stat().st_size == size
    shutil.rmtree(target, ignore_errors=True)
    return {
        "tool": "hf_hub_download",
        "label": "hf_hub_download",
        "connections": 1,
        "seconds": seconds,
        "MB/s": size / seconds / MB,
    }


# -- the run ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("/work/bench-download"))
    parser.add_argument("--size", default="2 GiB", help="the benchmark file (default 2 GiB)")
    parser.add_argument("--big", default="8 GiB", help="the file for peak RSS (default 8 GiB)")
    parser.add_argument("--cap", type=float, default=20 * MB, help="bytes/s per connection (default 20 MB/s)")
    parser.add_argument("--sweep", default="1,4,8,16,32", help="connection counts to try")
    parser.add_argument("--skip-hf", action="store_true", help="skip hf_hub_download (slow when capped)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the head-to-head runs")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument(
        "--results", type=Path, default=Path("/tmp/download-bench-results.json"), help="where to write JSON"
    )
    args = parser.parse_args()
    size, big = parse_size(args.size), parse_size(args.big)
    sweep = [int(n) for n in args.sweep.split(",")]
    work: Path = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": _cpu_name(),
            "python": platform.python_version(),
            "load_at_start": os.getloadavg(),
            "aria2c": _version(["aria2c", "--version"]),
        },
        "size": size,
        "big": big,
        "cap": args.cap,
    }
    hub = FakeHub(work / "hub").start()
    try:
        log(f"generating {size / MiB:.0f} MiB and {big / MiB:.0f} MiB files on the fake Hub")
        hub.create_repo(REPO, files={WEIGHTS: Generated(size, seed=1)})
        hub.create_repo(BIG_REPO, files={WEIGHTS: Generated(big, seed=2)})
        url = f"{hub.endpoint}/{REPO}/resolve/main/{WEIGHTS}"

        def relayd(label: str, connections: int | None = None) -> dict[str, Any]:
            result = run_relayd(hub, work, label, repo=REPO, size=size, connections=connections)
            log(f"  {label}: {result['MB/s']:.0f} MB/s (load {result['load']:.1f})")
            return result

        def aria2c(label: str) -> dict[str, Any]:
            result = run_aria2c(url, work, size, 16)
            log(f"  {label}: {result['MB/s']:.0f} MB/s (load {result['load']:.1f})")
            return result

        log("uncapped (with the disk's write rate and the hashing rate measured in every round)")
        results["uncapped_sweep"] = [relayd(f"relayd, {n} connections", n) for n in sweep]
        results["uncapped"] = []
        results["disk_write_Bps"] = []
        results["hash_Bps"] = []
        for _ in range(args.repeat):
            results["disk_write_Bps"].append(disk_write_rate(work, size))
            results["hash_Bps"].append(hash_rates(size))
            log(
                f"  disk {results['disk_write_Bps'][-1] / MB:.0f} MB/s, hashing "
                f"{next(iter(results['hash_Bps'][-1].values())) / MB:.0f} MB/s"
            )
            results["uncapped"].append(relayd("relayd, defaults"))
            results["uncapped"].append(aria2c("aria2c -x 16 -s 16"))

        log(f"peak RSS on {big / MiB:.0f} MiB")
        results["memory"] = run_relayd(hub, work, "rss", repo=BIG_REPO, size=big)
        log(f"  {results['memory']['peak_rss_MiB']:.0f} MiB at {results['memory']['MB/s']:.0f} MB/s")

        log(f"capped at {args.cap / MB:.0f} MB/s per connection")
        hub.bandwidth_cap = args.cap
        results["capped_sweep"] = [relayd(f"relayd, {n} connections", n) for n in sweep if n not in (1, 16)]
        results["capped"] = []
        for _ in range(args.repeat):
            results["capped"].append(aria2c("aria2c -x 16 -s 16"))
            results["capped"].append(relayd("relayd, 16 connections", 16))
            results["capped"].append(relayd("relayd, defaults"))
        if not args.skip_hf:
            results["capped"].append(run_hf(hub, work, size))
            log(f"  hf_hub_download: {results['capped'][-1]['MB/s']:.0f} MB/s")
    finally:
        hub.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    args.results.write_text(json.dumps(results, indent=2))
    print(report(results))
    return 0


def _version(command: list[str]) -> str:
    process = subprocess.run(command, check=False, capture_output=True, text=True)
    return process.stdout.split("\n")[0]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _median_rate(rows: list[dict[str, Any]], label: str) -> float:
    return float(statistics.median(row["MB/s"] for row in rows if row["label"] == label))


def _summary(results: dict[str, Any]) -> list[str]:
    """Return the goals of issue #3 checked against the medians."""
    lines = []
    capped = results.get("capped", [])
    relayd16 = _median_rate(capped, "relayd, 16 connections")
    aria = _median_rate(capped, "aria2c -x 16 -s 16")
    defaults = _median_rate(capped, "relayd, defaults")
    lines.append(
        f"capped: relayd at 16 connections / aria2c -x 16 -s 16 = {relayd16 / aria:.2f}× (goal ≥ 1.0×)"
    )
    hf = [row["MB/s"] for row in capped if row["tool"] == "hf_hub_download"]
    if hf:
        lines.append(
            f"capped: relayd at its defaults / hf_hub_download = {defaults / hf[0]:.1f}× (goal ≥ 5×)"
        )
    uncapped = _median_rate(results["uncapped"], "relayd, defaults")
    disk = statistics.median(results["disk_write_Bps"]) / MB
    hashing = statistics.median(next(iter(r.values())) for r in results["hash_Bps"]) / MB
    lower = min(disk, hashing)
    lines.append(
        f"uncapped: relayd at its defaults {uncapped:.0f} MB/s = {uncapped / lower:.0%} of "
        f"min(disk {disk:.0f}, hashing {hashing:.0f}) MB/s (goal ≥ 80 %)"
    )
    memory = results.get("memory")
    if memory:
        lines.append(
            f"peak RSS on {results['big'] / MiB:.0f} MiB: {memory['peak_rss_MiB']:.0f} MiB (goal ≤ 150)"
        )
    return lines


def report(results: dict[str, Any]) -> str:
    """Return the results as Markdown tables."""
    lines = [f"file {results['size'] / MiB:.0f} MiB; cap {results['cap'] / MB:.0f} MB/s per connection", ""]
    header = [
        "| run | seconds | MB/s | CPU user+sys s | peak RSS MiB | load |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for title, key in (
        ("capped, head to head", "capped"),
        ("capped, connection sweep", "capped_sweep"),
        ("uncapped, head to head", "uncapped"),
        ("uncapped, connection sweep", "uncapped_sweep"),
    ):
        lines += [f"**{title}**", "", *header]
        for row in results.get(key, []):
            cpu = row.get("user_s", 0.0) + row.get("sys_s", 0.0)
            rss = row.get("peak_rss_MiB")
            lines.append(
                f"| {row['label']} | {row['seconds']:.2f} | {row['MB/s']:.0f} | {cpu:.1f} | "
                f"{'' if rss is None else f'{rss:.0f}'} | {row.get('load', 0):.1f} |"
            )
        lines.append("")
    disk = statistics.median(results["disk_write_Bps"])
    lines.append(
        f"disk write (write + fsync of the file's size), per round: "
        f"{', '.join(f'{rate / MB:.0f}' for rate in results['disk_write_Bps'])} MB/s (median {disk / MB:.0f})"
    )
    for name in results["hash_Bps"][0]:
        rates = [round_[name] for round_ in results["hash_Bps"]]
        lines.append(
            f"{name}, per round: {', '.join(f'{rate / MB:.0f}' for rate in rates)} MB/s "
            f"(median {statistics.median(rates) / MB:.0f})"
        )
    memory = results.get("memory")
    if memory:
        lines.append(
            f"peak RSS, {results['big'] / MiB:.0f} MiB file at defaults: {memory['peak_rss_MiB']:.0f} MiB "
            f"({memory['MB/s']:.0f} MB/s)"
        )
    lines += ["", *[f"- {line}" for line in _summary(results)]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
