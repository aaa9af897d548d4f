"""Benchmark the web face: what serving the page costs an idle daemon, and how fast a status answer is.

1. **Idle CPU** (goal: the page and API add < 1 % of one core to an idle daemon with 200 repos). Three
   daemons over three copies of the idle bench's catalogue (bench/idle_bench.py: 200 local repos, all
   relayed), measured over the same window so the machine's load weighs on each alike: one without
   [web], one with [web] and nobody looking, one with [web] and a client asking what the page asks
   (app.js: the summary every 2 s with If-None-Match, the throughput and avoided bytes every 10 s).
2. **Status answers** (goal: GET /api/v1/status for 100,000 files in 200 repos in ≤ 0.3 s, as
   `relayctl status` answers). The catalogue of bench/status_bench.py, served in process; each timed
   request follows a change to the catalogue, so the document is built anew (the cost of a page on a
   busy daemon); the kept document's answer and the 5,000-file repo are timed too.

    .venv/bin/python bench/web_bench.py [--dir DIR] [--seconds 60] [--runs 5] [--only idle|status]

Exit status 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests
from idle_bench import cpu_seconds, prepare, relayed
from status_bench import BIG_REPO, build, write_config

from relayd_sandbox._http import free_port

IDLE_GOAL = 1.0  # percent of one core, added by the web face
STATUS_GOAL = 0.3  # seconds


def page_client(url: str, stop: threading.Event) -> int:
    """Ask *url* what an open page asks until *stop*; return how many requests were made."""
    session = requests.Session()
    etags: dict[str, str] = {}
    asked = 0
    last_plot = 0.0
    while not stop.is_set():
        paths = ["status"]
        if time.monotonic() - last_plot >= 10:
            last_plot = time.monotonic()
            paths += ["throughput", "avoided"]
        for path in paths:
            headers = {"If-None-Match": etags[path]} if path in etags else {}
            answer = session.get(f"{url}api/v1/{path}", headers=headers, timeout=30)
            asked += 1
            if answer.status_code == 200 and "ETag" in answer.headers:
                etags[path] = answer.headers["ETag"]
        stop.wait(2)
    return asked


def idle(repos: int, seconds: float) -> bool:
    roots = {
        name: Path(tempfile.mkdtemp(prefix=f"relayd-web-idle-{name}-")) for name in ("off", "on", "page")
    }
    ports = {name: free_port() for name in ("on", "page")}
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    stores = []
    try:
        for name, root in roots.items():
            extra = f'[web]\nlisten = "127.0.0.1:{ports[name]}"\n' if name in ports else ""
            config, store = prepare(root, repos, extra)
            stores.append(store)
            daemons[name] = subprocess.Popen(
                [sys.executable, "-m", "relayd", "run", "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        if not all(relayed(store, repos) for store in stores):
            print("the daemons did not relay the repos in time", file=sys.stderr)
            return False
        time.sleep(5)  # let the last polls settle
        stop = threading.Event()
        counted: list[int] = []
        client = threading.Thread(
            target=lambda: counted.append(page_client(f"http://127.0.0.1:{ports['page']}/", stop))
        )
        client.start()
        load = os.getloadavg()
        start = {name: cpu_seconds(process.pid) for name, process in daemons.items()}
        began = time.monotonic()
        time.sleep(seconds)
        used = {name: cpu_seconds(process.pid) - start[name] for name, process in daemons.items()}
        elapsed = time.monotonic() - began
        stop.set()
        client.join()
        share = {name: 100 * value / elapsed for name, value in used.items()}
        print(
            f"idle daemons, {repos} repos each, over the same {elapsed:.0f} s (load at start {load[0]:.2f}):"
        )
        print(f"  without [web]              {used['off']:.2f} s CPU = {share['off']:.2f} % of one core")
        print(f"  [web], nobody looking      {used['on']:.2f} s CPU = {share['on']:.2f} %")
        page = f"{used['page']:.2f} s CPU = {share['page']:.2f} % ({counted[0]} requests)"
        print(f"  [web], a page open         {page}")
        added = max(share["on"], share["page"]) - share["off"]
        verdict = "met" if added < IDLE_GOAL else "NOT MET"
        print(f"  added by the web face: {added:.2f} % of one core (goal < {IDLE_GOAL} %): {verdict}")
        return added < IDLE_GOAL
    finally:
        for process in daemons.values():
            process.send_signal(signal.SIGTERM)
        for process in daemons.values():
            process.wait(60)
        for store in stores:
            store.close()


def timed(fetch: Callable[[], None], runs: int, before: Callable[[], None] | None = None) -> list[float]:
    """Return how long each of *runs* calls of *fetch* took, each after *before*."""
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        started = time.perf_counter()
        fetch()
        times.append(time.perf_counter() - started)
    return times


def status(directory: Path, runs: int) -> bool:
    from relayd.catalogue.store import Store
    from relayd.config import load_config
    from relayd.web.server import serve
    from relayd.web.throughput import Throughput

    directory.mkdir(parents=True, exist_ok=True)
    database = directory / "catalogue.db"
    if not database.exists():
        build(f"sqlite:///{database}", repos=200, files=100_000, big=5_000, history=0.2, seed=1)
    config_path = write_config(directory)
    config_path.write_text(config_path.read_text() + '[web]\nlisten = "127.0.0.1:0"\n')
    config = load_config(config_path)
    store = Store(config.catalogue.url)
    server = serve(config, store, Throughput())
    server.app.documents.min_age = 0  # every request after a change builds the document again
    session = requests.Session()
    counter = iter(range(1_000_000))

    def change() -> None:
        store.publish("bench", {"n": next(counter)})

    def get(path: str, **headers: str) -> None:
        answer = session.get(f"{server.url}api/v1/{path}", headers=headers, timeout=60)
        answer.raise_for_status()
        answer.content  # noqa: B018 - read the whole body

    try:
        get("status")  # warm the caches, as a daemon that has run a while has them
        cases = {
            "status (built anew)": (lambda: get("status"), change, STATUS_GOAL),
            "status (kept)": (lambda: get("status"), None, None),
            f"status/{BIG_REPO} (built anew)": (lambda: get(f"status/{BIG_REPO}"), change, None),
            f"status/{BIG_REPO} gzip (built anew)": (
                lambda: get(f"status/{BIG_REPO}", **{"Accept-Encoding": "gzip"}),
                change,
                None,
            ),
            "avoided (built anew)": (lambda: get("avoided"), change, None),
        }
        load = os.getloadavg()
        print(f"status answers over HTTP, 100,000 files in 200 repos (load at start {load[0]:.2f}):")
        met = True
        for label, (fetch, before, goal) in cases.items():
            times = timed(fetch, runs, before)
            median = statistics.median(times)
            verdict = "" if goal is None else ("met" if median <= goal else "NOT MET")
            met = met and (goal is None or median <= goal)
            shown = " ".join(f"{t:.3f}" for t in times)
            print(f"  {label:<44} median {median:.3f} s  ({shown})  {verdict}")
        return met
    finally:
        server.stop()
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, help="where status_bench's catalogue is built (kept; reused)")
    parser.add_argument("--repos", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=("idle", "status"))
    args = parser.parse_args()
    met = True
    if args.only in (None, "status"):
        met = status(args.dir or Path(tempfile.mkdtemp(prefix="relayd-web-status-")), args.runs) and met
    if args.only in (None, "idle"):
        met = idle(args.repos, args.seconds) and met
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
