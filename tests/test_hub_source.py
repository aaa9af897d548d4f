"""HubSource and the poller against the fake Hub with the real huggingface_hub client: the cheap head
check, pinned and paginated listings, globs, repo types, and every error flow ending in the right
status text; hostile or inconsistent listings are refused; polls are paced by the rate limits every
answer announces."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import relayd.hub_limits
from relayd.catalogue import migrate
from relayd.catalogue.schema import File, Snapshot, Transfer
from relayd.catalogue.store import FileSpec, RepoSpec, Store, utcnow
from relayd.config import HubConfig, SecretRef
from relayd.errors import Permanent
from relayd.hub import HubSource
from relayd.poll import Poller, check_listing
from relayd_sandbox._http import free_port
from relayd_sandbox.hub import FakeHub, Generated, make_model_repo

TOKEN = "hf_alice_secret_0123456789"


def hub_config(endpoint: str, token: str | None = TOKEN) -> HubConfig:
    return HubConfig(
        endpoint=endpoint,
        token=SecretRef("hub.token", value=token),
        concurrency=2,
        large_concurrency=1,
        connections=2,
        piece_size=1 << 20,
        timeout=5,
        default_every=3600,
        stall_timeout=2,
    )


class World:
    """A fake Hub, a catalogue and a poller using HubSource."""

    def __init__(self, root: Path, hub: FakeHub) -> None:
        self.hub = hub
        self.db = root / "catalogue.db"
        self.store = Store(f"sqlite:///{self.db}")
        migrate.ensure_schema(self.store.engine, auto_upgrade=False)
        self.use(hub_config(hub.endpoint))

    def use(self, config: HubConfig) -> None:
        self.source = HubSource(config)
        self.poller = Poller(self.store, {"hub": self.source}, {"download": "hub"})

    def add(self, name: str, **options: Any) -> None:
        self.store.add_repo(RepoSpec(name=name, every=3600, route=("download",), **options), replace=True)

    def poll(self, name: str) -> Any:
        repo = self.store.repo(name)
        assert repo is not None
        return self.poller.poll(repo)

    def repo(self, name: str) -> Any:
        return self.store.repo(name)

    def files(self, name: str) -> dict[str, File]:
        repo = self.repo(name)
        with self.store.read() as session:
            snapshot = (
                session.query(Snapshot)
                .filter(Snapshot.repo_id == repo.id, Snapshot.commit == repo.head_commit)
                .one()
            )
            from relayd.catalogue.schema import SnapshotFile

            rows = (
                session.query(File)
                .join(SnapshotFile, SnapshotFile.file_id == File.id)
                .filter(SnapshotFile.snapshot_id == snapshot.id)
            )
            return {row.path: row for row in rows}


@pytest.fixture(autouse=True)
def fresh_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a test teaches relayd of the Hub's rate limits (clocks included) stays with that test."""
    monkeypatch.setattr(relayd.hub_limits, "_BUDGETS", {})


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    with FakeHub(tmp_path / "hub", tree_page_size=3) as fake:
        fake.add_token(TOKEN, user="alice")
        yield fake


@pytest.fixture
def world(tmp_path: Path, hub: FakeHub) -> Iterator[World]:
    box = World(tmp_path, hub)
    yield box
    box.store.close()


def test_an_unchanged_head_costs_one_request_and_no_write(world: World, hub: FakeHub) -> None:
    make_model_repo(hub, "alice/tiny", shards=2, shard_size=4096)
    world.add("alice/tiny")
    first = world.poll("alice/tiny")
    assert first.changed and first.snapshot_id is not None
    hub.reset_counters()
    watcher = sqlite3.connect(world.db)
    counts = (
        "SELECT (SELECT count(*) FROM snapshots), (SELECT count(*) FROM files), "
        "(SELECT count(*) FROM transfers), (SELECT count(*) FROM repos)"
    )
    before = (watcher.execute("PRAGMA data_version").fetchone(), watcher.execute(counts).fetchone())

    for _ in range(3):
        result = world.poll("alice/tiny")
        assert not result.changed and result.error is None

    requests = hub.hub_log.snapshot()
    assert len(requests) == 3, [(r.method, r.path) for r in requests]
    assert all(r.method == "HEAD" and "/resolve/main/.gitattributes" in r.path for r in requests)
    assert (watcher.execute("PRAGMA data_version").fetchone(), watcher.execute(counts).fetchone()) == before
    watcher.close()


