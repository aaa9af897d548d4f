"""relayctl status: blocked first, the per-hop arithmetic, the documented JSON shape, the live view, and
what the status path imports."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner

from relayd.catalogue import migrate, queries
from relayd.catalogue.db import make_engine
from relayd.catalogue.schema import BLOCKED, POLL_BLOCKED, POLL_WAITING, WAITING
from relayd.catalogue.store import FileSpec, HopRules, RepoSpec, Store, WorkerBeat, utcnow
from relayd.cli import cli
from tests.support.claimkit import OWNER, claim
from tests.support.doctables import check_shape, documented_tables

if TYPE_CHECKING:
    from tests.support.relayctl import Relayctl

DOC = Path(__file__).resolve().parents[2] / "docs" / "status-json.md"


# -- catalogue builders ------------------------------------------------------------------------------


def add_repo(
    store: Store, name: str, route: tuple[str, ...], files: dict[str, int], commit: str = "a"
) -> int:
    store.add_repo(RepoSpec(name=name, every=600, route=route))
    repo = store.repo(name)
    assert repo is not None
    specs = [
        FileSpec(path=path, size=size, lfs=False, git_blob_id=f"{name}:{path}:{size}")
        for path, size in files.items()
    ]
    store.record_snapshot(repo.id, commit * 40, specs)
    return repo.id


def finish(store: Store, hop: str, path: str) -> None:
    store.complete(claim(store, hop, path), OWNER, {"where": hop})


def block(store: Store, hop: str, path: str, error: str, hint: str) -> None:
    transfer_id = claim(store, hop, path)
    store.defer(transfer_id, OWNER, state=BLOCKED, error=error, error_class="auth", hint=hint)


# -- tests ---------------------------------------------------------------------------------------------


@pytest.fixture
def mixed(relayctl: Relayctl) -> Relayctl:
    """org/calm: two pending files. org/stuck: one blocked, one done, one pending."""
    store = relayctl.store
    add_repo(store, "org/calm", ("local_copy",), {"a.bin": 10, "b.bin": 20})
    add_repo(store, "org/stuck", ("local_copy",), {"done.bin": 100, "stuck.bin": 200, "later.bin": 300})
    finish(store, "local_copy", "done.bin")
    block(store, "local_copy", "stuck.bin", "the token expired", "log in again with `relayd login`")
    store.publish("daemon", {"pid": 4242, "state": "running"})
    store.publish("drive.token", {"expires_at": "2026-12-01T00:00:00Z", "token": "s3cr3t-value"})
    return relayctl


def test_status_summary_lists_blocked_items_first(mixed: Relayctl) -> None:
    result = mixed("status")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "BLOCKED 1"
    assert lines[1].startswith("  org/stuck  local_copy  stuck.bin: the token expired [auth]")
    assert lines[2] == "      hint: log in again with `relayd login`"
    repos = [line.split()[0] for line in lines if line.startswith("  org/")][1:]
    assert repos == ["org/stuck", "org/calm"]  # the repo with something blocked first
    stuck = lines[lines.index("REPOS 2") + 1]
    # 100 of 600 bytes: a sixth of the way, one file of three copied, one blocked.
    assert re.search(r"  16%  copy 1/3  1 blocked$", stuck), stuck
    service = lines[lines.index("SERVICE") :]
    assert any(line.startswith("  daemon") and "pid=4242" in line for line in service)
    assert "s3cr3t-value" not in result.stdout


def test_status_repo_lists_files_blocked_first(mixed: Relayctl) -> None:
    result = mixed("status", "org/stuck")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    files = lines[lines.index("FILES 3") + 1 :]
    assert files[0].startswith("  stuck.bin  200 B  local_copy blocked")
    assert files[1] == "      local_copy: the token expired [auth] (attempt 1)"
    assert files[2] == "      hint: log in again with `relayd login`"
    assert files[3].startswith("  later.bin  300 B  local_copy pending")
    assert files[4].startswith("  done.bin  100 B  local_copy done")


def test_status_json_matches_the_documented_shape(mixed: Relayctl) -> None:
    tables = documented_tables(DOC)
    seen: set[tuple[str, str]] = set()
    summary = json.loads(mixed("status", "--json").stdout)
    check_shape(summary, "Summary document", tables, seen)
    assert summary["format"] == 1
    assert [item["path"] for item in summary["blocked"]] == ["stuck.bin"]
    assert [repo["name"] for repo in summary["repos"]] == ["org/stuck", "org/calm"]
    hop = summary["repos"][0]["hops"][0]
    assert (hop["files_done"], hop["bytes_done"], hop["states"]["blocked"]) == (1, 100, 1)
    token = next(fact for fact in summary["service"] if fact["key"] == "drive.token")
    assert token["value"] == {"expires_at": "2026-12-01T00:00:00Z", "token": "***"}

    detail = json.loads(mixed("status", "--json", "org/stuck").stdout)
    check_shape(detail, "Repo document", tables, seen)
    assert [item["path"] for item in detail["files"]] == ["stuck.bin", "later.bin", "done.bin"]
    assert [item["state"] for item in detail["files"]] == ["blocked", "pending", "done"]


def test_every_documented_field_appears(relayctl: Relayctl) -> None:
    """A catalogue with a poll blocked, a finished snapshot and a running, waiting file uses every field."""
    store = Store(relayctl.url, rules=HopRules(finishes_snapshot=frozenset({"push"})))
    relayctl.store  # noqa: B018 - creates the catalogue at head
    route = ("fetch", "push")
    add_repo(store, "org/full", route, {"one.bin": 1000, "two.bin": 2000})
    store.complete(claim(store, "fetch", "one.bin"), OWNER, {"skipped": True})  # a byte avoided
    finish(store, "fetch", "two.bin")
    for path in ("one.bin", "two.bin"):
        finish(store, "push", path)
    finish_id = store.claim("push", OWNER, 600)
    assert finish_id is not None and finish_id.snapshot_id is not None
    store.defer(finish_id.id, OWNER, state=BLOCKED, error="push refused", error_class="auth", hint="fix it")
    add_repo(store, "org/busy", route, {"run.bin": 5000, "wait.bin": 100})
    running = claim(store, "fetch", "run.bin")
    store.progress(running, moved=1000, rate=500.0, bytes_done=1000)
    waiting = claim(store, "fetch", "wait.bin")
    later = utcnow() + timedelta(minutes=5)
    store.defer(waiting, OWNER, state=WAITING, error="reset", error_class="network", next_attempt_at=later)
    busy = store.repo("org/busy")
    assert busy is not None
    store.record_poll_state(busy.id, state=POLL_BLOCKED, error="gated", hint="accept the terms")
    full = store.repo("org/full")
    assert full is not None
    store.record_poll_state(
        full.id, state=POLL_WAITING, error="503", error_class="server", next_poll_at=later
    )
    assert len(store.surface_stuck(utcnow())) == 2  # the waiting file and the waiting poll
    store.publish("staging", {"used": 1, "free": 2})
    store.publish("daemon", {"pid": 4242, "version": "test", "state": "running"})
    # A daemon elsewhere that serves only push: fetch, which both repos wait for, has none.
    store.beat(WorkerBeat("vm-1", "vm", "elsewhere", 7, ("push",), "test", utcnow()))
    store.close()

    tables = documented_tables(DOC)
    seen: set[tuple[str, str]] = set()
    check_shape(json.loads(relayctl("status", "--json").stdout), "Summary document", tables, seen)
    for name in ("org/full", "org/busy"):
        check_shape(json.loads(relayctl("status", "--json", name).stdout), "Repo document", tables, seen)
    relayctl("add", "org/globs", "--route", "local_copy", "--include", "*.json", "--exclude", "*.bin")
    check_shape(json.loads(relayctl("list", "--json").stdout), "List document", tables, seen)
    documented = {(table, path) for table, rows in tables.items() for path in rows}
    assert documented - seen == set()

    # fetch (both repos' first hop, files pending) and local_copy (org/globs') have no daemon.
    summary = json.loads(relayctl("status", "--json").stdout)
    assert [item["hop"] for item in summary["unserved"]] == ["fetch", "local_copy"]
    hint = 'no daemon serves fetch: start one with daemon.hops = ["fetch"] (docs/sites.md)'
    assert summary["unserved"][0]["hint"] == hint
    assert f"NOT SERVED {hint}" in relayctl("status").stdout
    full = json.loads(relayctl("status", "--json", "org/full").stdout)
    assert full["repo"]["finish"]["state"] == "blocked"
    assert full["repo"]["blocked"] == 1
    assert [hop["files_done"] for hop in full["repo"]["hops"]] == [2, 2]
    assert [hop["states"]["blocked"] for hop in full["repo"]["hops"]] == [0, 0]
    busy_doc = json.loads(relayctl("status", "--json", "org/busy").stdout)
    run = next(item for item in busy_doc["files"] if item["path"] == "run.bin")
    assert run["hops"][0]["rate"] == 500.0
    assert run["hops"][0]["eta_seconds"] == 8.0
    text = relayctl("status", "org/busy").stdout
    assert "fetch running 1000 B/4.9 KiB 500 B/s ETA 8s" in text
    assert "retry in 4m" in text


def test_summary_arithmetic_agrees_with_the_files(relayctl: Relayctl) -> None:
    """The summary derives each hop's progress from the open transfers; check it against a file-by-file
    count, across a second snapshot that keeps, changes, adds and drops files."""
    store = relayctl.store
    route = ("fetch", "upload", "pull")
    first = {"keep.bin": 100, "change.bin": 200, "drop.bin": 300, "partial.bin": 400}
    repo_id = add_repo(store, "org/hist", route, first)
    for hop in route:
        finish(store, hop, "keep.bin")
    finish(store, "fetch", "change.bin")
    finish(store, "fetch", "drop.bin")
    finish(store, "upload", "drop.bin")
    second = [
        FileSpec(path="keep.bin", size=100, lfs=False, git_blob_id="org/hist:keep.bin:100"),
        FileSpec(path="change.bin", size=250, lfs=False, git_blob_id="changed"),
        FileSpec(path="partial.bin", size=400, lfs=False, git_blob_id="org/hist:partial.bin:400"),
        FileSpec(path="new.bin", size=50, lfs=False, git_blob_id="new"),
    ]
    store.record_snapshot(repo_id, "b" * 40, second)
    finish(store, "fetch", "partial.bin")
    partial = claim(store, "upload", "partial.bin")
    store.progress(partial, moved=150, rate=10.0, bytes_done=150)
    block(store, "fetch", "new.bin", "no", "yes")

    data = json.loads(relayctl("status", "--json", "org/hist").stdout)
    assert data["repo"]["snapshot"]["files"] == 4
    assert data["repo"]["snapshot"]["bytes"] == 800
    for index, hop in enumerate(data["repo"]["hops"]):
        states = [item["hops"][index]["state"] for item in data["files"]]
        assert hop["files_total"] == len(data["files"])
        assert hop["files_done"] == states.count("done")
        assert hop["not_reached"] == states.count(None)
        for state in ("pending", "running", "waiting", "blocked"):
            assert hop["states"][state] == states.count(state), (hop["hop"], state)
        assert hop["bytes_done"] == sum(item["hops"][index]["bytes_done"] for item in data["files"])
    assert [hop["files_done"] for hop in data["repo"]["hops"]] == [2, 1, 1]
    assert [hop["bytes_done"] for hop in data["repo"]["hops"]] == [500, 250, 100]


def test_the_sqlalchemy_reader_agrees_with_sqlite3(mixed: Relayctl) -> None:
    """Other databases go through SQLAlchemy's text(); the same SQL must give the same answers."""
    direct = queries.SqliteReader(mixed.db)
    engine = queries.EngineReader(make_engine(mixed.url, immediate=False))
    try:
        assert queries.summary(direct) == queries.summary(engine)
        assert queries.repo_detail(direct, "org/stuck") == queries.repo_detail(engine, "org/stuck")
        assert queries.schema_revision(direct) == queries.schema_revision(engine) is not None
    finally:
        direct.close()
        engine.close()


