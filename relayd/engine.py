"""The engine: a bounded worker pool that claims runnable transfers and runs their hops.

One dispatcher thread claims transfers with leases while each hop is under its concurrency limit, and
hands them to a thread pool; a heartbeat thread renews the leases of what is running, so a crashed
process's claims come back when they expire. Each failure is classified by its error class: retryable
(``waiting`` with exponential backoff and jitter, or the server's Retry-After), needs a person
(``blocked`` with a reason and a hint) or permanent (``blocked``). Downloads are held while the staging
disk is over its budget, and partial downloads this daemon will not resume are swept (relayd.partials).

Nothing retries for ever unseen: a transfer or a poll (relayd.poll uses the same backoff) whose failures
have gone on for longer than ``retry.surface_after`` is surfaced as stuck (status and a notification,
once per streak) while it keeps retrying, and an unexpected exception that repeats word for word
``INTERNAL_BLOCK_AFTER`` times in a row blocks the transfer, since waiting does not fix a bug.
"""

from __future__ import annotations

import logging
import random
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from relayd.catalogue.db import unreachable
from relayd.catalogue.schema import BLOCKED, WAITING
from relayd.catalogue.store import LeaseLost, Store, TransferGone, utcnow
from relayd.config import RetryConfig
from relayd.errors import Cancelled, ErrorClass, IntegrityMismatch, NeedsPerson, Permanent, Retryable
from relayd.hops.base import Hop, HopContext, Job, Outcome
from relayd.logs import log_failure
from relayd.partials import SWEEP_INTERVAL, PartialSweep
from relayd.staging import Staging, disk_full_error, is_disk_full
from relayd.units import format_size

log = logging.getLogger(__name__)

DISK_RECHECK = 10.0  # seconds between looks for room after a full disk (staging)
REMOTE_DISK_RECHECK = 60.0  # ... and for hops writing elsewhere (the VM's disk)
STUCK_CHECK = 5.0  # seconds between looks for failure streaks to surface (less for a tiny surface_after)
INTERNAL_BLOCK_AFTER = 5  # the same unexpected exception this many times in a row blocks the transfer


def backoff_delay(attempts: int, retry: RetryConfig, retry_after: float | None = None) -> float:
    """Return seconds to wait before attempt *attempts* + 1: exponential with full jitter on the upper
    half, capped, and never sooner than a server's Retry-After."""
    exponent = max(0, attempts - 1)
    ceiling = min(retry.maximum, retry.initial * retry.multiplier**exponent)
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not cryptography
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


@dataclass(frozen=True)
class _Parking:
    """How to park a failed transfer: its error, its class, and the attempts it has made."""

    error: str
    error_class: ErrorClass
    attempts: int


@dataclass(frozen=True)
class EngineSettings:
    workers: int
    lease: float
    idle_wait: float
    retry: RetryConfig
    limits: dict[str, int]


def run_hop(hop: Hop, job: Job) -> Outcome:
    """Run one transfer through its hop (``_run_hop``); a copy the destination measured wrong is sent
    again once, and blocks on the second mismatch in a row (``Job.integrity_failed``)."""
    try:
        return _run_hop(hop, job)
    except IntegrityMismatch as mismatch:
        raise job.integrity_failed(mismatch) from mismatch


def _run_hop(hop: Hop, job: Job) -> Outcome:
    """Run one transfer through its hop: plan if needed, move the missing pieces, verify."""
    if job.snapshot is not None and job.file is None:
        return hop.finish_snapshot(job)
    if not job.pieces:
        planned = list(hop.plan(job))
        job.replan(planned, job.file_or_fail.size)
    missing = [piece for piece in job.pieces if not piece.done]
    if missing:
        job.check_cancelled()
        hop.move(job, missing)
    job.check_cancelled()
    return hop.verify(job)


