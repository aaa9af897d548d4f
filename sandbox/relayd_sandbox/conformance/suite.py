"""The conformance suite: what every hop must do, checked against its real servers.

Subclass ``HopConformance`` in a test module and give it a ``bench`` fixture (``open_bench`` for a
``Case``); pytest collects its tests for each case. Each test starts from a catalogue whose
transfers of the hop are pending (the harness's ``seed``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from relayd.catalogue.schema import BLOCKED, DONE, PENDING
from relayd.hops.base import MISMATCHES, Job, Outcome
from relayd_sandbox.conformance.bench import RUN_TIMEOUT, Bench, PieceRow
from relayd_sandbox.conformance.harness import Fixture
from relayd_sandbox.conformance.registry import DRIVE_GROUP, HOP_GROUP, Case, drive_harness, hop_harness
from relayd_sandbox.conformance.running import Built, load

INTEGRITY = "integrity"


@contextmanager
def open_bench(case: Case, fixture: Fixture, root: Path) -> Iterator[Bench]:
    """Yield a seeded bench for *case* under *root*; *fixture* gives pytest fixtures by name
    (``request.getfixturevalue``). Fail, saying how to register one, when a harness is missing."""
    target = hop_harness(case.hop)
    if target is None:
        pytest.fail(
            f"hop {case.hop!r} is registered but has no conformance harness: add one to "
            f"relayd_sandbox.conformance.registry.HOP_HARNESSES, or to the entry-point group {HOP_GROUP!r} "
            "(sandbox/README.md, 'Conformance kit')"
        )
    drive_class = None
    if case.backend is not None:
        drive_target = drive_harness(case.backend)
        if drive_target is None:
            pytest.fail(
                f"drive backend {case.backend!r} has no conformance harness: add one to "
                f"relayd_sandbox.conformance.registry.DRIVE_HARNESSES, or to the entry-point group "
                f"{DRIVE_GROUP!r} (sandbox/README.md, 'Conformance kit')"
            )
        drive_class = load(drive_target)
    bench = Bench(root, load(target), fixture, drive_class)
    try:
        bench.harness.seed(bench.files)
        yield bench
    finally:
        bench.close()


def location(bench: Bench, outcome: Outcome) -> dict[str, Any]:
    """Return the handles of *outcome* that name the verified copy."""
    return {key: outcome.handles.get(key) for key in bench.harness.location_keys}


def by_hand(bench: Bench, built: Built) -> list[tuple[int, Outcome, Outcome]]:
    """Run each pending transfer through the contract's calls, the way the engine and a crash would:
    plan twice (the plans must agree), move, lose the record of every piece and move again (a crash
    between a durable piece and its record), verify, verify again from a job rebuilt from the
    catalogue (a crash between verify and done; no payload byte may move), and record it done.
    Return (transfer id, first outcome, second outcome) for each."""
    store, hop, ctx = bench.store, built.hop, built.ctx
    results = []
    skipped: list[int] = []  # a snapshot-level transfer (a hop that finishes snapshots) is not a file's
    while (claimed := store.claim(bench.hop, ctx.owner, 600, exclude=skipped)) is not None:
        job = Job(store.load_job(claimed.id), ctx)
        if job.file is None:
            store.release(claimed.id, ctx.owner)
            skipped.append(claimed.id)
            continue
        plan = list(hop.plan(job))
        assert list(hop.plan(job)) == plan, f"{bench.hop}: two plans of one transfer differ"
        job.replan(plan, job.file_or_fail.size)
        hop.move(job, [piece for piece in job.pieces if not piece.done])
        store.reset_pieces(claimed.id)
        again = Job(store.load_job(claimed.id), ctx)
        hop.move(again, list(again.pieces))
        outcome = hop.verify(again)
        before = bench.harness.received()
        second = hop.verify(Job(store.load_job(claimed.id), ctx))
        assert bench.harness.received() == before, f"{bench.hop}: verifying a verified copy moved payload"
        store.complete(
            claimed.id,
            ctx.owner,
            outcome.handles,
            sha256=outcome.sha256,
            sha1=outcome.sha1,
            staged_path=outcome.staged_path,
        )
        results.append((claimed.id, outcome, second))
    assert results, f"{bench.hop}: nothing to run"
    return results


def assert_arrived(bench: Bench) -> None:
    """Assert that every transfer of the hop is done and every file whole at its destination."""
    rows = bench.transfers()
    assert rows and all(row.state == DONE for row in rows), rows
    for path, data in bench.files.items():
        assert bench.harness.fetch(path) == data, f"{bench.hop}: {path} is not whole at the destination"


def bytes_left(bench: Bench, pieces: list[PieceRow]) -> int:
    """Return the bytes of the files not yet recorded durable: what a resume may move."""
    return sum(len(data) for data in bench.files.values()) - sum(p.length for p in pieces if p.done)


def assert_resumed(bench: Bench, before: list[PieceRow], received: int | None) -> None:
    """After a resume: all arrived; no piece durable before it was sent again, by the catalogue's
    count of sends and, where there is a server, by the bytes it took in."""
    assert_arrived(bench)
    after = {(p.transfer_id, p.index): p.sends for p in bench.pieces()}
    again = [
        (p.transfer_id, p.index) for p in before if p.done and after.get((p.transfer_id, p.index)) != p.sends
    ]
    assert not again, f"{bench.hop}: pieces durable before the resume were sent again: {again}"
    now = bench.harness.received()
    if received is not None and now is not None:
        left = bytes_left(bench, before)
        assert now - received <= left, (
            f"{bench.hop}: the server took in {now - received} bytes after the resume; only {left} "
            "were not durable yet"
        )


class HopConformance:
    """The tests every hop passes (``bench``: a fixture yielding ``open_bench(case, ...)``)."""

    def test_plan_move_verify_are_idempotent(self, bench: Bench) -> None:
        with bench.started() as built:
            results = by_hand(bench, built)
        for transfer_id, first, second in results:
            assert location(bench, second) == location(bench, first), (transfer_id, first, second)
            assert all(value is not None for value in location(bench, first).values()), first
        assert_arrived(bench)

    @pytest.mark.parametrize("kill", ["first", "last"])
    def test_kill_9_at_a_piece_resumes_without_sending_done_pieces_again(
        self, bench: Bench, kill: str
    ) -> None:
        bench.run_killed(kill)
        before = bench.pieces()
        assert any(p.done for p in before), f"{bench.hop}: the killed run recorded no durable piece"
        assert not bench.all_done()
        received = bench.harness.received()
        bench.run()
        assert_resumed(bench, before, received)

    def test_cancelled_leaves_the_transfer_pending(self, bench: Bench) -> None:
        started: list[Built] = []
        cancelled: list[int] = []
        lock = threading.Lock()

        def stop(transfer_id: int) -> None:  # what a daemon's drain does: stop claiming, set cancel
            with lock:
                if not cancelled:
                    cancelled.append(transfer_id)
                    started[0].engine.stop_claiming()
                    started[0].ctx.cancel.set()

        with bench.started(bench.port(stop)) as built:
            started.append(built)
            built.engine.run_until_idle(timeout=RUN_TIMEOUT)
            deadline = time.monotonic() + RUN_TIMEOUT
            while built.engine.running_count() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not built.engine.running_count(), f"{bench.hop}: the hop did not stop when cancelled"
        rows = {row.id: row for row in bench.transfers()}
        assert cancelled, f"{bench.hop}: no piece was recorded before the cancel"
        stopped = rows[cancelled[0]]
        assert stopped.state == PENDING and stopped.error_class is None, stopped
        assert all(row.state in (PENDING, DONE) for row in rows.values()), rows
        before = bench.pieces()
        assert any(p.done and p.transfer_id == stopped.id for p in before), "durable pieces stay recorded"
        bench.quiet()
        received = bench.harness.received()
        bench.run()
        assert_resumed(bench, before, received)

    def test_a_copy_damaged_once_is_detected_then_sent_again(self, bench: Bench) -> None:
        detected: list[int] = []

        def repair_when_detected(transfer_id: int, handles: dict[str, Any]) -> None:
            # The engine counts a mismatch in the transfer's handles (Job.integrity_failed) before it
            # has the copy sent again: the damage stops there.
            if handles.get(MISMATCHES) and not detected:
                detected.append(transfer_id)
                bench.harness.repair()

        bench.harness.damage()
        bench.run(bench.port(on_save=repair_when_detected))
        assert detected, f"{bench.hop}: the damaged copy was not reported as an IntegrityMismatch"
        assert_arrived(bench)

    def test_a_copy_damaged_every_time_is_never_done(self, bench: Bench) -> None:
        bench.harness.damage()
        rows = bench.run()
        assert rows and all(row.state == BLOCKED and row.error_class == INTEGRITY for row in rows), rows
        for path, data in bench.files.items():
            assert bench.harness.fetch(path) != data, f"{bench.hop}: a damaged {path} was left as the copy"

    def test_handles_round_trip_through_the_catalogue(self, bench: Bench) -> None:
        port = bench.port()
        with bench.started(port) as built:
            results = by_hand(bench, built)
        assert not port.mismatched, f"{bench.hop}: saved handles came back changed: {port.mismatched}"
        for transfer_id, outcome, _second in results:
            assert json.loads(json.dumps(outcome.handles)) == outcome.handles, outcome.handles
            assert bench.store.load_job(transfer_id).handles == outcome.handles