def test_status_creates_a_new_catalogue_at_head(relayctl: Relayctl) -> None:
    result = relayctl("status")
    assert result.exit_code == 0
    assert "REPOS 0" in result.stdout
    assert "no heartbeat published" in result.stdout
    head = migrate.head_revision()
    assert relayctl("db", "current").stdout.splitlines() == [f"current: {head}", f"head: {head}"]


def test_watch_redraws_until_ctrl_c(mixed: Relayctl, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("relayd.cli.status.time.sleep", sleep)
    result = mixed("status", "--watch", "--interval", "0.5")
    assert result.exit_code == 0
    assert sleeps == [0.5, 0.5]
    assert "BLOCKED 1" in result.stdout
    assert "Ctrl-C to quit" in result.stdout
    assert mixed("status", "--watch", "--json").exit_code == 2
    assert mixed("status", "--watch", "--interval", "0").exit_code == 2


def test_the_status_path_imports_no_heavy_modules(mixed: Relayctl) -> None:
    """status must answer fast: no SQLAlchemy (for SQLite), rich, huggingface_hub, aligo, Alembic or hop."""
    result = mixed.heavy_imports_of("status", "--json")
    assert json.loads(result.stdout)["kind"] == "summary"
    assert result.stderr.strip() == "[]"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:////var/lib/relayd/catalogue.db", "/var/lib/relayd/catalogue.db"),
        ("sqlite:///relative.db", "relative.db"),
        ("sqlite+pysqlite:////tmp/c.db", "/tmp/c.db"),
        ("sqlite:///:memory:", None),
        ("sqlite://", None),
        ("sqlite:////tmp/c.db?mode=ro", None),  # options: SQLAlchemy reads the URL
        ("sqlite:////tmp/with%20space.db", None),
        ("postgresql://relay@db/relayd", None),
    ],
)
def test_which_urls_are_read_with_sqlite3(url: str, path: str | None) -> None:
    assert queries.sqlite_file(url) == (None if path is None else Path(path))