class Engine:
    """Claims and runs transfers until stopped. ``run_until_idle`` serves `relayd run --once`."""

    def __init__(
        self,
        store: Store,
        staging: Staging,
        hops: dict[str, Hop],
        ctx: HopContext,
        settings: EngineSettings,
        *,
        on_event: Callable[[str, dict[str, object]], None] | None = None,
    ) -> None:
        self.store = store
        self.staging = staging
        self.hops = hops
        self.ctx = ctx
        self.settings = settings
        self.owner = ctx.owner
        self._on_event = on_event
        self._pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="relayd-worker")
        self._lock = threading.Lock()
        self._running: dict[int, str] = {}
        self._large: set[int] = set()  # running transfers that count against their hop's large_files
        self._wake = threading.Event()
        self._stop_claiming = threading.Event()
        self._threads: list[threading.Thread] = []
        self.hold_reason: str | None = None
        self._last_budget_check = 0.0
        self._reserved: dict[int, int] = {}
        self._last_disk_check = 0.0
        self._last_remote_disk_check = 0.0
        self._last_stuck_check = 0.0
        self._partials = PartialSweep(staging, store, ctx.owner)
        self._sweep_due = True  # at the first claim round, then every SWEEP_INTERVAL or after a loss
        self._last_sweep = 0.0
        # transfer id → the last unexpected exception's message and how many times in a row it came
        self._internal_errors: dict[int, tuple[str, int]] = {}
        # transfer id → how to park it, for a failed transfer the catalogue did not let us park: parked at
        # the next claim round it answers, rather than left leased until daemon.lease runs out
        self._unparked: dict[int, _Parking] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the dispatcher and heartbeat threads."""
        for target, name in (
            (self._dispatch_loop, "relayd-dispatch"),
            (self._heartbeat_loop, "relayd-heartbeat"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """Look for runnable work now (new transfers, a retry, a reload)."""
        self._wake.set()

    def stop_claiming(self) -> None:
        self._stop_claiming.set()
        self._wake.set()

    def running_count(self) -> int:
        with self._lock:
            return len(self._running)

    def drain(self, grace: float) -> bool:
        """Stop claiming, ask running hops to stop at their next durable point, and wait up to
        *grace* seconds; return True if everything stopped in time."""
        self.stop_claiming()
        self.ctx.cancel.set()
        deadline = time.monotonic() + grace
        while self.running_count() and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped = self.running_count() == 0
        self._pool.shutdown(wait=stopped, cancel_futures=True)
        for hop in self.hops.values():
            try:
                hop.close()
            except Exception:
                log.exception("closing hop %s failed", hop.name)
        try:
            self.ctx.services.close()
        except Exception:
            log.exception("closing shared clients failed")
        return stopped

    def run_until_idle(self, *, poll: Callable[[], None] | None = None, timeout: float | None = None) -> None:
        """Claim and run until nothing is runnable and nothing is running (for --once and tests)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop_claiming.is_set():
            if poll is not None:
                poll()
            # Read before claiming: a transfer that finishes during the round may create the next
            # hop's transfer after the round looked, so only a round that began with nothing running
            # and claimed nothing proves the engine idle.
            was_running = self.running_count()
            claimed = self._claim_round()
            if not claimed and not was_running:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("the engine did not become idle in time")
            self._wake.wait(0.05 if claimed else self.settings.idle_wait / 4)
            self._wake.clear()

    # -- claiming ----------------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while not self._stop_claiming.is_set():
            try:
                claimed = self._claim_round()
            except Exception as exc:  # noqa: BLE001 - retried; log_failure logs it
                log_failure(log, "claiming transfers failed; trying again shortly", exc)
                claimed = 0
            if not claimed:
                self._wake.wait(self.settings.idle_wait)
                self._wake.clear()

    def _downloads_held(self) -> bool:
        """Check the staging budget at most once a second; publish why downloads wait."""
        now = time.monotonic()
        if now - self._last_budget_check < 1.0:
            return self.hold_reason is not None
        self._last_budget_check = now
        budget = self.staging.budget()
        self._set_hold(budget.hold_reason, budget.used)
        return self.hold_reason is not None

    def _admit_download(self, transfer_id: int, size: int) -> bool:
        """Keep a claimed download only if staging can hold it beside what is staged and what running
        downloads will write; else give it back. The first download is always admitted, so a file
        larger than the budget cannot wait forever."""
        with self._lock:
            reserved = sum(self._reserved.values())
        projected = self.staging.used_bytes(include_partial=False) + reserved
        if projected == 0 or projected + size <= self.staging.config.max_bytes:
            with self._lock:
                self._reserved[transfer_id] = size
            return True
        self.store.release(transfer_id, self.owner)
        self._set_hold(
            f"staging would hold {format_size(projected + size)} with the next file, "
            f"its maximum is {format_size(self.staging.config.max_bytes)}: downloads wait until later hops "
            "free space (staging.max_bytes)",
            projected,
        )
        self._last_budget_check = time.monotonic()
        return False

    def _set_hold(self, reason: str | None, used: int) -> None:
        """Record why new downloads wait (None: they don't); log and publish each change for status."""
        if reason != self.hold_reason:
            if reason:
                log.warning("holding new downloads: %s", reason)
            else:
                log.info("staging has room again; downloads continue")
            config = self.staging.config
            self.store.publish(
                "staging",
                {
                    "used": used,
                    "free": shutil.disk_usage(self.staging.root).free,
                    "max_bytes": config.max_bytes,
                    "min_free": config.min_free,
                    "held": reason,
                },
            )
        self.hold_reason = reason

    def _unblock_disk(self) -> None:
        """Give transfers blocked by a full disk another try once there may be room: local downloads as
        soon as the staging budget allows, hops writing elsewhere (the VM) every minute."""
        now = time.monotonic()
        if now - self._last_disk_check < DISK_RECHECK:
            return
        self._last_disk_check = now
        staging = [name for name, hop in self.hops.items() if hop.writes_staging]
        hops = [name for name in self.hops if name not in staging]
        if now - self._last_remote_disk_check >= REMOTE_DISK_RECHECK:
            self._last_remote_disk_check = now
        else:
            hops = []
        if staging and self.staging.budget().hold_reason is None:
            hops += staging
        if hops:
            count = self.store.unblock(error_class=ErrorClass.DISK, hops=hops)
            if count:
                log.info("%d transfer(s) blocked by a full disk try again", count)

    def _surface_stuck(self) -> None:
        """Surface (status and a notification) what has kept failing for longer than retry.surface_after."""
        surface_after = self.settings.retry.surface_after
        now = time.monotonic()
        if now - self._last_stuck_check < min(STUCK_CHECK, surface_after / 2):
            return
        self._last_stuck_check = now
        for notice in self.store.surface_stuck(utcnow() - timedelta(seconds=surface_after)):
            what = f"{notice.hop} {notice.path or '(whole snapshot)'}" if notice.hop else "poll"
            log.warning(
                "%s %s: stuck, failing since %s (%d attempts): %s; check: %s",
                notice.repo,
                what,
                notice.failing_since.isoformat(timespec="seconds"),
                notice.attempts,
                notice.error,
                notice.hint,
            )

    def _sweep_partials(self) -> None:
        """Remove the partial downloads this daemon will not resume. Only the thread that claims sweeps,
        so no transfer is claimed here while its partial file is judged."""
        now = time.monotonic()
        if not self._sweep_due and now - self._last_sweep < SWEEP_INTERVAL:
            return
        self._sweep_due, self._last_sweep = False, now
        with self._lock:
            busy = set(self._running)
        self._partials.sweep(busy)

    def _claim_round(self) -> int:
        """Claim as much as the limits allow; return how many transfers were started."""
        started = 0
        self._park_unparked()
        self._unblock_disk()
        self._surface_stuck()
        self._sweep_partials()
        # Later hops first: finishing files frees staging and shows progress sooner.
        runnable = self.store.runnable_hops()
        candidates = [name for name in runnable if name in self.hops]
        for hop_name in sorted(candidates, key=lambda name: (-runnable[name], name)):
            while not self._stop_claiming.is_set():
                with self._lock:
                    if len(self._running) >= self.settings.workers:
                        return started
                    in_hop = sum(1 for name in self._running.values() if name == hop_name)
                    busy = list(self._running)
                    large_in_hop = sum(1 for tid in self._large if self._running.get(tid) == hop_name)
                if in_hop >= self.settings.limits.get(hop_name, 1):
                    break
                hop = self.hops[hop_name]
                if hop.writes_staging and self._downloads_held():
                    break
                large = hop.large_files
                smaller_than = large[0] if large and large_in_hop >= large[1] else None
                transfer = self.store.claim(
                    hop_name, self.owner, self.settings.lease, exclude=busy, smaller_than=smaller_than
                )
                if transfer is None:
                    break
                if hop.writes_staging and not self._admit_download(transfer.id, transfer.bytes_total):
                    break
                with self._lock:
                    self._running[transfer.id] = hop_name
                    if large and transfer.bytes_total >= large[0]:
                        self._large.add(transfer.id)
                self._pool.submit(self._run, transfer.id, hop_name, transfer.attempts)
                started += 1
        return started

    def _heartbeat_loop(self) -> None:
        interval = max(1.0, self.settings.lease / 3)
        while not self._stop_claiming.wait(interval):
            self._renew()
        # Keep renewing while draining, so a slow last piece does not lose its lease.
        while self.running_count():
            time.sleep(min(interval, 1.0))
            self._renew()

    def _renew(self) -> None:
        with self._lock:
            ids = list(self._running)
        try:
            lost = self.store.renew_leases(self.owner, ids, self.settings.lease)
        except Exception as exc:  # noqa: BLE001 - retried; log_failure logs it
            log_failure(log, "renewing leases failed", exc)
            return
        for transfer_id in lost:
            log.warning("transfer %s: lease lost to another worker", transfer_id)

    # -- running -----------------------------------------------------------------------------------

    def _run(self, transfer_id: int, hop_name: str, attempts: int) -> None:
        lost = False  # to another worker or with its repo: its partial download is swept soon
        try:
            self._run_transfer(transfer_id, hop_name)
        except TransferGone as exc:  # its file is fetched again (Job.fetch_again), or its repo removed
            log.info("transfer %s: stopped, %s", transfer_id, exc)
            lost = True
        except LeaseLost as exc:
            # Its lease ran out (the catalogue was out of reach longer than daemon.lease) and another
            # worker took it over: this one records nothing more of it.
            log.warning("transfer %s: stopped, %s; the other worker's result stands", transfer_id, exc)
            lost = True
        except Exception as exc:  # noqa: BLE001 - retried; log_failure logs it
            log_failure(log, f"transfer {transfer_id}: failed while loading it or recording its outcome", exc)
            # Park it like any failure (rather than leave it running until its lease expires), so that
            # its streak of failures begins and it surfaces as stuck if this keeps happening.
            reason = unreachable(exc)
            parking = (
                _Parking(f"the catalogue did not answer: {reason}", ErrorClass.NETWORK, attempts)
                if reason is not None
                else _Parking(f"internal error: {type(exc).__name__}: {exc}", ErrorClass.INTERNAL, attempts)
            )
            try:
                self._park(transfer_id, parking)
            except Exception as failed:  # noqa: BLE001 - retried; log_failure logs it
                log_failure(
                    log,
                    f"transfer {transfer_id}: parking it failed too; it is parked once the catalogue answers "
                    "(another daemon takes it over if its lease runs out first)",
                    failed,
                )
                with self._lock:
                    self._unparked[transfer_id] = parking
        finally:
            with self._lock:
                self._running.pop(transfer_id, None)
                self._large.discard(transfer_id)
                self._reserved.pop(transfer_id, None)
                self._sweep_due = self._sweep_due or lost
            self._wake.set()

    def _run_transfer(self, transfer_id: int, hop_name: str) -> None:
        hop = self.hops[hop_name]
        job = Job(self.store.load_job(transfer_id), self.ctx)
        internal = False
        try:
            outcome = run_hop(hop, job)
        except Cancelled:
            job.finish_progress()
            self.store.release(transfer_id, self.owner)
            job.log.info("stopped at a durable point; will continue on the next start")
            return
        except Retryable as exc:
            self._defer(
                job, WAITING, str(exc), error_class=exc.error_class, hint=None, retry_after=exc.retry_after
            )
            return
        except NeedsPerson as exc:
            self._defer(job, BLOCKED, str(exc), error_class=exc.error_class, hint=exc.hint, retry_after=None)
            return
        except Permanent as exc:
            self._defer(job, BLOCKED, str(exc), error_class=exc.error_class, hint=exc.hint, retry_after=None)
            return
        except OSError as exc:
            if is_disk_full(exc):
                blocked = disk_full_error(exc.filename or self.staging.root)
                self._defer(
                    job,
                    BLOCKED,
                    str(blocked),
                    error_class=blocked.error_class,
                    hint=blocked.hint,
                    retry_after=None,
                )
            else:
                self._defer(
                    job,
                    WAITING,
                    f"{type(exc).__name__}: {exc}",
                    error_class=ErrorClass.IO,
                    hint=None,
                    retry_after=None,
                )
            return
        except Exception as exc:
            if isinstance(exc, LeaseLost) or unreachable(exc) is not None:
                # Not the hop's failure: _run says the lease is lost, or parks it once the catalogue answers.
                raise
            internal = True
            job.log.exception("hop %s failed unexpectedly", hop_name)
            message = f"internal error: {type(exc).__name__}: {exc}"
            repeats = self._count_internal(transfer_id, message)
            if repeats >= INTERNAL_BLOCK_AFTER:
                hint = (
                    f"relayd failed the same way {repeats} times in a row, a bug that waiting does not fix: "
                    "report it with the traceback from the daemon log (`journalctl -u relayd`); "
                    "`relayctl retry` tries again"
                )
                with self._lock:
                    self._internal_errors.pop(transfer_id, None)  # `relayctl retry` starts a new count
                self._defer(
                    job, BLOCKED, message, error_class=ErrorClass.INTERNAL, hint=hint, retry_after=None
                )
            else:
                self._defer(
                    job, WAITING, message, error_class=ErrorClass.INTERNAL, hint=None, retry_after=None
                )
            return
        finally:
            if not internal:
                with self._lock:
                    self._internal_errors.pop(transfer_id, None)
        job.finish_progress()
        try:
            releasable = self.store.complete(
                transfer_id,
                self.owner,
                outcome.handles,
                sha256=outcome.sha256,
                sha1=outcome.sha1,
                staged_path=outcome.staged_path,
            )
        except LeaseLost as exc:
            job.log.warning("finished, but %s; the other worker's result stands", exc)
            return
        job.log.info("done (%s)", hop_name)
        self._emit("transfer_done", {"transfer": transfer_id, "hop": hop_name, "repo": job.repo.name})
        for staged in releasable:
            self.store.unstage(staged.blob_id)
            self.staging.remove(staged.staged_path)

    def _park(self, transfer_id: int, parking: _Parking) -> bool:
        """Park a failed transfer as waiting; return False when another worker holds it now."""
        delay = backoff_delay(parking.attempts, self.settings.retry)
        return self.store.defer(
            transfer_id,
            self.owner,
            state=WAITING,
            error=parking.error,
            error_class=parking.error_class,
            next_attempt_at=utcnow() + timedelta(seconds=delay),
        )

    def _park_unparked(self) -> None:
        """Park the failed transfers the catalogue did not let us park (raise while it still does not)."""
        with self._lock:
            waiting = list(self._unparked.items())
        for transfer_id, parking in waiting:
            parked = self._park(transfer_id, parking)
            with self._lock:
                self._unparked.pop(transfer_id, None)
            if parked:
                log.info("transfer %s: parked now that the catalogue answers again", transfer_id)
            else:
                log.info("transfer %s: another worker took it over while the catalogue was away", transfer_id)
                self._sweep_due = True

    def _count_internal(self, transfer_id: int, message: str) -> int:
        """Return how many times in a row the transfer has now failed with this unexpected exception."""
        with self._lock:
            previous, count = self._internal_errors.get(transfer_id, ("", 0))
            count = count + 1 if previous == message else 1
            self._internal_errors[transfer_id] = (message, count)
            return count

    def _defer(
        self,
        job: Job,
        state: str,
        message: str,
        *,
        error_class: ErrorClass,
        hint: str | None,
        retry_after: float | None,
    ) -> None:
        # Said first: the writes below raise LeaseLost when the transfer is no longer this worker's.
        next_at = None
        if state == WAITING:
            delay = backoff_delay(job.attempts, self.settings.retry, retry_after)
            next_at = utcnow() + timedelta(seconds=delay)
            job.log.warning("%s; retrying in %.0fs (attempt %d)", message, delay, job.attempts)
        else:
            job.log.error("blocked: %s; %s", message, hint)
        job.finish_progress()
        if state == BLOCKED:
            self._emit(
                "blocked", {"repo": job.repo.name, "hop": job.hop, "error": message, "hint": hint or ""}
            )
        self.store.defer(
            job.id,
            self.owner,
            state=state,
            error=message,
            error_class=error_class,
            hint=hint,
            next_attempt_at=next_at,
        )

    def _emit(self, kind: str, payload: dict[str, object]) -> None:
        if self._on_event is not None:
            try:
                self._on_event(kind, payload)
            except Exception:
                log.exception("event handler for %s failed", kind)
