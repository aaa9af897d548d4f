"""No path retries for ever unseen: whatever hop keeps failing, and however (a Retryable, an OSError, an
unexpected exception), once its streak of failures is older than retry.surface_after the transfer is
listed under "stuck" in the status document and a "stuck" notification is queued, once per streak,
while it keeps retrying; a poll likewise. The same unexpected exception again and again blocks. A
success or `relayctl retry` ends the streak."""

from __future__ import annotations

import errno
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from relayd.catalogue import migrate, queries
from relayd.catalogue.schema import BLOCKED, DONE, WAITING, Notification, Transfer
from relayd.catalogue.store import FileSpec, RepoSpec, Store, utcnow
from relayd.cli import status_json, status_view
from relayd.config import Config, RetryConfig, load_config
from relayd.engine import INTERNAL_BLOCK_AFTER, Engine, EngineSettings
from relayd.errors import ConfigError, Retryable
from relayd.hops import hop_names, load_hop_class
from relayd.hops.base import Hop, HopContext, Job, Outcome, PieceSpec, plan_ranges
from relayd.hub import HubSource
from relayd.poll import Poller
from relayd.staging import Staging
from relayd_sandbox._http import free_port

WEBHOOK = "http://127.0.0.1:9/relayd-hook"  # only queued here, never delivered
SURFACE_AFTER = 0.2
RETRY = RetryConfig(initial=0.01, maximum=0.05, multiplier=2.0, surface_after=SURFACE_AFTER)
DATA = b"relayd" * 200

Failure = Callable[[str], BaseException]
FAILURES: dict[str, tuple[Failure, str]] = {
    # name: (the exception the hop raises, given the hop's name; the error class it is recorded with)
    "retryable": (lambda hop: Retryable(f"{hop}: the link dropped", error_class="network"), "network"),
    "oserror": (lambda hop: ConnectionResetError(errno.ECONNRESET, f"{hop}: connection reset"), "io"),
    # An unexpected exception whose message differs each time never counts as "the same bug again".
    "internal": (lambda hop: KeyError(f"{hop} {time.monotonic_ns()}"), "internal"),
}


def failing(name: str, raise_: Callable[[], BaseException]) -> type[Hop]:
    """Return the registered hop class *name* with its moves (and snapshot commits) failing."""
    base = load_hop_class(name)

    class Failing(base):  # type: ignore[valid-type,misc]
        fail = True

        def plan(self, job: Job) -> Sequence[PieceSpec]:
            return plan_ranges(job.file_or_fail.size, 1 << 20)

        def move(self, job: Job, pieces: Sequence[PieceSpec]) -> None:
            if self.fail:
                raise raise_()

        def verify(self, job: Job) -> Outcome:
            if self.fail:
                raise raise_()
            return Outcome({"verified": name})

        def finish_snapshot(self, job: Job) -> Outcome:
            raise raise_()

    return Failing


class World:
    """A catalogue, staging, the config's hop sections, and an engine over one hop."""

    def __init__(self, root: Path, config: Config) -> None:
        self.config = config
        self.db = root / "catalogue.db"
        self.store = Store(f"sqlite:///{self.db}")
        migrate.ensure_schema(self.store.engine, auto_upgrade=False)
        self.store.webhooks = (WEBHOOK,)
        self.staging = Staging(config.staging)
        self.ctx = HopContext(self.store, self.staging, root / "state", threading.Event(), "test-owner")

    def engine(self, hop: Hop, retry: RetryConfig = RETRY) -> Engine:
        settings = EngineSettings(workers=2, lease=30.0, idle_wait=0.05, retry=retry, limits={hop.name: 1})
        return Engine(self.store, self.staging, {hop.name: hop}, self.ctx, settings)

    def build(self, hop_class: type[Hop], name: str) -> Hop:
        return hop_class(self.config.section_for(name), self.ctx)

    def add_repo(self, name: str, route: tuple[str, ...]) -> None:
        self.store.add_repo(RepoSpec(name=name, every=3600, route=route))
        repo = self.store.repo(name)
        assert repo is not None
        spec = FileSpec("model.bin", len(DATA), True, hashlib.sha256(DATA).hexdigest())
        self.store.record_snapshot(repo.id, "c" * 40, [spec])

    def transfer(self) -> Transfer:
        with self.store.read() as session:
            return session.query(Transfer).one()

    def notifications(self, kind: str) -> list[dict[str, Any]]:
        with self.store.read() as session:
            rows = session.query(Notification).filter(Notification.kind == kind).order_by(Notification.id)
            return [row.payload["body"] for row in rows]

    def summary(self) -> queries.Summary:
        reader = queries.SqliteReader(self.db)
        try:
            return queries.summary(reader)
        finally:
            reader.close()

    def run_until(self, engine: Engine, condition: Callable[[], bool], what: str) -> None:
        """Run the engine round after round (each retry comes due within RETRY.maximum) until
        *condition* holds; fail naming *what* if it never does."""
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, f"never: {what}; transfer: {self.transfer().last_error}"
            engine.run_until_idle(timeout=30)
            time.sleep(0.01)