def test_a_transfer_the_destination_already_had_shows_as_skipped(relayctl: Relayctl) -> None:
    store = relayctl.store
    add_repo(store, "org/dedup", ("local_copy",), {"known.bin": 100, "new.bin": 200})
    store.complete(claim(store, "local_copy", "known.bin"), OWNER, {"oid": "x", "skipped": True})
    finish(store, "local_copy", "new.bin")
    document = json.loads(relayctl("status", "org/dedup", "--json").stdout)
    skipped = {item["path"]: item["hops"][0]["skipped"] for item in document["files"]}
    assert skipped == {"known.bin": True, "new.bin": False}
    reasons = {item["path"]: item["hops"][0]["skipped_reason"] for item in document["files"]}
    assert reasons == {"known.bin": "server_had_it", "new.bin": None}
    assert document["bytes_avoided"]["snapshot"] == [
        {"hop": "local_copy", "reason": "server_had_it", "files": 1, "bytes": 100}
    ]
    text = relayctl("status", "org/dedup").stdout
    assert "known.bin  100 B  local_copy skipped (destination had it)" in text
    assert "new.bin  200 B  local_copy done" in text and "new.bin  200 B  local_copy done (" not in text
    assert "bytes avoided, this snapshot: 100 B (copy 100 B destination had it)" in text