def test_a_moved_head_is_listed_at_its_pinned_commit_across_pages(world: World, hub: FakeHub) -> None:
    make_model_repo(hub, "alice/tiny", shards=4, shard_size=4096)
    hub.commit("alice/tiny", {"nested/deep/extra.bin": Generated(2048, seed=5)})
    world.add("alice/tiny")

    result = world.poll("alice/tiny")

    head = hub.head("alice/tiny")
    assert result.head == head and world.repo("alice/tiny").head_commit == head
    expected = hub.files("alice/tiny")
    files = world.files("alice/tiny")
    assert set(files) == set(expected)
    for path, entry in expected.items():
        row = files[path]
        assert row.size == entry.size and row.lfs == entry.lfs
        if entry.lfs:
            assert row.sha256 == entry.sha256 and row.git_blob_id is None
        else:
            assert row.git_blob_id == entry.blob_id
    trees = [r for r in hub.hub_log.snapshot() if "/tree/" in r.path]
    assert len(trees) > 3, "several pages of 3 entries"
    assert all(f"/tree/{head}" in r.path or "cursor=" in r.path for r in trees)


def test_globs_choose_the_files(world: World, hub: FakeHub) -> None:
    make_model_repo(hub, "alice/tiny", shards=3, shard_size=4096)
    world.add("alice/tiny", include=("*.safetensors", "*.json"), exclude=("model-00002-*",))

    world.poll("alice/tiny")

    assert sorted(world.files("alice/tiny")) == [
        "config.json",
        "generation_config.json",
        "model-00001-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
    ]


def test_datasets_tags_and_repos_without_gitattributes(world: World, hub: FakeHub) -> None:
    hub.create_repo("alice/data", repo_type="dataset", files={"train.parquet": Generated(10_000, seed=2)})
    tag = hub.create_tag("alice/data", "v1", repo_type="dataset")
    hub.commit("alice/data", {"test.parquet": Generated(100, seed=3)}, repo_type="dataset")
    world.add("alice/data", repo_type="dataset", revision="v1")

    world.poll("alice/data")

    assert world.repo("alice/data").head_commit == tag
    assert sorted(world.files("alice/data")) == [".gitattributes", "train.parquet"]

    hub.create_repo("alice/bare", files={"weights.bin": Generated(5000, seed=4)})
    hub.commit("alice/bare", delete=[".gitattributes"])
    world.add("alice/bare")
    result = world.poll("alice/bare")
    assert result.error is None and result.head == hub.head("alice/bare")


def test_gated_repo_without_a_token_blocks_with_the_licence_message(world: World, hub: FakeHub) -> None:
    hub.create_repo("meta/gated", gated="auto", files={"w.safetensors": Generated(100, seed=1)})
    world.use(hub_config(hub.endpoint, token=None))
    world.add("meta/gated")

    world.poll("meta/gated")

    repo = world.repo("meta/gated")
    assert repo.poll_state == "blocked"
    assert repo.poll_error == "meta/gated is gated and cannot be read anonymously (no token is set)"
    assert repo.poll_hint.startswith(f"accept the licence at {hub.endpoint}/meta/gated, then set the token")

    world.use(hub_config(hub.endpoint))  # alice's token, not approved
    world.poll("meta/gated")
    assert "with the configured token" in world.repo("meta/gated").poll_error
    assert TOKEN not in world.repo("meta/gated").poll_hint


@pytest.mark.parametrize(
    ("name", "revision", "token", "error", "hint"),
    [
        ("alice/missing", "main", TOKEN, "model alice/missing was not found on", "check the name"),
        ("alice/missing", "main", None, "model alice/missing was not found on", "private"),
        ("alice/tiny", "no-such-branch", TOKEN, "has no revision 'no-such-branch'", "check the branch"),
        ("alice/tiny", "main", "hf_wrong_token", "refused the token (401", "set a valid token"),
    ],
)
def test_errors_that_need_a_person_block_the_poll(
    world: World, hub: FakeHub, name: str, revision: str, token: str | None, error: str, hint: str
) -> None:
    make_model_repo(hub, "alice/tiny", shards=1, shard_size=1024)
    world.use(hub_config(hub.endpoint, token=token))
    world.add(name, revision=revision)

    result = world.poll(name)

    repo = world.repo(name)
    assert result.error is not None
    assert repo.poll_state == "blocked"
    assert error in repo.poll_error and hint in repo.poll_hint
    assert "hf_wrong_token" not in repo.poll_error + repo.poll_hint
    with world.store.read() as session:
        assert session.query(Transfer).count() == 0


