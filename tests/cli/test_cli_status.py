"""relayctl status: blocked first, the per-hop arithmetic, the documented JSON shape, the live view, and
what the status path imports."""

from __future__ import annotations

import fcntl
import json
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from claimkit import OWNER, claim
from doctables import check_shape, documented_tables

from relayd.catalogue import migrate, queries
from relayd.catalogue.db import make_engine
from relayd.catalogue.schema import BLOCKED, POLL_BLOCKED, POLL_WAITING, WAITING
from relayd.catalogue.store import FileSpec, HopRules, RepoSpec, Store, utcnow

if TYPE_CHECKING:
    from conftest import Relayctl

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
    stuck = next(line for line in lines if line.startswith("  org/stuck  model@main"))
    assert "3 files 600 B" in stuck
    assert "local_copy 1/3 100 B/600 B (1 pending, 1 blocked)" in stuck
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
    for path in ("one.bin", "two.bin"):
        finish(store, "fetch", path)
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
    text = relayctl("status", "org/dedup").stdout
    assert "known.bin  100 B  local_copy done (already there)" in text
    assert "new.bin  200 B  local_copy done" in text and "new.bin  200 B  local_copy done (" not in text


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

    from relayd.cli.doctor import WARN, daemon_row

    relayctl.store.publish("daemon", {"pid": 4242, "version": "test", "state": "running"})
    queries.instance_lock_path(relayctl.db).touch()  # a lock file nobody holds
    reader = queries.SqliteReader(relayctl.db)
    try:
        row = daemon_row(reader, datetime.now(UTC))
    finally:
        reader.close()
    status = json.loads(relayctl("status", "--json").stdout)["daemon"]
    assert row.status == WARN and row.detail == status["detail"] and row.hint == status["hint"]