def test_bytes_avoided_count_unchanged_files_in_later_snapshots(relayctl: Relayctl) -> None:
    store = relayctl.store
    add_repo(store, "org/two", ("local_copy",), {"same.bin": 300, "old.bin": 50})
    finish(store, "local_copy", "same.bin")
    finish(store, "local_copy", "old.bin")
    repo = store.repo("org/two")
    assert repo is not None
    same = FileSpec(path="same.bin", size=300, lfs=False, git_blob_id="org/two:same.bin:300")
    store.record_snapshot(
        repo.id, "b" * 40, [same, FileSpec(path="new.bin", size=70, lfs=False, git_blob_id="n")]
    )
    document = json.loads(relayctl("status", "org/two", "--json").stdout)
    assert document["bytes_avoided"]["snapshot"] == [
        {"hop": "local_copy", "reason": "unchanged", "files": 1, "bytes": 300}
    ]
    assert document["bytes_avoided"]["total"] == document["bytes_avoided"]["snapshot"]


# -- stuck: failing for longer than retry.surface_after, still retrying ----------------------------------


def test_status_lists_what_is_stuck_with_attempts_how_long_and_what_to_check(relayctl: Relayctl) -> None:
    store = relayctl.store
    store.webhooks = ("http://127.0.0.1:9/hook",)
    add_repo(store, "org/slow", ("local_copy",), {"a.bin": 10, "b.bin": 20, "c.bin": 30})
    later = utcnow() + timedelta(minutes=5)
    for attempt in range(4):  # four failed attempts in one streak, the last one due in 5 minutes
        due = later if attempt == 3 else utcnow()
        failed = claim(store, "local_copy", "a.bin")
        store.defer(
            failed, OWNER, state=WAITING, error="connection reset", error_class="network", next_attempt_at=due
        )
    young = claim(store, "local_copy", "b.bin")
    block(store, "local_copy", "c.bin", "the token expired", "log in again")
    store.defer(young, OWNER, state=WAITING, error="timed out", error_class="timeout", next_attempt_at=later)
    # Surface what failed at or before the first defer of b.bin: a.bin only (c.bin is blocked, not stuck).
    with store.read() as session:
        from relayd.catalogue.schema import Transfer

        cutoff = min(t.failing_since for t in session.query(Transfer) if t.failing_since is not None)
    assert [notice.path for notice in store.surface_stuck(cutoff)] == ["a.bin"]
    assert store.surface_stuck(utcnow()) != []  # b.bin now; a.bin is not notified twice
    assert [notice.path for notice in store.surface_stuck(utcnow())] == []

    lines = relayctl("status").stdout.splitlines()
    start = lines.index("STUCK 2 (failing for longer than retry.surface_after; still retrying)")
    assert lines[start + 1] == "  org/slow  local_copy  a.bin: connection reset [network]"
    assert lines[start + 2].startswith("      4 attempt(s), failing for ")
    assert ", next try in 4m" in lines[start + 2]
    assert lines[start + 3] == f"      check: {queries.stuck_hint('network')}"
    assert lines[start + 4] == "  org/slow  local_copy  b.bin: timed out [timeout]"
    assert lines.index("BLOCKED 1") < start < lines.index("REPOS 1")

    summary = json.loads(relayctl("status", "--json").stdout)
    assert (summary["stuck_total"], summary["stuck_truncated"]) == (2, False)
    first = summary["stuck"][0]
    assert (first["kind"], first["repo"], first["hop"], first["path"]) == (
        "transfer",
        "org/slow",
        "local_copy",
        "a.bin",
    )
    assert (first["state"], first["attempts"], first["error_class"]) == ("waiting", 4, "network")
    assert first["failing_seconds"] >= 0 and first["next_attempt_at"] is not None
    assert first["hint"] == queries.stuck_hint("network")
    detail = json.loads(relayctl("status", "org/slow", "--json").stdout)
    assert [item["path"] for item in detail["stuck"]] == ["a.bin", "b.bin"]
    assert "STUCK 2" in relayctl("status", "org/slow").stdout
    with store.read() as session:
        from relayd.catalogue.schema import Notification

        stuck = [row.payload["body"] for row in session.query(Notification) if row.kind == "stuck"]
    assert [(body["path"], body["attempts"]) for body in stuck] == [("a.bin", 4), ("b.bin", 1)]

    # Retried by a person: a new streak, no longer stuck.
    store.retry("org/slow")
    assert json.loads(relayctl("status", "--json").stdout)["stuck_total"] == 0
    assert "STUCK" not in relayctl("status").stdout