@pytest.fixture
def world(tmp_path: Path, make_config: Callable[..., Path]) -> Iterator[World]:
    box = World(tmp_path, load_config(make_config(tmp_path)))
    yield box
    box.store.close()


def stuck_in_status(world: World) -> list[queries.StuckItem]:
    return world.summary().stuck


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("hop_name", hop_names())
def test_every_hop_that_keeps_failing_surfaces_as_stuck_and_is_notified_once(
    world: World, hop_name: str, failure: str
) -> None:
    make_error, error_class = FAILURES[failure]
    hop = world.build(failing(hop_name, lambda: make_error(hop_name)), hop_name)
    world.add_repo("acme/flaky", (hop_name,))
    engine = world.engine(hop)

    world.run_until(engine, lambda: bool(stuck_in_status(world)), "the transfer listed as stuck")

    (item,) = stuck_in_status(world)
    assert (item.kind, item.repo, item.hop, item.path) == ("transfer", "acme/flaky", hop_name, "model.bin")
    assert item.error_class == error_class and item.hint == queries.stuck_hint(error_class)
    assert item.error is not None and hop_name in item.error
    assert item.attempts >= 2 and item.failing_since is not None
    now = utcnow()
    assert (now - item.failing_since).total_seconds() >= SURFACE_AFTER
    document = status_json.summary_json(world.summary(), now)
    assert document["stuck_total"] == 1 and document["stuck"][0]["path"] == "model.bin"
    lines = status_view.summary_lines(world.summary(), now)
    assert "STUCK 1 (failing for longer than retry.surface_after; still retrying)" in lines
    assert f"      check: {item.hint}" in lines
    (notice,) = world.notifications("stuck")
    assert (notice["repo"], notice["hop"], notice["path"]) == ("acme/flaky", hop_name, "model.bin")
    assert notice["error_class"] == error_class and notice["hint"] == item.hint

    # It keeps retrying, and the streak is notified once, not at every retry.
    attempts = world.transfer().attempts
    world.run_until(engine, lambda: world.transfer().attempts >= attempts + 3, "more retries")
    assert world.transfer().state == WAITING
    assert len(world.notifications("stuck")) == 1
    assert not world.notifications("blocked")


def test_a_success_ends_the_streak_and_relayctl_retry_begins_a_new_one(world: World) -> None:
    hop = world.build(failing("local_copy", lambda: Retryable("the link dropped")), "local_copy")
    world.add_repo("acme/flaky", ("local_copy",))
    engine = world.engine(hop)
    world.run_until(engine, lambda: bool(stuck_in_status(world)), "stuck")

    hop.fail = False  # type: ignore[attr-defined]
    world.run_until(engine, lambda: world.transfer().state == DONE, "the transfer done")
    transfer = world.transfer()
    assert (transfer.failing_since, transfer.surfaced_at) == (None, None)
    assert stuck_in_status(world) == []

    # A new streak (after `relayctl retry` of a waiting transfer) is notified again.
    with world.store._write() as session:
        session.query(Transfer).update({"state": WAITING, "failing_since": utcnow(), "surfaced_at": utcnow()})
    world.store.retry("acme/flaky")
    assert (world.transfer().failing_since, world.transfer().surfaced_at) == (None, None)
    hop.fail = True  # type: ignore[attr-defined]
    world.run_until(engine, lambda: len(world.notifications("stuck")) == 2, "the second streak notified")


