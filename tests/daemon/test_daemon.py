"""relayd as a real process: drain on SIGTERM, resume after kill -9, one instance per catalogue,
relayctl-style writes while it runs, repos picked up without a restart, reloads, and sd_notify."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from relayd.catalogue.schema import DONE, RUNNING
from tests.support.daemonbox import DaemonSandbox

MiB = 1024 * 1024


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def partially_done(box: DaemonSandbox) -> bool:
    done = sum(1 for piece in box.pieces() if piece.done)
    return 4 <= done < len(box.pieces())


def test_once_relays_everything_and_exits(sandbox: DaemonSandbox) -> None:
    digests = sandbox.make_repo("acme/tiny", {"a.bin": 700_000, "b/c.json": 120})
    process = sandbox.start("--once")
    assert process.wait(60) == 0, sandbox.log()
    for path, digest in digests.items():
        assert sha256(sandbox.dest / "acme/tiny" / path) == digest
    assert all(t.state == DONE for t in sandbox.transfers())


def test_sigterm_drains_at_a_durable_point_and_exits_zero(sandbox: DaemonSandbox) -> None:
    sandbox.write_config(max_rate="2 MB")
    digests = sandbox.make_repo("acme/slow", {"model.bin": 8 * MiB})
    process = sandbox.start()
    sandbox.wait_for(lambda: partially_done(sandbox), what="some pieces copied")
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0, sandbox.log()
    assert time.monotonic() - started < 12
    assert "stopping after in-flight pieces" in sandbox.log()
    assert not [t for t in sandbox.transfers() if t.state == RUNNING]
    done_before = sum(1 for piece in sandbox.pieces() if piece.done)
    assert done_before >= 4
    sandbox.write_config()
    assert sandbox.start("--once").wait(60) == 0
    assert sha256(sandbox.dest / "acme/slow/model.bin") == digests["model.bin"]
    # A graceful stop loses nothing: no piece travelled twice.
    assert max(piece.sends for piece in sandbox.pieces()) == 1


def test_kill_9_then_restart_copies_again_at_most_one_piece_per_worker(sandbox: DaemonSandbox) -> None:
    sandbox.write_config(max_rate="3 MB")
    digests = sandbox.make_repo("acme/crash", {"one.bin": 6 * MiB, "two.bin": 6 * MiB})
    process = sandbox.start()
    sandbox.wait_for(lambda: partially_done(sandbox), what="some pieces copied")
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert [t for t in sandbox.transfers() if t.state == RUNNING], "the crash left running transfers behind"
    sandbox.write_config()
    assert sandbox.start("--once").wait(60) == 0, sandbox.log()
    for path, digest in digests.items():
        assert sha256(sandbox.dest / "acme/crash" / path) == digest
    copied_again = sum(piece.sends - 1 for piece in sandbox.pieces())
    assert copied_again <= 2  # local_copy.concurrency = 2 transfers in flight, one piece each
    assert all(t.state == DONE for t in sandbox.transfers())


def test_a_second_daemon_on_the_same_catalogue_is_refused(sandbox: DaemonSandbox) -> None:
    first = sandbox.start()
    sandbox.wait_for(lambda: "serving" in sandbox.log(), what="the first daemon to start")
    second = sandbox.start()
    assert second.wait(30) == 1
    assert f"another relayd (pid {first.pid}) is already running" in sandbox.log()
    assert first.poll() is None


def test_repo_changes_are_picked_up_within_five_seconds(sandbox: DaemonSandbox) -> None:
    process = sandbox.start()
    sandbox.wait_for(lambda: "serving" in sandbox.log(), what="the daemon to start")
    sandbox.make_repo("acme/late", {"a.bin": 1000}, every=1)
    added = time.monotonic()
    sandbox.wait_for(lambda: len(sandbox.snapshots()) == 1, timeout=5, what="the new repo's first snapshot")
    assert time.monotonic() - added <= 5
    sandbox.wait_for(lambda: all(t.state == DONE for t in sandbox.transfers()), what="the copy")
    sandbox.store.set_paused("acme/late", True)
    time.sleep(2.5)  # the daemon reconciles every 2 s
    (sandbox.source / "acme/late/b.bin").write_bytes(b"new")
    time.sleep(2.5)
    assert len(sandbox.snapshots()) == 1, "a paused repo must not be polled"
    sandbox.store.set_paused("acme/late", False)
    sandbox.wait_for(lambda: len(sandbox.snapshots()) == 2, timeout=5, what="polling after resume")
    sandbox.store.remove_repo("acme/late")
    sandbox.wait_for(
        lambda: "acme/late: no longer polled" in sandbox.log(), timeout=5, what="the job removed"
    )
    assert process.poll() is None


def test_catalogue_writes_while_the_daemon_works_never_hit_a_locked_database(sandbox: DaemonSandbox) -> None:
    sandbox.write_config(max_rate="8 MB", piece_size="64 KiB")
    sandbox.make_repo("acme/busy", {"a.bin": 3 * MiB, "b.bin": 3 * MiB})
    process = sandbox.start()
    sandbox.wait_for(lambda: partially_done(sandbox), what="copying to start")
    from relayd.catalogue.store import RepoSpec

    for i in range(60):
        sandbox.store.add_repo(RepoSpec(name=f"other/r{i}", every=3600, route=("local_copy",)))
        sandbox.store.set_paused(f"other/r{i}", True)
        sandbox.store.retry("acme/busy")
        sandbox.store.remove_repo(f"other/r{i}")
    sandbox.wait_for(lambda: all(t.state == DONE for t in sandbox.transfers()), what="the copy to finish")
    assert "database is locked" not in sandbox.log()
    assert process.poll() is None


def test_sighup_and_file_edits_reload_and_an_invalid_config_is_refused(sandbox: DaemonSandbox) -> None:
    process = sandbox.start()
    sandbox.wait_for(lambda: "serving" in sandbox.log(), what="the daemon to start")
    good = sandbox.config_path.read_text()
    sandbox.config_path.write_text(good + "\n[hub]\nconections = 3\n")
    process.send_signal(signal.SIGHUP)
    sandbox.wait_for(lambda: "reload refused" in sandbox.log(), what="the refused reload")
    assert "hub.conections" in sandbox.log()
    assert process.poll() is None
    sandbox.config_path.write_text(good.replace('max_rate = "0"', 'max_rate = "1 MB"'))
    sandbox.wait_for(lambda: "reloaded" in sandbox.log(), what="the watched file to reload")
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0


@pytest.mark.timeout(120)
def test_systemd_notify_ready_watchdog_and_stopping(sandbox: DaemonSandbox, tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(60)  # a start under heavy load
    process = sandbox.start(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"})
    messages: list[str] = []

    def receive_until(field: str) -> None:
        while not any(field in message for message in messages):
            messages.append(listener.recv(4096).decode())

    receive_until("READY=1")
    receive_until("WATCHDOG=1")
    process.send_signal(signal.SIGTERM)
    receive_until("STOPPING=1")
    assert process.wait(20) == 0
    listener.close()
    os.unlink(address)


def test_relayctl_steers_a_running_daemon(sandbox: DaemonSandbox) -> None:
    sandbox.write_config(max_rate="4 MB", piece_size="128 KiB")
    process = sandbox.start()
    sandbox.wait_for(lambda: "serving" in sandbox.log(), what="the daemon to start")
    (sandbox.source / "acme/steer").mkdir(parents=True)
    (sandbox.source / "acme/steer/model.bin").write_bytes(os.urandom(3 * MiB))
    added = sandbox.relayctl("add", "acme/steer", "--route", "local_copy", "--every", "10s")
    assert added.returncode == 0, added.stderr
    sandbox.wait_for(lambda: len(sandbox.snapshots()) == 1, timeout=5, what="the poll of the added repo")
    # Writes while the daemon copies: none of them may meet a locked database.
    for _ in range(5):
        assert sandbox.relayctl("pause", "acme/steer").returncode == 0
        assert sandbox.relayctl("resume", "acme/steer").returncode == 0
        status = sandbox.relayctl("status", "--json")
        assert status.returncode == 0, status.stderr
        assert "database is locked" not in status.stderr
    sandbox.wait_for(lambda: all(t.state == DONE for t in sandbox.transfers()), what="the copy")
    document = json.loads(sandbox.relayctl("status", "acme/steer", "--json").stdout)
    assert document["repo"]["snapshot"]["state"] == "done"
    assert [f["path"] for f in document["files"]] == ["model.bin"]
    assert sandbox.relayctl("retry", "acme/steer").returncode == 0
    assert sandbox.relayctl("remove", "acme/steer", "--yes").returncode == 0
    sandbox.wait_for(lambda: "acme/steer: no longer polled" in sandbox.log(), timeout=5, what="removal")
    assert process.poll() is None
    assert "database is locked" not in sandbox.log()