# -- the daemon: running, stopped or dead ----------------------------------------------------------------


def daemon_state(relayctl: Relayctl) -> tuple[str, dict[str, Any], str]:
    """Return the daemon's state as status --json says it, the summary's only hop, and the text view."""
    document = json.loads(relayctl("status", "--json").stdout)
    return document["daemon"]["state"], document["repos"][0]["hops"][0], relayctl("status").stdout


def test_status_judges_the_daemon_by_its_heartbeat_and_its_instance_lock(relayctl: Relayctl) -> None:
    store = relayctl.store
    add_repo(store, "org/run", ("local_copy",), {"run.bin": 5000})
    running = claim(store, "local_copy", "run.bin")
    store.progress(running, moved=1000, rate=500.0, bytes_done=1000)

    state, hop, text = daemon_state(relayctl)
    assert state == "none" and hop["states"]["interrupted"] == 1 and hop["states"]["running"] == 0
    assert text.startswith("DAEMON NOT RUNNING: no relayd has published a heartbeat on this catalogue")

    store.publish("daemon", {"pid": 4242, "version": "test", "state": "running"})
    state, hop, text = daemon_state(relayctl)
    assert state == "running" and hop["states"]["running"] == 1 and hop["rate"] == 500.0
    assert not text.startswith("DAEMON")  # no lock file yet: the fresh heartbeat is believed

    lock = queries.instance_lock_path(relayctl.db)
    with lock.open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert daemon_state(relayctl)[0] == "running"
    # The lock is free, yet the daemon never said it stopped: killed.
    state, hop, text = daemon_state(relayctl)
    assert state == "dead" and hop["states"]["interrupted"] == 1 and hop["rate"] == 0
    assert text.startswith("DAEMON DEAD: gone (pid 4242, relayd test): its instance lock is free")
    assert "hint: its log says why" in text
    detail = json.loads(relayctl("status", "org/run", "--json").stdout)
    assert detail["daemon"]["state"] == "dead"
    (step,) = detail["files"][0]["hops"]
    assert (step["state"], step["rate"], step["eta_seconds"]) == ("interrupted", None, None)
    assert detail["files"][0]["state"] == "interrupted"
    assert (
        "run.bin  4.9 KiB  local_copy interrupted 1000 B/4.9 KiB (daemon not running)"
        in relayctl("status", "org/run").stdout
    )

    store.publish("daemon", {"pid": 4242, "version": "test", "state": "stopped"})
    state, _, text = daemon_state(relayctl)
    assert state == "stopped" and text.startswith("DAEMON STOPPED: stopped (pid 4242, relayd test)")

    # A heartbeat older than a minute, the lock still held: dead or hung.
    store.publish("daemon", {"pid": 4242, "version": "test", "state": "running"})
    with store._write() as session:
        from relayd.catalogue.schema import ServiceState

        session.query(ServiceState).filter(ServiceState.key == "daemon").update(
            {"updated_at": utcnow() - timedelta(minutes=2)}
        )
    with lock.open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        state, _, text = daemon_state(relayctl)
    assert state == "dead" and "last heartbeat 2m00s ago; it still holds its instance lock" in text