def test_a_429_waits_for_the_reset_the_server_names(world: World, hub: FakeHub) -> None:
    make_model_repo(hub, "alice/tiny", shards=1, shard_size=1024)
    world.add("alice/tiny")
    hub.faults.rate_limit(where="resolve", times=1, reset_in=42)

    result = world.poll("alice/tiny")

    repo = world.repo("alice/tiny")
    assert result.error is not None and repo.poll_state == "waiting"
    assert "rate-limited" in repo.poll_error and "429" in repo.poll_error
    assert repo.next_poll_at is not None
    assert timedelta(seconds=40) < repo.next_poll_at - utcnow() <= timedelta(seconds=42)
    # Polled again before the reset: relayd waits on, without asking the Hub.
    hub.reset_counters()
    paced = world.poll("alice/tiny")
    assert paced.error is not None and paced.error.startswith("paced: the Hub's 'resolvers' rate limit")
    assert hub.hub_log.snapshot() == []
    world.source.client.budget().clock = lambda: time.monotonic() + 43
    assert world.poll("alice/tiny").changed


def test_a_disabled_repo_blocks(world: World, hub: FakeHub) -> None:
    make_model_repo(hub, "alice/tiny", shards=1, shard_size=1024)
    hub.update_repo("alice/tiny", disabled=True)  # 403 "Access to this resource is disabled."
    world.add("alice/tiny")

    world.poll("alice/tiny")

    repo = world.repo("alice/tiny")
    assert repo.poll_state == "blocked"
    assert repo.poll_error == f"alice/tiny is disabled on {hub.endpoint}"


@pytest.mark.parametrize("with_code", [False, True])
def test_a_missing_repo_asked_anonymously_blocks_as_not_found(
    world: World, hub: FakeHub, with_code: bool
) -> None:
    hub.anonymous_repo_not_found_code = with_code  # the Hub sends no X-Error-Code; some say it does
    world.use(hub_config(hub.endpoint, token=None))
    world.add("alice/missing")

    world.poll("alice/missing")

    repo = world.repo("alice/missing")
    assert repo.poll_state == "blocked"
    assert repo.poll_error == f"model alice/missing was not found on {hub.endpoint}"
    assert "if it is private, set a token" in repo.poll_hint


def test_every_answer_tells_relayd_what_is_left_of_each_bucket(world: World, hub: FakeHub) -> None:
    make_model_repo(hub, "alice/tiny", shards=2, shard_size=4096)
    world.add("alice/tiny")

    world.poll("alice/tiny")  # a HEAD of its own (resolvers), then the tree through HfApi (api)

    pages = len([r for r in hub.hub_log.snapshot() if "/tree/" in r.path])
    left = {
        state.name: (state.remaining, state.quota, state.window)
        for state in world.source.client.rate_limits()
    }
    assert left == {"resolvers": (4999, 5000, 300), "api": (1000 - pages, 1000, 300)}
    assert all(0 < state.resets_in <= 300 for state in world.source.client.rate_limits())


def test_polls_are_paced_to_stay_inside_the_window(tmp_path: Path) -> None:
    now = [1_000_000.0]
    with FakeHub(tmp_path / "paced", clock=lambda: now[0]) as hub:
        hub.add_token(TOKEN, user="alice")
        hub.rate_limits.quotas["free"]["resolvers"] = 5
        make_model_repo(hub, "alice/tiny", shards=1, shard_size=1024)
        world = World(tmp_path, hub)
        world.source.client.budget().clock = lambda: now[0]
        world.add("alice/tiny")

        results = [world.poll("alice/tiny") for _ in range(5)]

        heads = [r for r in hub.hub_log.snapshot() if "/resolve/" in r.path]
        assert [r.error for r in results[:4]] == [None] * 4
        assert len(heads) == 4, "the fifth poll was not sent: one call of the window is kept in reserve"
        assert all(r.status != 429 for r in hub.hub_log.snapshot())
        repo = world.repo("alice/tiny")
        assert repo.poll_state == "waiting"
        assert repo.poll_error.startswith("paced: the Hub's 'resolvers' rate limit is nearly used up (1 of 5")
        assert timedelta(seconds=290) < repo.next_poll_at - utcnow() <= timedelta(seconds=301)

        now[0] += 300  # the window is over
        assert world.poll("alice/tiny").error is None
        assert world.repo("alice/tiny").poll_state == "ok"
        assert len([r for r in hub.hub_log.snapshot() if "/resolve/" in r.path]) == 5
        world.store.close()


