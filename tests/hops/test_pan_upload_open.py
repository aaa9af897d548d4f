"""The pan_upload hop, unchanged, on the Open Platform backend (``drive.backend = "open"``) through the
real engine and the real daemon, against the fake drive's ``/adrive/v1.0/openFile/*`` routes: rapid
upload, a whole repo, 429 with ``x-retry-after``, the per-file limit, and kill -9 mid-multipart."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relayd.catalogue.schema import BLOCKED, DONE, WAITING
from relayd_sandbox.drive import FakeDrive
from tests.support.drivebox import PART, DriveBox

MIB = 1024 * 1024
OPEN = "/adrive/v1.0/openFile"


@pytest.fixture
def obox(tmp_path: Path, fake: FakeDrive, secrets: list[str]) -> Iterator[DriveBox]:
    """A DriveBox whose drive is the Open Platform backend, logged in by QR code."""
    world = DriveBox(tmp_path / "box", fake, backend="open")
    world.open_drive()  # the QR login, saved under state/drive/open
    try:
        yield world
    finally:
        world.close()


def _resource(fake: FakeDrive, path: str) -> Any:
    return fake.lookup(path, drive_id=fake.user.resource_drive_id)


def test_rapid_hit_sends_no_payload_bytes(obox: DriveBox, fake: FakeDrive) -> None:
    data = os.urandom(3 * PART + 5)
    fake.seed_content(data)
    staged = obox.stage("acme/known", {"weights.bin": data})
    obox.run()
    (transfer,) = obox.transfers()
    assert transfer.state == DONE, transfer.last_error
    assert fake.stats().put_bytes == 0 and fake.stats().rapid_upload_hits == 1
    assert transfer.handles["rapid"] is True
    assert transfer.handles["content_hash"] == staged["weights.bin"].sha1.upper()
    assert fake.stats().calls.get("/v2/file/list", 0) == 0  # nothing on the web API


def test_a_repo_uploads_in_parts_and_is_verified(obox: DriveBox, fake: FakeDrive, secrets: list[str]) -> None:
    files = {"a.bin": os.urandom(4 * PART + 7), "sub/b.bin": os.urandom(PART // 2), "c.txt": b"hi"}
    staged = obox.stage("acme/repo", files)
    obox.run()
    assert all(t.state == DONE for t in obox.transfers()), [t.last_error for t in obox.transfers()]
    for path, info in staged.items():
        stored = _resource(fake, f"/relayd/acme/repo/{path}")
        assert stored is not None and stored.content_hash == info.sha1.upper()
    assert fake.authorized_data_requests() == []
    assert fake.stats().calls.get(f"{OPEN}/complete") == 3
    for transfer in obox.transfers():
        text = repr(transfer.handles) + str(transfer.last_error)
        assert not any(secret in text for secret in secrets)


def test_429_waits_x_retry_after_and_continues(obox: DriveBox, fake: FakeDrive) -> None:
    obox.stage("acme/slow", {"w.bin": os.urandom(2 * PART)})
    fake.fail_next(f"{OPEN}/create", 429, retry_after=1.2)
    engine = obox.engine()
    engine.run_until_idle(timeout=30)
    (transfer,) = obox.transfers()
    assert transfer.state == WAITING and transfer.error_class == "rate_limit"
    assert transfer.next_attempt_at is not None
    assert (transfer.next_attempt_at - transfer.updated_at).total_seconds() >= 1.1
    obox.run(engine)
    assert obox.transfers()[0].state == DONE


def test_a_file_over_the_limit_blocks_before_a_byte(obox: DriveBox, fake: FakeDrive) -> None:
    obox.stage("acme/huge", {"w.bin": os.urandom(3 * PART)})
    small = obox.open_drive(max_file_size=2 * PART)
    obox.run(obox.engine(small))
    (transfer,) = obox.transfers()
    assert transfer.state == BLOCKED and transfer.error_class == "quota"
    assert "per-file limit" in (transfer.last_error or "") and transfer.attempts == 1
    assert fake.stats().put_bytes == 0 and fake.stats().calls.get(f"{OPEN}/create", 0) <= 3  # folders only


def test_kill_9_mid_multipart_then_restart_resends_at_most_one_part(obox: DriveBox, fake: FakeDrive) -> None:
    size = 6 * 10 * MIB + 12345  # the daemon uses the drive's own 10 MiB parts: 7 of them
    data = os.urandom(size)
    staged = obox.stage("acme/big", {"model.safetensors": data})
    fake.settings.upload_bandwidth = 12 * MIB
    first = obox.start_daemon()
    obox.wait_for(lambda: bool(fake.uploads()) and len(fake.uploads()[0].parts) >= 2, what="two parts")
    time.sleep(0.3)  # well inside the third part
    first.send_signal(signal.SIGKILL)
    out, _ = first.communicate(timeout=10)
    assert out == b""
    (upload,) = fake.uploads()
    (transfer,) = obox.transfers()
    assert transfer.handles["upload"]["upload_id"] == upload.upload_id  # saved before the first PUT
    fake.settings.upload_bandwidth = None
    second = obox.start_daemon()
    obox.wait_for(lambda: obox.transfers()[0].state == DONE, timeout=120, what="the upload to finish")
    assert obox.stop_daemon(second) == b""
    stats = fake.stats()
    assert [u.upload_id for u in fake.uploads()] == [upload.upload_id]  # resumed, not started again
    resent = stats.put_bytes_by_upload[upload.upload_id] - size
    assert 0 <= resent <= 10 * MIB, resent  # at most the one part in flight
    assert stats.calls.get(f"{OPEN}/listUploadedParts", 0) >= 1
    stored = _resource(fake, "/relayd/acme/big/model.safetensors")
    assert stored is not None and stored.content_hash == staged["model.safetensors"].sha1.upper()