def test_doctor_and_status_agree_on_the_daemon(relayctl: Relayctl) -> None:
    from datetime import UTC, datetime

    from relayd.cli.doctor import WARN
    from relayd.cli.doctor_daemons import daemon_rows

    relayctl.store.publish("daemon", {"pid": 4242, "version": "test", "state": "running"})
    queries.instance_lock_path(relayctl.db).touch()  # a lock file nobody holds
    reader = queries.SqliteReader(relayctl.db)
    try:
        (row,) = daemon_rows(reader, datetime.now(UTC), ())
    finally:
        reader.close()
    status = json.loads(relayctl("status", "--json").stdout)["daemon"]
    assert row.status == WARN and row.detail == status["detail"] and row.hint == status["hint"]


# -- fitting a terminal ----------------------------------------------------------------------------------

ROUTE = ("download", "pan_upload", "vm_pull", "lfs_push")
LONG_HINT = (
    "accept the licence at https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct with the account "
    "that owns the token, then set hub.token_env or hub.token_file to that token and run relayctl retry"
)
LONG_POLL_ERROR = (
    "cannot reach https://huggingface.co for org/slow@main: the connection was reset while the Hub "
    "was answering, and it will be tried again in a while"
)


@pytest.fixture
def busy(relayctl: Relayctl) -> Relayctl:
    """Three repos on the full route: a long name half relayed, a short one downloading (one file
    waiting), a small one done; a gated file with a long hint; a poll waiting with a long error; a
    daemon whose heartbeat holds an unset value."""
    relayctl.store  # noqa: B018 - creates the catalogue at head
    store = Store(relayctl.url, rules=HopRules(finishes_snapshot=frozenset({"lfs_push"})))
    gib = 1 << 30

    def files(tag: str, count: int, size: int) -> dict[str, int]:
        return {f"{tag}-{index:05d}.safetensors": size for index in range(count)}

    add_repo(store, "meta-llama/Llama-3.1-8B-Instruct", ROUTE, files("llama", 8, 5 * gib))
    add_repo(store, "Qwen/Qwen2.5-0.5B", ROUTE, files("qwen", 8, gib // 2), commit="b")
    add_repo(store, "org/tiny", ROUTE, files("tiny", 3, 1000), commit="c")
    add_repo(store, "org/slow", ROUTE, files("slow", 1, 10), commit="d")
    for index in range(8):
        finish(store, "download", f"llama-{index:05d}.safetensors")
    for hop, count in (("pan_upload", 5), ("vm_pull", 3), ("lfs_push", 2)):
        for index in range(count):
            finish(store, hop, f"llama-{index:05d}.safetensors")
    running = claim(store, "pan_upload", "llama-00005.safetensors")
    store.progress(running, moved=gib, rate=40 * 2**20, bytes_done=gib)
    block(store, "vm_pull", "llama-00003.safetensors", "meta-llama/Llama-3.1-8B-Instruct is gated", LONG_HINT)
    for index in range(4):
        finish(store, "download", f"qwen-{index:05d}.safetensors")
    running = claim(store, "download", "qwen-00004.safetensors")
    store.progress(running, moved=gib // 4, rate=60 * 2**20, bytes_done=gib // 4)
    waiting = claim(store, "download", "qwen-00005.safetensors")
    later = utcnow() + timedelta(minutes=2)
    store.defer(waiting, OWNER, state=WAITING, error="reset", error_class="network", next_attempt_at=later)
    for hop in ROUTE:
        for index in range(3):
            finish(store, hop, f"tiny-{index:05d}.safetensors")
    store.complete(claim(store, "lfs_push", None), OWNER, {"commit": "c" * 40})
    slow = store.repo("org/slow")
    assert slow is not None
    store.record_poll_state(slow.id, state=POLL_WAITING, error=LONG_POLL_ERROR, next_poll_at=later)
    store.publish("daemon", {"pid": 4242, "version": "1.0", "state": "running", "running": 2, "site": None})
    store.close()
    return relayctl


def status_text(relayctl: Relayctl, *args: str, env: dict[str, str] | None = None) -> str:
    """Return what `relayctl status ARGS` writes to a pipe, with *env* ($COLUMNS unset unless given:
    pytest-xdist's workers set it)."""
    result = CliRunner().invoke(
        cli,
        ["-c", str(relayctl.config), "status", *args],
        env={"COLUMNS": None, **(env or {})},
        catch_exceptions=False,
        prog_name="relayctl",
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def repo_block(lines: list[str], name: str) -> list[str]:
    """Return the line of repo *name* in the REPOS section and the lines that continue it."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {name} "))
    end = start + 1
    while end < len(lines) and lines[end].startswith("      "):
        end += 1
    return lines[start:end]


@pytest.mark.parametrize("columns", [80, 60, 120])
def test_status_fits_the_terminal_and_cuts_nothing(busy: Relayctl, columns: int) -> None:
    text = status_text(busy, env={"COLUMNS": str(columns)})
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= columns, [line for line in lines if len(line) > columns]
    assert "\x1b" not in text  # not a terminal: no colour
    flat = " ".join(text.split())
    # Hints and errors wrap: each is there whole (a word longer than a line, such as a URL at 60
    # columns, is broken, but not cut).
    assert "".join(f"hint: {LONG_HINT}".split()) in "".join(text.split())
    assert "".join(f"poll: {LONG_POLL_ERROR}".split()) in "".join(text.split())
    # The service block: what is set, nothing shown as None.
    assert "None" not in text
    assert "pid=4242, version=1.0, state=running, running=2" in flat
    repos = lines[lines.index("REPOS 4") + 1 :]
    llama = " ".join(" ".join(repo_block(repos, "meta-llama/Llama-3.1-8B-Instruct")).split())
    # 5 GiB × 8 on each of four hops: 8 + 5.2 + 3 + 2 files' worth done (by bytes), of 32.
    assert "56%" in llama
    assert re.search(r"dl( 8/8|✓) up 5(/8)? vm 3(/8)? push 2(/8| of 8)", llama), llama
    assert "40 MiB/s ETA " in llama and "1 blocked" in llama
    qwen = repo_block(repos, "Qwen/Qwen2.5-0.5B")
    assert re.search(r"dl 4(/8)? up 0(/8)? vm 0(/8)? push 0(/8| of 8)", " ".join(qwen)), qwen
    assert "60 MiB/s ETA " in " ".join(qwen) and "1 waiting" in " ".join(qwen)
    tiny = repo_block(repos, "org/tiny")
    assert len(tiny) == 1 and "100%" in tiny[0] and tiny[0].endswith("done")
    if columns >= 80:
        # A name of ordinary length keeps its whole line, bar included; so does every repo at 120.
        assert len(qwen) == 1 or (len(qwen) == 2 and qwen[1].strip() == "1 waiting")
        assert "█" in qwen[0]
    if columns == 120:
        for name in ("meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-0.5B", "org/tiny"):
            block_lines = repo_block(repos, name)
            assert len(block_lines) == 1 and "█" in block_lines[0], block_lines


def test_status_detail_fits_the_terminal(busy: Relayctl) -> None:
    text = status_text(busy, "meta-llama/Llama-3.1-8B-Instruct", env={"COLUMNS": "60"})
    assert max(len(line) for line in text.splitlines()) <= 60
    flat = " ".join(text.split())
    assert "".join(f"hint: {LONG_HINT}".split()) in "".join(text.split())
    assert "llama-00005.safetensors 5.0 GiB download done" in flat
    assert "pan_upload running 1.0 GiB/5.0 GiB 40.0 MiB/s ETA 1m42s" in flat


def test_a_pipe_gets_whole_lines(busy: Relayctl) -> None:
    """Without $COLUMNS, output that is not a terminal is not wrapped: a grep finds a hint whole."""
    text = status_text(busy)
    assert f"      hint: {LONG_HINT}" in text.splitlines()
    assert "\x1b" not in text


def run_on_terminal(relayctl: Relayctl, columns: int, *, no_color: bool) -> str:
    """Run `relayctl status` in a new process whose stdout is a pseudo-terminal *columns* wide; return
    what it wrote."""
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "NO_COLOR")}
    if no_color:
        env["NO_COLOR"] = "1"
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "relayd.cli", "-c", str(relayctl.config), "status"],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(follower)
    written = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        written += chunk
    os.close(leader)
    assert process.wait(60) == 0, process.stderr.read() if process.stderr else ""
    return written.decode().replace("\r\n", "\n")


def test_colour_on_a_terminal_unless_no_color(busy: Relayctl) -> None:
    coloured = run_on_terminal(busy, 100, no_color=False)
    assert "\x1b[" in coloured
    plain = re.sub(r"\x1b\[[0-9;]*m", "", coloured)
    assert max(len(line) for line in plain.splitlines()) <= 100  # the terminal's own width
    assert "Qwen/Qwen2.5-0.5B" in plain and "BLOCKED 1" in plain
    no_color = run_on_terminal(busy, 100, no_color=True)
    assert "\x1b" not in no_color
    assert re.sub(r"\d+s ago", "", no_color) == re.sub(r"\d+s ago", "", plain)


# -- shell completion ----------------------------------------------------------------------------------


def complete(relayctl: Relayctl, words: str) -> list[str]:
    """Return what bash completion offers for the last word of *words* (click's bash_complete protocol)."""
    args = words.split()
    env = {
        "_RELAYCTL_COMPLETE": "bash_complete",
        "COMP_WORDS": " ".join(["relayctl", "-c", str(relayctl.config), *args]),
        "COMP_CWORD": str(len(args) + 2 + (1 if words.endswith(" ") else 0)),
    }
    result = CliRunner().invoke(cli, [], env=env, prog_name="relayctl")
    assert result.exit_code == 0, result.output
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]


def test_shell_completion_offers_repo_names(busy: Relayctl) -> None:
    assert complete(busy, "status Q") == ["Qwen/Qwen2.5-0.5B"]
    assert complete(busy, "pause org/") == ["org/slow", "org/tiny"]
    for command in ("remove", "resume", "retry", "whereis"):
        assert "org/tiny" in complete(busy, f"{command} "), command
    assert complete(busy, "retry --hop vm") == ["vm_pull"]
    script = subprocess.run(
        [sys.executable, "-m", "relayd.cli"],
        env={**os.environ, "_RELAYCTL_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "_RELAYCTL_COMPLETE=bash_complete" in script and "complete " in script


def test_completion_without_a_catalogue_offers_nothing_and_creates_none(relayctl: Relayctl) -> None:
    assert complete(relayctl, "status ") == []
    assert not relayctl.db.exists()


def test_hop_counts_grow_compact_before_a_line_wraps(busy: Relayctl) -> None:
    """Where the full counts do not fit, each hop's count is given alone and the files' total once, or a
    hop that is through shows ✓."""
    for columns, name, counts in (
        (72, "Qwen/Qwen2.5-0.5B", "  14%  dl 4 up 0 vm 0 push 0 of 8  60 MiB/s ETA 4m"),
        (60, "org/tiny", " 100%  dl✓ up✓ vm✓ push✓  done"),
    ):
        lines = status_text(busy, env={"COLUMNS": str(columns)}).splitlines()
        assert max(len(line) for line in lines) <= columns
        block = repo_block(lines[lines.index("REPOS 4") + 1 :], name)
        assert block[0].endswith(counts), block  # its flags ("1 waiting") may continue below
