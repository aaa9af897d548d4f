#!/usr/bin/env python3
"""Benchmark the download hop on the fake Hub against aria2c and hf_hub_download, over plain HTTP and over
TLS (docs/benchmarks.md, issue 19).

Everything runs on this machine against one fake Hub per scheme (started here) serving one generated
file from its CDN origin, plain or HTTPS with a certificate of the sandbox's throwaway CA: relayd runs
as `relayd run --once` at its defaults (`hub.ca_bundle` naming the CA), aria2c as `aria2c -x16 -s16`
(`--ca-certificate`), hf_hub_download in its own Python (`SSL_CERT_FILE`), each under /usr/bin/time -v.

    .venv/bin/python bench/download_bench.py                   # the full run (about 10 minutes)
    .venv/bin/python bench/download_bench.py --size 512MiB --big 0 --rounds 1   # a quick look

For each scheme (plain, tls) and each mode (capped: every connection limited to --cap bytes/s, 20 MB/s;
uncapped), --rounds rounds of aria2c and relayd (each round starting with the next of them), and one of
hf_hub_download (uncapped only unless --hf-capped: one connection at 20 MB/s takes minutes). Recorded
per run: the process's wall time, the transfer time (relayd: its transfer's started_at → finished_at in
the catalogue, i.e. metadata, pieces, hash verification, rename into staging; aria2c: its wall time;
hf_hub_download: the call, timed inside its process), CPU seconds (user + sys) per GiB, peak RSS and the
load average before the run. Then the CPU cost of sha1 + sha256 per GiB (what relayd computes and aria2c
does not), and relayd and aria2c fetching the --big file over TLS uncapped: relayd's peak RSS, and both
tools' CPU per GiB with their start-up spread over the big file. Results go to --results (JSON) and are
printed as Markdown.
"""

from __future__ import annotations

import argparse
import functools
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")

from installed import bench_env

from relayd.catalogue import migrate
from relayd.catalogue.schema import Transfer
from relayd.catalogue.store import RepoSpec, Store
from relayd.units import parse_size
from relayd_sandbox.hub import FakeHub, Generated
from relayd_sandbox.tls import ThrowawayCA

MiB = 1024 * 1024
GiB = 1024 * MiB
MB = 1000 * 1000
REPO = "bench/model"
BIG_REPO = "bench/big"
WARM_REPO = "bench/warm-up"
OTHER = "relayd, other checkout"
WEIGHTS = "model-00001-of-00001.safetensors"
BIN = Path(sys.executable).parent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the contenders ---------------------------------------------------------------------------------


def run_relayd(
    hub: FakeHub,
    work: Path,
    label: str,
    *,
    repo: str,
    size: int,
    connections: int | None = None,
    ca: Path | None = None,
    checkout: Path | None = None,
) -> dict[str, Any]:
    """Relay *repo* with `relayd run --once` (connections None = relayd's default; *ca* trusted through
    hub.ca_bundle; *checkout* another source tree of relayd to run instead of this one); return the
    result."""
    root = work / f"relayd-{label}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    config = root / "relayd.toml"
    hub_lines = [f'endpoint = "{hub.endpoint}"', 'token_env = "RELAYD_BENCH_NO_TOKEN"']
    if connections is not None:
        hub_lines.append(f"connections = {connections}")
    if ca is not None:
        hub_lines.append(f'ca_bundle = "{ca}"')
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
    env = bench_env(work, checkout)
    process = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
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
        "tool": "relayd" if checkout is None else "relayd-other",
        "label": label,
        "connections": connections,
        "seconds": seconds,
        "wall": wall,
        "MB/s": size / seconds / MB,
        "size": size,
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


def run_aria2c(url: str, work: Path, size: int, connections: int, ca: Path | None = None) -> dict[str, Any]:
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
        *([f"--ca-certificate={ca}"] if ca is not None else []),
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
        "wall": seconds,
        "MB/s": size / seconds / MB,
        "size": size,
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


