"""A poll that fails transiently (5xx, a refused connection, a timeout) is retried with the engine's
backoff, not at the repo's next regular poll an hour later; a 429 keeps its Retry-After; status shows
when the retry is due; a poll that gets an answer ends the streak. Against the fake Hub, a closed port
and a port that never answers, with the real huggingface_hub client."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from relayd.catalogue import migrate, queries
from relayd.catalogue.schema import Repo
from relayd.catalogue.store import RepoSpec, Store, utcnow
from relayd.cli import status_view
from relayd.config import HubConfig, RetryConfig, SecretRef
from relayd.hub import HubSource
from relayd.poll import Poller
from relayd_sandbox._http import free_port
from relayd_sandbox.hub import FakeHub, make_model_repo

TOKEN = "hf_alice_secret_0123456789"
# Attempt n waits between half and all of initial × 2^(n-1) (relayd.engine.backoff_delay).
RETRY = RetryConfig(initial=30.0, maximum=600.0, multiplier=2.0)
EVERY = 3600.0


def hub_config(endpoint: str, timeout: float = 5) -> HubConfig:
    return HubConfig(
        endpoint=endpoint,
        token=SecretRef("hub.token", value=TOKEN),
        concurrency=2,
        large_concurrency=1,
        connections=2,
        piece_size=1 << 20,
        timeout=timeout,
        default_every=EVERY,
        stall_timeout=2,
    )


class Polls:
    """A catalogue with one repo on the download route, polled through HubSource at *endpoint*."""

    def __init__(self, root: Path, endpoint: str, timeout: float = 5) -> None:
        self.db = root / "catalogue.db"
        self.store = Store(f"sqlite:///{self.db}")
        migrate.ensure_schema(self.store.engine, auto_upgrade=False)
        self.store.add_repo(RepoSpec(name="alice/tiny", every=EVERY, route=("download",)))
        self.use(endpoint, timeout)

    def use(self, endpoint: str, timeout: float = 5) -> None:
        source = HubSource(hub_config(endpoint, timeout))
        self.poller = Poller(self.store, {"hub": source}, {"download": "hub"}, RETRY)

    def poll(self) -> Repo:
        """Poll the repo once; return its row as the poll left it."""
        repo = self.store.repo("alice/tiny")
        assert repo is not None
        self.poller.poll(repo)
        after = self.store.repo("alice/tiny")
        assert after is not None
        return after

    def detail_text(self, now: datetime) -> str:
        reader = queries.SqliteReader(self.db)
        try:
            detail = queries.repo_detail(reader, "alice/tiny", now=now)
            assert detail is not None
            return "\n".join(status_view.detail_lines(detail, now))
        finally:
            reader.close()


def retry_in(repo: Repo, polled_at: datetime) -> float:
    assert repo.next_poll_at is not None, "a failed poll must name when it is retried"
    return (repo.next_poll_at - polled_at).total_seconds()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    with FakeHub(tmp_path / "hub") as fake:
        fake.add_token(TOKEN, user="alice")
        make_model_repo(fake, "alice/tiny", shards=1, shard_size=1024)
        yield fake


def test_a_5xx_poll_is_retried_with_growing_backoff_and_succeeds_once_the_hub_recovers(
    tmp_path: Path, hub: FakeHub
) -> None:
    polls = Polls(tmp_path, hub.endpoint)
    hub.faults.server_error(503, where="resolve", times=None)

    for attempt in (1, 2, 3):
        polled_at = utcnow()
        repo = polls.poll()
        ceiling = RETRY.initial * RETRY.multiplier ** (attempt - 1)
        assert repo.poll_state == "waiting" and "(503)" in (repo.poll_error or "")
        assert ceiling / 2 <= retry_in(repo, polled_at) <= ceiling + 1, attempt
        assert repo.poll_attempts == attempt and repo.poll_error_class == "server"
    assert repo.poll_failing_since is not None and repo.poll_failing_since <= polled_at

    text = polls.detail_text(polled_at)
    assert "next poll in " in text and "next poll -" not in text

    hub.faults.clear()
    repo = polls.poll()
    assert repo.poll_state == "ok" and repo.head_commit == hub.head("alice/tiny")
    assert (repo.poll_attempts, repo.poll_failing_since, repo.next_poll_at) == (0, None, None)


def test_a_refused_connection_is_retried_within_the_backoff(tmp_path: Path, hub: FakeHub) -> None:
    polls = Polls(tmp_path, f"http://127.0.0.1:{free_port()}")
    polled_at = utcnow()
    repo = polls.poll()
    assert repo.poll_state == "waiting" and "cannot reach" in (repo.poll_error or "")
    assert RETRY.initial / 2 <= retry_in(repo, polled_at) <= RETRY.initial + 1
    assert repo.poll_error_class == "network"

    polls.use(hub.endpoint)
    assert polls.poll().poll_state == "ok"


def test_a_poll_that_times_out_is_retried_within_the_backoff(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections are accepted by the kernel; nothing ever answers
        polls = Polls(tmp_path, f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        polled_at = utcnow()
        repo = polls.poll()
    assert repo.poll_state == "waiting" and "cannot reach" in (repo.poll_error or "")
    assert RETRY.initial / 2 <= retry_in(repo, polled_at) <= RETRY.initial + 1


def test_a_429_keeps_its_retry_after_when_that_is_later_than_the_backoff(
    tmp_path: Path, hub: FakeHub
) -> None:
    polls = Polls(tmp_path, hub.endpoint)
    hub.faults.rate_limit(where="resolve", times=1, reset_in=300)
    polled_at = utcnow()
    repo = polls.poll()
    assert repo.poll_state == "waiting" and repo.poll_error_class == "rate_limit"
    assert 298 <= retry_in(repo, polled_at) <= 301
    # The 429 said nothing is left until the window ends: relayd does not ask again before then.
    asked = len(hub.hub_log.snapshot())
    again = polls.poll()
    assert again.poll_state == "waiting" and again.poll_error_class == "rate_limit"
    assert 297 <= retry_in(again, polled_at) <= 302 and len(hub.hub_log.snapshot()) == asked


def test_a_blocked_poll_is_not_retried_on_a_timer(tmp_path: Path, hub: FakeHub) -> None:
    polls = Polls(tmp_path, hub.endpoint)
    polls.store.add_repo(RepoSpec(name="alice/missing", every=EVERY, route=("download",)))
    repo = polls.store.repo("alice/missing")
    assert repo is not None
    polls.poller.poll(repo)
    blocked = polls.store.repo("alice/missing")
    assert blocked is not None and blocked.poll_state == "blocked"
    assert blocked.next_poll_at is None  # it needs a person, not a retry: the regular poll looks again


def test_relayctl_retry_begins_a_new_streak(tmp_path: Path) -> None:
    polls = Polls(tmp_path, f"http://127.0.0.1:{free_port()}")
    polls.poll()
    polls.poll()
    assert polls.store.retry("alice/tiny") == 0
    repo = polls.store.repo("alice/tiny")
    assert repo is not None
    assert (repo.poll_attempts, repo.poll_failing_since) == (0, None)
    assert repo.next_poll_at is not None and repo.next_poll_at <= utcnow() + timedelta(seconds=1)
