"""relayd's saved drive login: atomic 0600 saves in a 0700 directory, one lock across threads and
processes, and the lifetime relayctl shows."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from relayd.drive.tokens import TokenStore, fingerprint, new_record


def test_save_is_atomic_private_and_tightens_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "drive"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    store = TokenStore(directory)
    record = new_record("RT-one", source="config", bootstrap_sha256=fingerprint("RT-one"))
    store.save(record)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert store.mode() == 0o600
    assert store.load() == record
    before = store.stamp()
    time.sleep(0.01)
    store.save({**record, "refresh_token": "RT-two"})
    assert store.stamp() != before
    assert store.load()["refresh_token"] == "RT-two"  # type: ignore[index]
    assert sorted(p.name for p in directory.iterdir()) == ["token.json"]  # no temp files left
    assert record["bootstrap_sha256"] != "RT-one" and len(record["bootstrap_sha256"]) == 64


def test_save_keeps_0600_under_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = TokenStore(tmp_path / "drive")
        store.save(new_record("RT", source="login"))
    finally:
        os.umask(old)
    assert store.mode() == 0o600


def test_unreadable_records_are_ignored_without_their_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = TokenStore(tmp_path / "drive")
    store.prepare()
    store.path.write_text("{not json SECRET-VALUE")
    with caplog.at_level(logging.WARNING):
        assert store.load() is None
    store.path.write_text(json.dumps({"access_token": "SECRET-VALUE"}))
    with caplog.at_level(logging.WARNING):
        assert store.load() is None
    assert "SECRET-VALUE" not in caplog.text
    assert store.lifetime().state == "missing"


def test_lifetime_states(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "drive")
    assert store.lifetime().state == "missing"
    record = new_record("RT", source="login")
    store.save(record)
    assert store.lifetime().state == "expired"  # no access token yet: refreshed on first use
    later = datetime.now(UTC) + timedelta(hours=2)
    store.save(
        {**record, "access_token": "AT", "expires_at": later.isoformat(), "refreshed_at": later.isoformat()}
    )
    lifetime = store.lifetime()
    assert lifetime.state == "valid"
    remaining = lifetime.remaining()
    assert remaining is not None and 7000 < remaining <= 7200
    assert lifetime.as_fact()["expires_at"] == later.isoformat()
    store.save({**record, "refused": True})
    assert store.lifetime().state == "refused"


def test_the_lock_serialises_threads(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "drive")
    inside = 0
    most = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        for _ in range(20):
            with store.locked():
                with guard:
                    inside += 1
                    most = max(most, inside)
                with store.locked():  # re-entrant in one thread
                    time.sleep(0.0005)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert most == 1


def test_the_lock_serialises_processes(tmp_path: Path) -> None:
    directory = tmp_path / "drive"
    store = TokenStore(directory)
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from relayd.drive.tokens import TokenStore\n"
        "store = TokenStore(Path(sys.argv[1]))\n"
        "with store.locked():\n"
        "    print('held', flush=True)\n"
        "    time.sleep(1.0)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(directory)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        started = time.monotonic()
        with store.locked():
            waited = time.monotonic() - started
    finally:
        child.wait(10)
    assert waited > 0.5