def run_hf(hub: FakeHub, work: Path, size: int, ca: Path | None = None) -> dict[str, Any]:
    target = work / "hf"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    env = {
        **os.environ,  # huggingface_hub's .pyc files were written by pip
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(work / "hf-home"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    if ca is not None:
        env["SSL_CERT_FILE"] = str(ca)  # httpx's trust_env reads it
    load = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-c", HF_SCRIPT, hub.endpoint, REPO, WEIGHTS, str(target)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - started
    seconds = float(process.stdout.strip().splitlines()[-1])
    assert (target / WEIGHTS).stat().st_size == size
    shutil.rmtree(target, ignore_errors=True)
    return {
        "tool": "hf_hub_download",
        "label": "hf_hub_download",
        "connections": 1,
        "seconds": seconds,
        "wall": wall,
        "MB/s": size / seconds / MB,
        "size": size,
        "load": load,
        **time_v(process.stderr),
    }


# -- the run ----------------------------------------------------------------------------------------


def hash_cpu_per_gib(size: int) -> float:
    """Return the CPU seconds sha1 and sha256 cost per GiB (each alone in this thread, added: what
    relayd computes and aria2c does not), as CPU time, so a loaded machine does not inflate it."""
    block = memoryview(os.urandom(64 * MiB))
    rounds = max(1, size // len(block))
    cost = 0.0
    for name in ("sha1", "sha256"):
        digest = hashlib.new(name)
        started = time.thread_time()
        for _ in range(rounds):
            digest.update(block)
        cost += (time.thread_time() - started) / (rounds * len(block) / GiB)
    return cost


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("/work/bench-download"))
    parser.add_argument("--size", default="2 GiB", help="the benchmark file (default 2 GiB)")
    parser.add_argument("--big", default="8 GiB", help="the file for peak RSS and CPU, over TLS (0: skip)")
    parser.add_argument("--cap", type=float, default=20 * MB, help="bytes/s per connection (default 20 MB/s)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of aria2c and relayd per case")
    parser.add_argument("--schemes", default="plain,tls", help="which CDN schemes to run")
    parser.add_argument("--modes", default="capped,uncapped", help="which modes to run")
    parser.add_argument("--skip-hf", action="store_true", help="skip hf_hub_download")
    parser.add_argument("--hf-capped", action="store_true", help="run hf_hub_download capped too (slow)")
    parser.add_argument("--other", type=Path, help="another checkout of relayd to run in each round too")
    parser.add_argument(
        "--results", type=Path, default=Path("/tmp/download-bench-results.json"), help="where to write JSON"
    )
    args = parser.parse_args()
    size, big = parse_size(args.size), parse_size(args.big)
    work: Path = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ca = ThrowawayCA.create(work / "ca")
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
        "runs": [],
    }
    try:
        for scheme in args.schemes.split(","):
            trusted = ca.ca_cert if scheme == "tls" else None
            hub = FakeHub(work / f"hub-{scheme}", cdn_tls=ca.server_context if trusted else None).start()
            try:
                log(f"{scheme}: generating {size / MiB:.0f} MiB on the fake Hub (CDN {hub.cdn_url})")
                hub.create_repo(REPO, files={WEIGHTS: Generated(size, seed=1)})
                hub.create_repo(WARM_REPO, files={WEIGHTS: Generated(MiB, seed=3)})
                for checkout in [None, args.other] if args.other else [None]:  # each one's bytecode cache
                    run_relayd(hub, work, "warm-up", repo=WARM_REPO, size=MiB, ca=trusted, checkout=checkout)
                url = f"{hub.endpoint}/{REPO}/resolve/main/{WEIGHTS}"
                for mode in args.modes.split(","):
                    hub.bandwidth_cap = args.cap if mode == "capped" else None
                    case = {"scheme": scheme, "mode": mode}
                    contenders: list[Callable[[], dict[str, Any]]] = [
                        functools.partial(run_aria2c, url, work, size, 16, trusted),
                        functools.partial(
                            run_relayd, hub, work, "relayd, defaults", repo=REPO, size=size, ca=trusted
                        ),
                    ]
                    if args.other:
                        contenders.append(
                            functools.partial(
                                run_relayd,
                                hub,
                                work,
                                OTHER,
                                repo=REPO,
                                size=size,
                                ca=trusted,
                                checkout=args.other,
                            )
                        )
                    for round_number in range(args.rounds):
                        # Each round starts with the next contender: on this VM the cost of a run's
                        # page-cache writes depends on what ran just before it (docs/benchmarks.md).
                        shift = round_number % len(contenders)
                        rows = [run() for run in contenders[shift:] + contenders[:shift]]
                        for row in rows:
                            results["runs"].append({**row, **case})
                            log(f"  {scheme} {mode} {row['label']}: {_line(row)}")
                    if not args.skip_hf and (mode == "uncapped" or args.hf_capped):
                        row = {**run_hf(hub, work, size, trusted), **case}
                        results["runs"].append(row)
                        log(f"  {scheme} {mode} {row['label']}: {_line(row)}")
                if big and scheme == "tls":
                    hub.bandwidth_cap = None
                    log(f"peak RSS on {big / MiB:.0f} MiB over TLS")
                    hub.create_repo(BIG_REPO, files={WEIGHTS: Generated(big, seed=2)})
                    results["memory"] = run_relayd(hub, work, "rss", repo=BIG_REPO, size=big, ca=trusted)
                    memory = results["memory"]
                    log(f"  {_line(memory)}, peak RSS {memory['peak_rss_MiB']:.0f} MiB")
                    # The same big file through aria2c: CPU per GiB with start-up spread over 8 GiB.
                    big_url = f"{hub.endpoint}/{BIG_REPO}/resolve/main/{WEIGHTS}"
                    results["big_aria2c"] = run_aria2c(big_url, work, big, 16, trusted)
                    log(f"  aria2c: {_line(results['big_aria2c'])}")
            finally:
                hub.stop()
                shutil.rmtree(work / f"hub-{scheme}", ignore_errors=True)  # the generated files
        results["hash_cpu_per_GiB"] = hash_cpu_per_gib(min(size, GiB))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.results.write_text(json.dumps(results, indent=2))
    print(report(results))
    return 0


def _cpu(row: dict[str, Any]) -> float:
    """Return CPU seconds (user + sys) per GiB of the run."""
    return float((row.get("user_s", 0.0) + row.get("sys_s", 0.0)) / (row["size"] / GiB))


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['MB/s']:.0f} MB/s, transfer {row['seconds']:.2f} s, wall {row['wall']:.2f} s, "
        f"{_cpu(row):.2f} CPU-s/GiB (load {row.get('load', 0):.1f})"
    )


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


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(row[key] for row in rows)) if rows else float("nan")