def test_polling_without_a_token_warns_once(
    world: World, hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    make_model_repo(hub, "alice/tiny", shards=1, shard_size=1024)
    make_model_repo(hub, "alice/other", shards=1, shard_size=1024)
    world.add("alice/tiny")
    world.add("alice/other")
    world.poll("alice/tiny")  # with a token: no warning
    world.use(hub_config(hub.endpoint, token=None))

    with caplog.at_level(logging.WARNING, logger="relayd.hub"):
        for _ in range(3):
            world.poll("alice/tiny")
            world.poll("alice/other")
        world.use(hub_config(hub.endpoint, token=None))  # a reload builds a new source
        world.poll("alice/tiny")

    warnings = [r.getMessage() for r in caplog.records if r.name == "relayd.hub"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"polling {hub.endpoint} without a token: the Hub gives anonymous callers")
    assert "hub.token_env" in warnings[0]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_retry(world: World, hub: FakeHub, status: int) -> None:
    make_model_repo(hub, "alice/tiny", shards=1, shard_size=1024)
    world.add("alice/tiny")
    hub.faults.server_error(status, where="resolve", times=1)

    world.poll("alice/tiny")

    repo = world.repo("alice/tiny")
    assert repo.poll_state == "waiting" and f"({status})" in repo.poll_error
    assert world.poll("alice/tiny").changed
    assert world.repo("alice/tiny").poll_state == "ok"


def test_an_unreachable_endpoint_retries(world: World) -> None:
    world.use(hub_config(f"http://127.0.0.1:{free_port()}"))
    world.add("alice/tiny")

    world.poll("alice/tiny")

    repo = world.repo("alice/tiny")
    assert repo.poll_state == "waiting" and "cannot reach" in repo.poll_error


def test_a_listing_that_changes_under_a_pinned_commit_is_refused(world: World, hub: FakeHub) -> None:
    make_model_repo(hub, "alice/tiny", shards=1, shard_size=1024)
    repo = RepoSpec(name="alice/tiny", every=60, route=("download",))
    world.store.add_repo(repo)
    row = world.repo("alice/tiny")
    commit = hub.head("alice/tiny")
    first = world.source.list_files(row, commit)
    assert world.source.list_files(row, commit) == first

    def grow(repo_id: str, sha: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {**entry, "size": entry["size"] + 1} if entry["path"] == "README.md" else entry
            for entry in entries
        ]

    hub.tree_hook = grow
    with pytest.raises(Permanent, match="changed under a pinned commit"):
        world.source.list_files(row, commit)


def _duplicate(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return entries + [entry for entry in entries if entry["type"] == "file"][:1]


def _size(value: object) -> Any:
    def change(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**entry, "size": value} if entry["path"] == "config.json" else entry for entry in entries]

    return change


def _drop_oid(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in entry.items() if k != "oid"} for entry in entries]


def _lfs_size(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**entry, "lfs": {**entry["lfs"], "size": entry["lfs"]["size"] + 1}} if "lfs" in entry else entry
        for entry in entries
    ]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_duplicate, "twice"),
        (_size(-1), "the size -1"),
        (_size(10**15), "absurd size"),
        (_size("12"), "the size '12'"),
        (_drop_oid, "malformed"),
        (_lfs_size, "two sizes"),
    ],
)
def test_hostile_listings_refuse_the_snapshot(world: World, hub: FakeHub, change: Any, reason: str) -> None:
    make_model_repo(hub, "alice/tiny", shards=1, shard_size=1024)
    hub.tree_hook = lambda repo_id, sha, entries: change(entries)
    world.add("alice/tiny")

    result = world.poll("alice/tiny")

    repo = world.repo("alice/tiny")
    assert result.error is not None and reason in result.error
    assert repo.poll_state == "blocked" and reason in repo.poll_error
    with world.store.read() as session:
        assert session.query(Snapshot).one().state == "refused"
        assert session.query(Transfer).count() == 0
    hub.reset_counters()
    assert not world.poll("alice/tiny").changed, "the refused head is not listed again"
    assert len(hub.hub_log.snapshot()) == 1


def test_check_listing_refuses_non_text_paths() -> None:
    with pytest.raises(Permanent, match="not text"):
        check_listing([FileSpec(path=7, size=1, lfs=False, git_blob_id="0" * 40)])  # type: ignore[arg-type]


def test_the_token_can_come_from_the_environment(
    world: World, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_model_repo(hub, "alice/private", shards=1, shard_size=1024, private=True)
    world.add("alice/private")
    config = hub_config(hub.endpoint, token=None)
    world.use(HubConfig(**{**config.__dict__, "token": SecretRef("hub.token", env="RELAYD_TEST_HF_TOKEN")}))

    world.poll("alice/private")
    assert world.repo("alice/private").poll_state == "blocked"

    monkeypatch.setenv("RELAYD_TEST_HF_TOKEN", TOKEN)
    world.store.retry("alice/private")
    result = world.poll("alice/private")
    assert result.changed and result.error is None
