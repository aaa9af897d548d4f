"""The agent's pull operations called directly through the local executor against the fake drive:
strict Range handling, the download cap, expired and refused links told apart by the drive's answer,
error bodies read bounded, paths that leave vm.root, and a file already renamed into place."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import requests

from relayd.errors import Permanent, Retryable
from relayd.vm.executor import Executor, make_executor
from relayd_sandbox.drive import DOWNLOAD_PREFIX, FakeDrive
from relayd_sandbox.vm_testkit import FakeDriveLinks, pull_params, upload_to_fake_drive, vm_config

pytestmark = pytest.mark.timeout(120)

PIECE = 128 * 1024
REFERER = {"Referer": "https://www.aliyundrive.com/"}


class Pull:
    """One file on the fake drive and the parameters of a pull of it."""

    def __init__(self, tmp_path: Path, drive: FakeDrive, pieces: int = 6) -> None:
        self.data = os.urandom(pieces * PIECE - 100)
        self.file_id = upload_to_fake_drive(drive, self.data, "f.bin")
        self.links = FakeDriveLinks(
            drive.api_url, drive.issue_access_token(), drive_id=drive.default_drive_id
        )
        self.root = tmp_path / "vm"
        self.executor: Executor = make_executor(vm_config(root=str(self.root)))
        self.plan = [
            [i, o, min(PIECE, len(self.data) - o)] for i, o in enumerate(range(0, len(self.data), PIECE))
        ]
        self.events: list[dict[str, Any]] = []

    def params(self, **changes: Any) -> dict[str, Any]:
        return pull_params(self.root, self.data, piece=PIECE, **{"max_tries": 2, **changes})

    def call(self, **changes: Any) -> dict[str, Any]:
        url = self.links.download_url(self.file_id).url
        return self.executor.call(
            "pull", self.params(**changes), secrets={"url": url}, on_event=self.events.append
        )

    def done(self) -> list[int]:
        return sorted(e["index"] for e in self.events if e["event"] == "piece_done")


def test_pull_fetches_hashes_and_renames(tmp_path: Path, fake_drive: FakeDrive) -> None:
    pull = Pull(tmp_path, fake_drive)
    result = pull.call()
    assert result["renamed"] and result["sha1"] == hashlib.sha1(pull.data).hexdigest()
    assert (pull.root / "acme/tiny/f.bin").read_bytes() == pull.data
    assert pull.done() == [p[0] for p in pull.plan]


def test_range_ignored_is_never_taken_as_data(tmp_path: Path, fake_drive: FakeDrive) -> None:
    pull = Pull(tmp_path, fake_drive)
    fake_drive.settings.ignore_range = True
    with pytest.raises(Retryable) as caught:
        pull.call()
    assert caught.value.error_class == "range_ignored"
    assert pull.done() == []
    assert not (pull.root / "acme/tiny/f.bin").exists()


def test_download_cap_drops_a_connection_and_carries_on(tmp_path: Path, fake_drive: FakeDrive) -> None:
    pull = Pull(tmp_path, fake_drive, pieces=8)
    fake_drive.settings.download_cap_per_app = 1
    fake_drive.settings.download_bandwidth = 2 * 1024 * 1024
    result = pull.call(connections=3, max_tries=8)
    assert result["renamed"]
    dropped = [e for e in pull.events if e["event"] == "connection_dropped"]
    assert dropped and all(e["reason"] == "cap" for e in dropped)
    assert fake_drive.stats().downloads_over_cap >= len(dropped)


def _hold_slots(drive: FakeDrive, url: str, count: int) -> list[requests.Response]:
    """Another client of the same app (and user) keeps *count* downloads running (paced by the fake)."""
    held = [requests.get(url, headers=REFERER, stream=True, timeout=10) for _ in range(count)]
    assert all(response.status_code == 200 for response in held)
    return held


def test_the_cap_with_every_slot_taken_backs_off_as_rate_limit(tmp_path: Path, fake_drive: FakeDrive) -> None:
    pull = Pull(tmp_path, fake_drive)
    fake_drive.settings.download_bandwidth = 64 * 1024
    held = _hold_slots(fake_drive, pull.links.download_url(pull.file_id).url, 2)
    try:
        with pytest.raises(Retryable) as caught:
            pull.call(connections=2, max_tries=2)
    finally:
        for response in held:
            response.close()
    assert caught.value.error_class == "rate_limit"
    assert "ExceedMaxConcurrency" in str(caught.value) and "0007-00000209" in str(caught.value)
    assert pull.done() == []


@pytest.mark.parametrize(
    "body",
    [
        "<Error>\n  <MESSAGE> callback deny this request reason:\n  exceedmaxconcurrency </MESSAGE>\n"
        "</Error>",
        "<Error><Code>AccessDenied</Code><EC> 0007-00000209 </EC></Error>",
    ],
)
def test_the_cap_is_recognised_whatever_the_case_and_spacing(
    tmp_path: Path, fake_drive: FakeDrive, body: str
) -> None:
    pull = Pull(tmp_path, fake_drive)
    fake_drive.fail_next(DOWNLOAD_PREFIX, 403, body=body, count=2)
    with pytest.raises(Retryable) as caught:
        pull.call(connections=1, max_tries=2)
    assert caught.value.error_class == "rate_limit"


def test_an_expired_link_is_told_apart_from_a_refused_one(tmp_path: Path, fake_drive: FakeDrive) -> None:
    pull = Pull(tmp_path, fake_drive)
    url = pull.links.download_url(pull.file_id).url
    fake_drive.expire_download_urls()
    with pytest.raises(Retryable) as caught:
        pull.executor.call("pull", pull.params(), secrets={"url": url})
    assert caught.value.error_class == "url_expired"
    assert "Request has expired." in str(caught.value)

    with pytest.raises(Retryable) as caught:
        pull.call(headers={"Referer": "https://elsewhere.example/"})
    assert caught.value.error_class == "download_refused"
    assert "referer" in str(caught.value).lower()
    assert "x-oss-signature" not in str(caught.value)  # the signed URL never shows up in errors
    with pytest.raises(Retryable) as caught:
        pull.call(expires_in=10)  # too close to its expiry to start
    assert caught.value.error_class == "url_expired"


def test_an_oversized_error_body_is_read_bounded(tmp_path: Path, fake_drive: FakeDrive) -> None:
    pull = Pull(tmp_path, fake_drive)
    fake_drive.fail_next(DOWNLOAD_PREFIX, 403, body="<Error><Message>" + "x" * (32 * 1024 * 1024), count=2)
    with pytest.raises(Retryable) as caught:
        pull.call(connections=1)
    assert caught.value.error_class == "download_refused"
    assert len(str(caught.value)) < 1000
    # The agent read a few KiB and hung up: the fake could not hand over most of the answer.
    assert fake_drive.stats().injected_bytes_sent < 16 * 1024 * 1024


def test_resume_needs_the_partial_file(tmp_path: Path, fake_drive: FakeDrive) -> None:
    pull = Pull(tmp_path, fake_drive)
    with pytest.raises(Retryable) as caught:
        pull.call(fresh=False, missing=[1, 2])
    assert caught.value.error_class == "partial_lost"


def test_a_file_renamed_before_a_crash_is_recognised(tmp_path: Path, fake_drive: FakeDrive) -> None:
    pull = Pull(tmp_path, fake_drive)
    pull.call()
    fake_drive.requests.clear()
    pull.events.clear()
    result = pull.call(fresh=False, missing=[len(pull.plan) - 1])
    assert result["renamed"] and result["fetched"] == 0
    assert pull.done() == [len(pull.plan) - 1]
    assert not [r for r in fake_drive.requests.snapshot() if r.path.startswith("/download")]


@pytest.mark.parametrize("relpath", ["../escape.bin", "/abs.bin", "a/../../b.bin", "a//b"])
def test_paths_leaving_the_root_are_refused(tmp_path: Path, fake_drive: FakeDrive, relpath: str) -> None:
    pull = Pull(tmp_path, fake_drive)
    with pytest.raises(Permanent):
        pull.call(relpath=relpath)


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path, fake_drive: FakeDrive) -> None:
    pull = Pull(tmp_path, fake_drive)
    (pull.root / "acme").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (pull.root / "acme/tiny").symlink_to(tmp_path / "outside")
    with pytest.raises(Exception, match="leads out of"):
        pull.call()
    assert not list((tmp_path / "outside").iterdir())
