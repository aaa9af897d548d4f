"""Benchmark claims on a shared PostgreSQL catalogue: 100,000 pending transfers, 4 workers claiming at once.

Starts a throwaway PostgreSQL (the sandbox's, Debian's initdb in a temporary directory), builds a
catalogue with Core bulk inserts: one repo per 1,000 files, each file with a pending transfer of one
hop and a random size (the claim takes the largest first). Then 4 worker processes, each with its own
Store (its own connection pool, as 4 daemons would have), claim transfers as fast as they can, each
claim timed from the call to its return. Every claimed id is checked to be unique across workers.

With ``--without-index`` the claim-order index (migration 0005) is dropped first, to show what it buys.

Goal (issue 17, docs/benchmarks.md): the median claim ≤ 20 ms. Exit status 1 if it is missed.

    .venv/bin/python bench/claim_bench.py [--transfers 100000] [--workers 4] [--claims 250]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import resource
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import Any

GOAL_MS = 20.0
HOP = "download"


def build(url: str, transfers: int, seed: int) -> None:
    """Create the schema and *transfers* pending transfers of HOP, in repos of 1,000 files."""
    from sqlalchemy import insert

    from relayd.catalogue import migrate
    from relayd.catalogue.db import make_engine
    from relayd.catalogue.schema import Blob, File, Repo, Snapshot, SnapshotFile, Transfer

    rng = random.Random(seed)
    engine = make_engine(url)
    migrate.ensure_schema(engine, auto_upgrade=False)
    now = datetime.now(UTC)
    repos = max(1, transfers // 1000)
    rows: dict[Any, list[dict[str, Any]]] = {
        table: [] for table in (Repo, Snapshot, Blob, File, SnapshotFile, Transfer)
    }
    for repo_id in range(1, repos + 1):
        rows[Repo].append(
            {
                "id": repo_id,
                "name": f"bench-org/model-{repo_id:04d}",
                "repo_type": "model",
                "revision": "main",
                "include": [],
                "exclude": [],
                "every": 3600.0,
                "route": [HOP],
                "destinations": {},
                "options": {},
                "paused": False,
                "poll_state": "ok",
                "created_at": now,
                "updated_at": now,
            }
        )
        rows[Snapshot].append(
            {
                "id": repo_id,
                "repo_id": repo_id,
                "commit": f"{repo_id:040x}",
                "state": "active",
                "file_count": 0,
                "total_bytes": 0,
                "seen_at": now,
            }
        )
    for file_id in range(1, transfers + 1):
        repo_id = (file_id - 1) % repos + 1
        size = rng.randrange(1, 5 << 30)
        rows[Blob].append({"id": file_id, "sha256": f"{file_id:064x}", "size": size})
        rows[File].append(
            {
                "id": file_id,
                "repo_id": repo_id,
                "blob_id": file_id,
                "path": f"shard-{file_id:06d}.safetensors",
                "size": size,
                "lfs": True,
                "sha256": f"{file_id:064x}",
            }
        )
        rows[SnapshotFile].append({"snapshot_id": repo_id, "file_id": file_id})
        rows[Transfer].append(
            {
                "repo_id": repo_id,
                "file_id": file_id,
                "hop": HOP,
                "step": 0,
                "state": "pending",
                "bytes_total": size,
                "handles": {},
                "created_at": now,
                "updated_at": now,
            }
        )
    with engine.begin() as connection:
        for table, batch in rows.items():
            for start in range(0, len(batch), 20_000):
                connection.execute(insert(table.__table__), batch[start : start + 20_000])
        connection.exec_driver_sql("ANALYZE")
    engine.dispose()


def worker(url: str, owner: str, claims: int, start: Any, results: Any) -> None:
    """Claim *claims* transfers once *start* is set; put (owner, ids, latencies in ms, the worker's CPU
    seconds) on *results*."""
    from relayd.catalogue.store import Store

    store = Store(url)
    store.claim(HOP, owner, lease=600, exclude=[-1])  # connect and warm the statement cache, untimed
    ids: list[int] = []
    latencies: list[float] = []
    start.wait()
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(claims):
        began = time.perf_counter()
        transfer = store.claim(HOP, owner, lease=600)
        latencies.append((time.perf_counter() - began) * 1000)
        if transfer is None:
            break
        ids.append(transfer.id)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    store.close()
    results.put((owner, ids, latencies, cpu))


def plan(url: str, log_file: Any) -> str:
    """Return PostgreSQL's plan of one claim (auto_explain, written to the server's log)."""
    from sqlalchemy import event

    from relayd.catalogue.store import Store

    store = Store(url)

    def explain(connection: Any, _record: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("LOAD 'auto_explain'")
            cursor.execute("SET auto_explain.log_min_duration = 0")
            cursor.execute("SET auto_explain.log_analyze = on")
        connection.commit()

    event.listen(store.engine, "connect", explain)
    before = log_file.read_text(errors="replace")
    store.claim(HOP, "plan", lease=1)
    store.close()
    logged = log_file.read_text(errors="replace")[len(before) :]
    plans = [part for part in logged.split("LOG:  duration:") if "FOR UPDATE" in part]
    return plans[0] if plans else logged


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transfers", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--claims", type=int, default=250, help="claims per worker")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--without-index", action="store_true", help="drop the claim-order index first")
    parser.add_argument("--plan", action="store_true", help="print the claim query's plan")
    args = parser.parse_args()

    from relayd_sandbox.postgres import ThrowawayPostgres

    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    with ThrowawayPostgres() as server:
        url = server.create_database("relayd_claim_bench")
        started = time.perf_counter()
        build(url, args.transfers, args.seed)
        print(
            f"built {args.transfers} pending transfers in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        if args.without_index:
            from sqlalchemy import create_engine

            engine = create_engine(url)
            with engine.begin() as connection:
                connection.exec_driver_sql("DROP INDEX ix_transfers_claim_order")
                connection.exec_driver_sql("ANALYZE transfers")
            engine.dispose()
        if args.plan:
            print(plan(url, server.log_file))
        context = multiprocessing.get_context("spawn")
        start = context.Event()
        results = context.Queue()
        processes = [
            context.Process(target=worker, args=(url, f"worker-{n}", args.claims, start, results))
            for n in range(args.workers)
        ]
        for process in processes:
            process.start()
        time.sleep(2)  # every worker connected and waiting
        began = time.perf_counter()
        start.set()
        found = [results.get(timeout=600) for _ in processes]
        wall = time.perf_counter() - began
        for process in processes:
            process.join(60)
    every_id = [transfer_id for _owner, ids, _latencies, _cpu in found for transfer_id in ids]
    latencies = sorted(ms for _owner, _ids, per, _cpu in found for ms in per)
    cpu_ms = sum(cpu for *_rest, cpu in found) * 1000 / max(1, len(every_id))
    assert len(every_id) == len(set(every_id)), "a transfer was claimed twice"
    median = statistics.median(latencies)
    p95 = latencies[int(len(latencies) * 0.95) - 1]
    index = "without the claim-order index" if args.without_index else "with the claim-order index"
    print(
        f"{args.workers} workers, {len(every_id)} claims of {args.transfers} pending transfers ({index}): "
        f"median {median:.1f} ms, p95 {p95:.1f} ms, max {latencies[-1]:.1f} ms; "
        f"{len(every_id) / wall:.0f} claims/s in all; {cpu_ms:.1f} ms of the worker's CPU per claim"
    )
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    met = median <= GOAL_MS
    print(f"goal (median ≤ {GOAL_MS:.0f} ms): {'met' if met else 'NOT MET'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