def test_a_streak_younger_than_surface_after_is_not_stuck(world: World) -> None:
    hop = world.build(failing("local_copy", lambda: Retryable("the link dropped")), "local_copy")
    world.add_repo("acme/flaky", ("local_copy",))
    engine = world.engine(hop, RetryConfig(initial=0.01, maximum=0.05, multiplier=2.0, surface_after=3600))
    world.run_until(engine, lambda: world.transfer().attempts >= 5, "five failures")
    assert world.transfer().failing_since is not None
    assert stuck_in_status(world) == [] and world.notifications("stuck") == []


def test_the_same_internal_error_again_and_again_blocks(world: World) -> None:
    def bug() -> BaseException:
        return ZeroDivisionError("division by zero")

    hop = world.build(failing("local_copy", bug), "local_copy")
    world.add_repo("acme/buggy", ("local_copy",))
    engine = world.engine(hop, RetryConfig(initial=0.01, maximum=0.05, multiplier=2.0, surface_after=3600))
    world.run_until(engine, lambda: world.transfer().state == BLOCKED, "the transfer blocked")
    transfer = world.transfer()
    assert transfer.attempts == INTERNAL_BLOCK_AFTER
    assert transfer.error_class == "internal" and "ZeroDivisionError" in (transfer.last_error or "")
    assert transfer.hint is not None and f"the same way {INTERNAL_BLOCK_AFTER} times" in transfer.hint
    (notice,) = world.notifications("blocked")
    assert notice["error_class"] == "internal"


def test_a_transfer_that_cannot_even_be_loaded_is_parked_and_surfaces(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    hop = world.build(failing("local_copy", lambda: Retryable("unused")), "local_copy")
    world.add_repo("acme/odd", ("local_copy",))

    def broken(transfer_id: int) -> Any:
        raise RuntimeError("the row cannot be read")

    monkeypatch.setattr(world.store, "load_job", broken)
    engine = world.engine(hop)
    world.run_until(engine, lambda: bool(stuck_in_status(world)), "stuck")
    transfer = world.transfer()
    assert transfer.state == WAITING and transfer.error_class == "internal"
    assert "the row cannot be read" in (transfer.last_error or "")


def test_a_poll_failing_for_longer_than_surface_after_is_stuck_and_notified(world: World) -> None:
    world.store.add_repo(RepoSpec(name="alice/tiny", every=3600, route=("download",)))
    unreachable = HubSource(replace(world.config.hub, endpoint=f"http://127.0.0.1:{free_port()}"))
    poller = Poller(world.store, {"hub": unreachable}, {"download": "hub"}, RETRY)
    hop = world.build(failing("local_copy", lambda: Retryable("unused")), "local_copy")
    engine = world.engine(hop)

    def poll() -> None:
        repo = world.store.repo("alice/tiny")
        assert repo is not None
        poller.poll(repo)

    poll()
    time.sleep(SURFACE_AFTER)  # the streak grows older than surface_after
    poll()
    engine.run_until_idle(timeout=30)

    (item,) = stuck_in_status(world)
    assert (item.kind, item.repo, item.hop, item.state) == ("poll", "alice/tiny", None, "waiting")
    assert item.attempts == 2 and item.error_class == "network" and "cannot reach" in (item.error or "")
    assert item.next_attempt_at is not None
    (notice,) = world.notifications("stuck")
    assert (notice["hop"], notice["attempts"]) == ("poll", 2)
    text = status_view.summary_lines(world.summary(), utcnow())
    assert any(line.startswith("  alice/tiny  poll: cannot reach") for line in text)


def test_surface_after_is_validated(tmp_path: Path, make_config: Callable[..., Path]) -> None:
    assert load_config(make_config(tmp_path)).retry.surface_after == 3600
    assert load_config(make_config(tmp_path, retry={"surface_after": "10m"})).retry.surface_after == 600
    with pytest.raises(ConfigError, match=r"retry\.surface_after"):
        load_config(make_config(tmp_path, retry={"surface_after": "0s"}))
    with pytest.raises(ConfigError, match=r"retry\.surface_after"):
        load_config(make_config(tmp_path, retry={"surface_after": "soon"}))
