"""The real daemon and failures: a poll that fails transiently is retried with backoff (not an hour
later), and `relayctl status` shows a killed daemon as dead and its transfers as interrupted, a stopped
one as stopped; looking at the instance lock never keeps a daemon from starting."""

from __future__ import annotations

import fcntl
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relayd.catalogue import queries
from relayd.catalogue.store import RepoSpec
from relayd.config import load_config
from relayd.instance_lock import instance_lock
from relayd_sandbox.hub import FakeHub, make_model_repo
from tests.support.daemonbox import DaemonSandbox

MiB = 1024 * 1024
TOKEN = "hf_alice_0123456789"


def status_json(box: DaemonSandbox, *args: str) -> dict[str, Any]:
    result = box.relayctl("status", "--json", *args)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_a_poll_that_fails_transiently_is_retried_with_backoff(
    sandbox: DaemonSandbox, tmp_path: Path
) -> None:
    with FakeHub(tmp_path / "hub") as hub:
        hub.add_token(TOKEN, user="alice")
        make_model_repo(hub, "alice/tiny", shards=1, shard_size=4096, tokenizer_size=1024)
        failing = hub.faults.server_error(503, where="resolve", times=2)
        sandbox.write_config(extra=f'[hub]\nendpoint = "{hub.endpoint}"\ntoken = "{TOKEN}"\n')
        # Polled every hour: only a retry with backoff (retry.initial = 0.2s here) gets a snapshot soon.
        sandbox.store.add_repo(RepoSpec(name="alice/tiny", every=3600, route=("download",)))
        sandbox.start()
        sandbox.wait_for(lambda: failing.hits == 2, what="two failed polls")
        sandbox.wait_for(lambda: len(sandbox.snapshots()) == 1, what="the poll retried after the 503s")
        assert sandbox.snapshots()[0].commit == hub.head("alice/tiny")
        assert "poll failed (attempt 2), retrying in" in sandbox.log()
        repo = sandbox.store.repo("alice/tiny")
        assert repo is not None and (repo.poll_state, repo.poll_attempts) == ("ok", 0)


def test_status_shows_a_killed_daemon_as_dead_and_nothing_as_running(sandbox: DaemonSandbox) -> None:
    sandbox.write_config(max_rate="2 MB")
    sandbox.make_repo("acme/slow", {"one.bin": 6 * MiB, "two.bin": 6 * MiB})
    process = sandbox.start()
    sandbox.wait_for(
        lambda: (
            any(piece.done for piece in sandbox.pieces())
            and status_json(sandbox)["repos"][0]["hops"][0]["states"]["running"] > 0
        ),
        what="copying to start",
    )
    alive = status_json(sandbox)
    assert alive["daemon"]["state"] == "running" and alive["daemon"]["pid"] == process.pid

    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)

    summary = status_json(sandbox)
    assert summary["daemon"]["state"] == "dead", summary["daemon"]
    assert summary["daemon"]["hint"]
    (hop,) = summary["repos"][0]["hops"]
    assert hop["states"]["running"] == 0 and hop["states"]["interrupted"] > 0
    assert hop["rate"] == 0 and summary["repos"][0]["rate"] == 0
    detail = status_json(sandbox, "acme/slow")
    states = [step["state"] for item in detail["files"] for step in item["hops"]]
    assert "running" not in states and "interrupted" in states
    assert all(step["rate"] is None for item in detail["files"] for step in item["hops"])
    text = sandbox.relayctl("status", "acme/slow").stdout
    assert text.startswith("DAEMON DEAD: gone (pid ")
    assert "interrupted" in text and "(daemon not running)" in text
    summary_text = sandbox.relayctl("status").stdout
    assert summary_text.startswith("DAEMON DEAD") and "interrupted" in summary_text

    # Started again, it runs; stopped with SIGTERM, it says so.
    again = sandbox.start()
    sandbox.wait_for(lambda: sandbox.log().count(" serving ") == 2, what="the restart")
    assert status_json(sandbox)["daemon"]["state"] == "running"
    again.send_signal(signal.SIGTERM)
    assert again.wait(30) == 0, sandbox.log()
    stopped = status_json(sandbox)
    assert stopped["daemon"]["state"] == "stopped"
    assert stopped["repos"][0]["hops"][0]["states"]["running"] == 0
    assert sandbox.relayctl("status").stdout.startswith("DAEMON STOPPED: stopped (pid ")


def test_a_status_probe_of_the_instance_lock_never_keeps_a_daemon_from_starting(
    tmp_path: Path, make_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(make_config(tmp_path))
    lock = queries.instance_lock_path(tmp_path / "catalogue.db")
    lock.touch()
    assert queries.lock_held(lock) is False
    with lock.open("rb") as probe:
        fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # what lock_held holds for an instant
        waits: list[float] = []

        def probe_done(seconds: float) -> None:  # the daemon waits once: the probe ends meanwhile
            waits.append(seconds)
            fcntl.flock(probe, fcntl.LOCK_UN)

        monkeypatch.setattr("relayd.instance_lock.time.sleep", probe_done)
        with instance_lock(config) as held:
            assert held == lock
            assert queries.lock_held(lock) is True
        assert len(waits) == 1
    assert queries.lock_held(lock) is False
    assert queries.lock_held(tmp_path / "no-such.lock") is None