def _summary(results: dict[str, Any]) -> list[str]:
    """Return the goals of issue 19 checked against the medians of each case."""
    lines = []
    runs = results["runs"]
    hashing = results.get("hash_cpu_per_GiB", 0.0)
    for scheme in ("plain", "tls"):
        for mode in ("capped", "uncapped"):
            case = [r for r in runs if r["scheme"] == scheme and r["mode"] == mode]
            relayd = [r for r in case if r["tool"] == "relayd"]
            aria = [r for r in case if r["tool"] == "aria2c"]
            if not relayd or not aria:
                continue
            transfer = _median(aria, "seconds") / _median(relayd, "seconds")
            wall = _median(aria, "wall") / _median(relayd, "wall")
            goal = 1.1 if mode == "capped" else 1.0
            cpu_r = statistics.median(_cpu(r) for r in relayd)
            cpu_a = statistics.median(_cpu(r) for r in aria)
            other = [r for r in case if r["tool"] == "relayd-other"]
            if other:
                lines.append(
                    f"{scheme}, {mode}: this checkout against the other: transfer time "
                    f"{_median(other, 'seconds') / _median(relayd, 'seconds'):.2f}×, CPU {cpu_r:.2f} vs "
                    f"{statistics.median(_cpu(r) for r in other):.2f} CPU-s/GiB"
                )
            lines.append(
                f"{scheme}, {mode}: throughput relayd/aria2c {transfer:.2f}× on transfer time "
                f"(goal ≥ {goal}×: {'met' if transfer >= goal else 'NOT MET'}), {wall:.2f}× on wall time "
                f"(goal ≥ 1.0×: {'met' if wall >= 1.0 else 'NOT MET'}); CPU {cpu_r:.2f} vs {cpu_a:.2f} "
                f"CPU-s/GiB, aria2c + hashes = {cpu_a + hashing:.2f} "
                f"({'met' if cpu_r <= cpu_a + hashing else 'NOT MET'})"
            )
    memory = results.get("memory")
    if memory:
        rss = memory["peak_rss_MiB"]
        lines.append(
            f"peak RSS on {results['big'] / MiB:.0f} MiB over TLS: {rss:.0f} MiB "
            f"(goal ≤ 150: {'met' if rss <= 150 else 'NOT MET'})"
        )
    big_aria = results.get("big_aria2c")
    if memory and big_aria:
        cpu_r, cpu_a = _cpu(memory), _cpu(big_aria)
        lines.append(
            f"{results['big'] / MiB:.0f} MiB over TLS, uncapped (start-up spread over the big file): "
            f"throughput relayd/aria2c {big_aria['seconds'] / memory['seconds']:.2f}× on transfer time, "
            f"{big_aria['wall'] / memory['wall']:.2f}× on wall time; CPU {cpu_r:.2f} vs {cpu_a:.2f} "
            f"CPU-s/GiB, aria2c + hashes = {cpu_a + hashing:.2f} "
            f"({'met' if cpu_r <= cpu_a + hashing else 'NOT MET'})"
        )
    return lines


def report(results: dict[str, Any]) -> str:
    """Return the results as Markdown tables."""
    lines = [
        f"file {results['size'] / MiB:.0f} MiB; cap {results['cap'] / MB:.0f} MB/s per connection; "
        f"{results['machine']['cpus']} CPUs ({results['machine']['cpu']}); load at start "
        f"{', '.join(f'{x:.2f}' for x in results['machine']['load_at_start'])}",
        "",
        "| scheme | mode | tool | transfer s | wall s | MB/s | CPU-s/GiB | peak RSS MiB | load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["runs"]:
        rss = row.get("peak_rss_MiB")
        lines.append(
            f"| {row['scheme']} | {row['mode']} | {row['label']} | {row['seconds']:.2f} | "
            f"{row['wall']:.2f} | {row['MB/s']:.0f} | {_cpu(row):.2f} | "
            f"{'' if rss is None else f'{rss:.0f}'} | {row.get('load', 0):.1f} |"
        )
    lines.append("")
    if "hash_cpu_per_GiB" in results:
        lines.append(f"sha1 + sha256: {results['hash_cpu_per_GiB']:.2f} CPU-s per GiB (each alone, added)")
    memory = results.get("memory")
    if memory:
        lines.append(
            f"peak RSS, {results['big'] / MiB:.0f} MiB file over TLS at defaults: "
            f"{memory['peak_rss_MiB']:.0f} MiB ({memory['MB/s']:.0f} MB/s, {_cpu(memory):.2f} CPU-s/GiB)"
        )
    lines += ["", *[f"- {line}" for line in _summary(results)]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
