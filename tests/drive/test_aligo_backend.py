"""AligoDrive against the fake drive, through real aligo 6.2.8: headless auth with rotation and one
refresher, error mapping, rapid upload, resumable multipart with strict statuses, download links."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pwd
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from relayd.config import SecretRef
from relayd.drive.aligo_backend import AligoDrive
from relayd.drive.base import LocalFile, NameTaken, UploadCallbacks, UploadResult
from relayd.drive.multipart import retry_after_seconds
from relayd.errors import Cancelled, NeedsPerson, Permanent, Retryable
from relayd_sandbox.drive import UPLOAD_PREFIX, FakeDrive
from tests.support.drivebox import DriveBox, sign_in_other_devices

PART = 64 * 1024
REAL_CONFIG = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".aligo" / "config.json5"


def _local(tmp_path: Path, data: bytes, name: str = "blob.bin") -> LocalFile:
    path = tmp_path / name
    path.write_bytes(data)
    return LocalFile(path, len(data), hashlib.sha1(data).hexdigest())


class Recorder(UploadCallbacks):
    """Callbacks that record what an upload reported, optionally cancelling after some parts."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.saved: dict[str, Any] = {}
        self.cancel = threading.Event()
        self.done = 0

        def state(value: dict[str, Any]) -> None:
            self.saved = dict(value)
            self.events.append(("state",))

        def part_done(number: int) -> None:
            self.done += 1
            self.events.append(("done", number))
            if cancel_after is not None and self.done >= cancel_after:
                self.cancel.set()

        super().__init__(
            state=state,
            plan=lambda size, count: self.events.append(("plan", size, count)),
            confirmed=lambda held: self.events.append(("confirmed", held)),
            part_started=lambda number: self.events.append(("start", number)),
            part_done=part_done,
            restarted=lambda: self.events.append(("restarted",)),
        )

    def kinds(self, kind: str) -> list[tuple[Any, ...]]:
        return [event for event in self.events if event[0] == kind]


# -- headless auth ----------------------------------------------------------------------------------


def test_headless_no_stdout_no_home_and_logging_left_alone(
    box: DriveBox, capfd: pytest.CaptureFixture[str]
) -> None:
    real_config_existed = REAL_CONFIG.exists()
    home = os.environ.get("HOME")
    root_handlers = list(logging.getLogger().handlers)
    drive = box.drive()
    drive.ensure_folder("/relayd/owner/name")
    assert list(logging.getLogger().handlers) == root_handlers
    assert logging.getLogger("aligo").handlers == []
    assert os.environ.get("HOME") == home
    assert os.environ["TQDM_DISABLE"] == "1"
    assert REAL_CONFIG.exists() == real_config_existed
    # aligo's config.json5 lookup (bound at import) now points into relayd's private folder.
    folder = Path(sys.modules["aligo.apis.Aligo"].aligo_config_folder)
    assert box.state_dir in folder.parents
    assert (box.state_dir / "drive").stat().st_mode & 0o077 == 0
    assert not (folder / "aligo.json").exists()  # aligo's own token file exists only while it starts
    assert capfd.readouterr().out == ""


def test_a_config_json5_in_the_private_folder_cannot_hijack(box: DriveBox) -> None:
    folder = box.state_dir / "drive" / "aligo"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json5").write_text('{"port": 8080, "re_login": true, "proxies": {"https": "x"}}')
    drive = box.drive()
    drive.ensure_folder("/relayd/x")
    assert not (folder / "config.json5").exists()
    ali = drive._client()
    assert ali._auth._port is None and ali._auth._re_login is False
    assert ali._auth._requests_timeout == box.config().timeout


def test_no_token_blocks_with_a_login_hint_and_no_prompt(
    box: DriveBox, capfd: pytest.CaptureFixture[str]
) -> None:
    drive = box.drive(refresh_token=SecretRef("drive.refresh_token"))
    with pytest.raises(NeedsPerson) as caught:
        drive.ensure_folder("/relayd/x")
    assert "relayctl drive login --refresh-token-file" in caught.value.hint
    assert caught.value.error_class == "auth"
    assert box.fake.requests.snapshot() == []  # not even a QR-code request
    assert drive.token_lifetime().state == "missing"
    assert capfd.readouterr().out == ""


def test_a_refused_refresh_blocks_once_and_a_login_recovers(
    box: DriveBox, fake: FakeDrive, capfd: pytest.CaptureFixture[str]
) -> None:
    fake.revoke_refresh_tokens()
    drive = box.drive()
    with pytest.raises(NeedsPerson) as caught:
        drive.ensure_folder("/relayd/x")
    assert "relayctl drive login" in caught.value.hint
    assert drive.token_lifetime().state == "refused"
    with pytest.raises(NeedsPerson):
        drive.ensure_folder("/relayd/x")
    assert fake.stats().refresh_failures == 1  # the refused token is not tried again
    assert box.store.service_state()["drive.token"][0]["state"] == "refused"
    # `relayctl drive login` (another process, here another instance) saves a working token.
    lifetime = box.drive().login(fake.issue_refresh_token())
    assert lifetime.state == "valid"
    assert drive.ensure_folder("/relayd/x")
    assert fake.stats().refreshes == 1
    out = capfd.readouterr()
    assert out.out == ""
    assert "█" not in out.err and "qrcode" not in out.err.lower()


def test_a_refused_login_saves_nothing(box: DriveBox, fake: FakeDrive) -> None:
    drive = box.drive()
    drive.ensure_folder("/relayd/x")
    before = json.loads(drive.tokens.path.read_text())
    with pytest.raises(NeedsPerson):
        box.drive().login("not-a-valid-token")
    assert json.loads(drive.tokens.path.read_text()) == before
    assert drive.ensure_folder("/relayd/y")


def test_rotation_is_saved_after_every_refresh_and_the_bootstrap_used_once(
    box: DriveBox, fake: FakeDrive
) -> None:
    bootstrap = box.token_file.read_text().strip()
    first = box.drive()
    first.ensure_folder("/relayd/a")
    saved = json.loads(first.tokens.path.read_text())
    assert saved["refresh_token"] != bootstrap
    assert first.tokens.mode() == 0o600
    assert fake.stats().refreshes == 1

    fake.expire_access_tokens()
    first.find(first.ensure_folder("/relayd/a"), "nothing")
    again = json.loads(first.tokens.path.read_text())
    assert fake.stats().refreshes == 2
    assert again["refresh_token"] not in (saved["refresh_token"], bootstrap)
    assert first.tokens.mode() == 0o600

    # A restart: the configured bootstrap token is not used again; the saved pair is.
    restarted = box.drive()
    restarted.ensure_folder("/relayd/b")
    assert fake.stats().refreshes == 2
    fake.expire_access_tokens()
    restarted.find(restarted.ensure_folder("/relayd/b"), "nothing")
    assert fake.stats().refreshes == 3
    assert fake.stats().refresh_failures == 0
    fact = box.store.service_state()["drive.token"][0]
    assert fact["state"] == "valid" and fact["expires_at"] and fact["refreshed_at"]


def test_a_new_token_in_the_config_is_adopted(box: DriveBox, fake: FakeDrive) -> None:
    box.drive().ensure_folder("/relayd/a")
    fake.revoke_refresh_tokens()
    fake.expire_access_tokens()
    box.token_file.write_text(fake.issue_refresh_token())
    assert box.drive().ensure_folder("/relayd/c")
    assert fake.stats().refresh_failures == 0


def test_concurrent_401s_refresh_exactly_once(box: DriveBox, fake: FakeDrive) -> None:
    drives = [box.drive(), box.drive()]  # two instances share the state dir, as two processes would
    folders = [drive.ensure_folder("/relayd/race") for drive in drives]
    assert fake.stats().refreshes == 1
    for rotation in range(2, 4):
        fake.expire_access_tokens()
        barrier = threading.Barrier(12)
        errors: list[BaseException] = []

        def work(
            index: int, barrier: threading.Barrier = barrier, errors: list[BaseException] = errors
        ) -> None:
            drive = drives[index % 2]
            barrier.wait()
            try:
                for _ in range(3):
                    drive.find(folders[index % 2], "nothing")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert fake.stats().refreshes == rotation
        assert fake.stats().refresh_failures == 0


_PROCESS_SCRIPT = """
import json, sys, time
from pathlib import Path
from relayd.config import DriveConfig, SecretRef
from relayd.drive.aligo_backend import AligoDrive

args = json.loads(sys.argv[1])
config = DriveConfig(
    backend="aligo", api_url=args["api"], refresh_token=SecretRef("drive.refresh_token"), root="/relayd",
    drive="resource", concurrency=3, referer="https://www.aliyundrive.com/", on_conflict="replace",
    timeout=10.0, url_lifetime=3600.0,
)
drive = AligoDrive(config, Path(args["state"]))
go = Path(args["go"])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
for _ in range(3):
    drive.find("root", "nothing")
print("ok", flush=True)
"""


def test_concurrent_refresh_across_processes(box: DriveBox, fake: FakeDrive, tmp_path: Path) -> None:
    box.drive().ensure_folder("/relayd/p")
    assert fake.stats().refreshes == 1
    fake.expire_access_tokens()
    go = tmp_path / "go"
    args = json.dumps({"api": fake.api_url, "state": str(box.state_dir), "go": str(go)})
    children = [
        subprocess.Popen([sys.executable, "-c", _PROCESS_SCRIPT, args], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        go.touch()
        outputs = [child.communicate(timeout=60)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert [child.returncode for child in children] == [0, 0, 0]
    assert all(out.strip() == "ok" for out in outputs)
    assert fake.stats().refreshes == 2
    assert fake.stats().refresh_failures == 0


# -- error mapping ------------------------------------------------------------------------------


def test_throttling_and_server_errors_are_retryable_with_retry_after(box: DriveBox, fake: FakeDrive) -> None:
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/t")
    fake.fail_next("/adrive/v3/file/list", 429, retry_after=7)
    started = time.monotonic()
    with pytest.raises(Retryable) as caught:
        drive.find(folder, "x")
    assert time.monotonic() - started < 2  # aligo's own 5/25/125 s sleeps are bypassed
    assert (caught.value.retry_after, caught.value.error_class) == (7, "rate_limit")
    for status in (500, 502, 503, 504):
        fake.fail_next("/adrive/v3/file/list", status)
        with pytest.raises(Retryable) as caught:
            drive.find(folder, "x")
        assert caught.value.error_class == "server"
    fake.fail_next("/adrive/v3/file/list", 502, body="Bad Gateway")  # plain text: throttled
    with pytest.raises(Retryable) as caught:
        drive.find(folder, "x")
    assert caught.value.error_class == "server"
    fake.fail_next("/v2/file/get", 200, body="<html>gateway</html>")
    with pytest.raises(Retryable):
        drive.get("some-id")
    assert drive.find(folder, "x") is None


def test_quota_and_a_vanished_server(box: DriveBox, fake: FakeDrive, tmp_path: Path) -> None:
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/q")
    fake.fail_next("/adrive/v2/file/createWithFolders", 400, code="QuotaExhausted.Drive")
    local = _local(tmp_path, os.urandom(5000))
    with pytest.raises(NeedsPerson) as caught:
        drive.upload(local, folder, "q.bin", {}, callbacks=UploadCallbacks(), cancel=threading.Event())
    assert caught.value.error_class == "quota"
    offline = box.drive(api_url="http://127.0.0.1:9")
    offline.tokens.path.unlink()  # force a refresh against the closed port
    with pytest.raises(Retryable) as caught:
        offline.ensure_folder("/relayd/q")
    assert caught.value.error_class == "network"


def test_an_empty_429_is_waited_out(box: DriveBox, fake: FakeDrive, tmp_path: Path) -> None:
    """The web API's 429 often has no body and no Retry-After (messense/aliyundrive-webdav#321)."""
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/empty429")
    fake.fail_next("/adrive/v3/file/list", 429, body="")
    with pytest.raises(Retryable) as caught:
        drive.find(folder, "x")
    assert (caught.value.error_class, caught.value.retry_after) == ("rate_limit", None)
    assert "429" in str(caught.value) and "JSON" not in str(caught.value)
    assert drive.find(folder, "x") is None
    uploaded = drive.upload(
        _local(tmp_path, os.urandom(3000)),
        folder,
        "e.bin",
        {},
        callbacks=UploadCallbacks(),
        cancel=threading.Event(),
    )
    fake.fail_next("/v2/file/get_download_url", 429, body="")
    with pytest.raises(Retryable) as caught:
        drive.download_url(uploaded.file.file_id)
    assert (caught.value.error_class, caught.value.retry_after) == ("rate_limit", None)
    assert drive.download_url(uploaded.file.file_id).size == 3000


def test_an_endpoint_the_drive_no_longer_has_blocks(box: DriveBox, fake: FakeDrive) -> None:
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/gone-api")
    fake.settings.removed_endpoints = frozenset({"/adrive/v3/file/list"})
    with pytest.raises(NeedsPerson) as caught:
        drive.find(folder, "x")
    assert caught.value.error_class == "api_changed"
    assert "404 NotFound" in str(caught.value)
    assert "needs an update" in caught.value.hint and "relayctl retry" in caught.value.hint
    assert fake.stats().calls["/adrive/v3/file/list"] == 1  # asked once, not in a loop
    assert drive.get("no-such-id") is None  # a missing file (NotFound.File) is not an API change
    fake.settings.removed_endpoints = frozenset({"/v2/file/get"})
    with pytest.raises(NeedsPerson) as caught:
        drive.get("no-such-id")
    assert caught.value.error_class == "api_changed"


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("7") == 7
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0


# -- device sessions --------------------------------------------------------------------------------


def test_a_device_without_a_session_gets_one_from_aligo(box: DriveBox, fake: FakeDrive) -> None:
    fake.settings.device_policy = "require_session"
    drive = box.drive()
    assert drive.ensure_folder("/relayd/session")
    assert fake.stats().calls["/users/v1/users/device/create_session"] == 1
    assert drive.find(drive.ensure_folder("/relayd/session"), "x") is None
    assert fake.stats().calls["/users/v1/users/device/create_session"] == 1  # once is enough


def test_a_refused_device_signature_blocks_with_a_hint(box: DriveBox, fake: FakeDrive) -> None:
    fake.settings.device_policy = "reject"
    drive = box.drive()
    with pytest.raises(NeedsPerson) as caught:
        drive.ensure_folder("/relayd/signature")
    assert caught.value.error_class == "device"
    assert "DeviceSessionSignatureInvalid" in str(caught.value)
    assert "relayctl drive login" in caught.value.hint
    assert fake.stats().calls["/users/v1/users/device/create_session"] >= 1  # aligo tried to recover


def test_more_than_ten_devices_blocks_with_the_device_hint(box: DriveBox, fake: FakeDrive) -> None:
    sign_in_other_devices(fake, 10)
    drive = box.drive()
    with pytest.raises(NeedsPerson) as caught:
        drive.ensure_folder("/relayd/devices")
    assert caught.value.error_class == "device"
    assert "UserDeviceOffline" in str(caught.value)
    assert "log one out in the Aliyun Drive app" in caught.value.hint
    assert "relayctl retry" in caught.value.hint and "relayctl drive login" in caught.value.hint
    fake.log_out_device("other-device-4")  # what the hint asks a person to do
    assert drive.ensure_folder("/relayd/devices")


# -- rapid upload -----------------------------------------------------------------------------


def _rapid_candidate_upload(
    box: DriveBox, fake: FakeDrive, tmp_path: Path, refused_proofs: int
) -> tuple[bytes, UploadResult]:
    """Upload 200 kB whose content the fake already holds, the fake refusing the next *refused_proofs*
    proofs of it; return the bytes and the result."""
    data = os.urandom(200_000)
    fake.seed_content(data)
    assert fake.settings.proof_refusal_code in ("InvalidParameter.ProofCode", "InvalidRapidProof")
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/r")
    fake.reject_next_proofs(refused_proofs)
    result = drive.upload(
        _local(tmp_path, data), folder, "r.bin", {}, callbacks=UploadCallbacks(), cancel=threading.Event()
    )
    return data, result


PROOF_CODES = pytest.mark.parametrize("refusal", ["InvalidParameter.ProofCode", "InvalidRapidProof"])


@PROOF_CODES
def test_rapid_upload_with_a_refused_proof_recomputes_it(
    box: DriveBox, fake: FakeDrive, tmp_path: Path, refusal: str
) -> None:
    fake.settings.proof_refusal_code = refusal
    data, result = _rapid_candidate_upload(box, fake, tmp_path, refused_proofs=1)
    assert result.rapid and result.file.content_hash == hashlib.sha1(data).hexdigest().upper()
    assert fake.stats().put_bytes == 0 and fake.stats().proofs_rejected == 1


@PROOF_CODES
def test_rapid_upload_refused_twice_falls_back_to_the_bytes(
    box: DriveBox, fake: FakeDrive, tmp_path: Path, refusal: str
) -> None:
    fake.settings.proof_refusal_code = refusal
    data, result = _rapid_candidate_upload(box, fake, tmp_path, refused_proofs=2)
    assert not result.rapid
    assert fake.stats().put_bytes == len(data)


def test_a_pre_hash_match_with_other_content_uploads_the_bytes(
    box: DriveBox, fake: FakeDrive, tmp_path: Path
) -> None:
    head = os.urandom(1024)
    known, other = head + os.urandom(5000), head + os.urandom(5000)
    fake.seed_content(known)
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/p")
    result = drive.upload(
        _local(tmp_path, other), folder, "p.bin", {}, callbacks=UploadCallbacks(), cancel=threading.Event()
    )
    assert fake.stats().pre_hash_matches == 1 and fake.stats().rapid_upload_hits == 0
    assert not result.rapid and result.file.content_hash == hashlib.sha1(other).hexdigest().upper()


def test_tiny_and_empty_files(box: DriveBox, fake: FakeDrive, tmp_path: Path) -> None:
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/tiny")
    for name, data in (("empty.txt", b""), ("one.txt", b"x"), ("k.txt", os.urandom(1024))):
        result = drive.upload(
            _local(tmp_path, data, name),
            folder,
            name,
            {},
            callbacks=UploadCallbacks(),
            cancel=threading.Event(),
        )
        assert result.file.size == len(data)
        assert result.file.content_hash == hashlib.sha1(data).hexdigest().upper()
    assert fake.stats().pre_hash_matches == 0  # files of ≤ 1 KiB skip the pre-hash


def test_an_existing_name_is_reported(box: DriveBox, tmp_path: Path) -> None:
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/n")
    first = drive.upload(
        _local(tmp_path, os.urandom(3000), "a"),
        folder,
        "n.bin",
        {},
        callbacks=UploadCallbacks(),
        cancel=threading.Event(),
    )
    with pytest.raises(NameTaken) as caught:
        drive.upload(
            _local(tmp_path, os.urandom(3000), "b"),
            folder,
            "n.bin",
            {},
            callbacks=UploadCallbacks(),
            cancel=threading.Event(),
        )
    assert caught.value.existing is not None and caught.value.existing.file_id == first.file.file_id


# -- multipart ------------------------------------------------------------------------------------


def test_multipart_reports_parts_and_sends_no_authorization(
    box: DriveBox, fake: FakeDrive, tmp_path: Path
) -> None:
    data = os.urandom(5 * PART + 123)
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/m")
    recorder = Recorder()
    result = drive.upload(
        _local(tmp_path, data), folder, "m.bin", {}, callbacks=recorder, cancel=recorder.cancel
    )
    assert recorder.events[0] == ("plan", PART, 6)
    assert recorder.events[1] == ("state",)  # saved before the first byte went out
    assert recorder.kinds("done") == [("done", n) for n in range(1, 7)]
    assert recorder.saved["upload_id"] and recorder.saved["part_size"] == PART
    assert fake.stats().put_bytes == len(data)
    stored = fake.lookup("/relayd/m/m.bin", drive_id=fake.user.resource_drive_id)
    assert stored is not None and stored.read_bytes() == data
    assert result.file.file_id == stored.file_id
    assert fake.authorized_data_requests() == []


def test_a_cancelled_upload_resumes_without_sending_a_part_twice(
    box: DriveBox, fake: FakeDrive, tmp_path: Path
) -> None:
    data = os.urandom(6 * PART)
    local = _local(tmp_path, data)
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/c")
    first = Recorder(cancel_after=2)
    with pytest.raises(Cancelled):
        drive.upload(local, folder, "c.bin", {}, callbacks=first, cancel=first.cancel)
    upload_id = first.saved["upload_id"]
    # A restart: a new client, the state from the catalogue, the drive's own list of parts.
    second = Recorder()
    result = box.drive().upload(local, folder, "c.bin", first.saved, callbacks=second, cancel=second.cancel)
    assert ("confirmed", 2) in second.events
    assert second.kinds("start")[0] == ("start", 3)
    assert fake.stats().put_bytes_by_upload == {upload_id: len(data)}
    assert result.file.content_hash == hashlib.sha1(data).hexdigest().upper()


def test_listings_and_part_lists_are_followed_page_by_page(
    box: DriveBox, fake: FakeDrive, tmp_path: Path
) -> None:
    fake.settings.page_limit = fake.settings.parts_page_limit = 2
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/pages")
    for n in range(5):
        local = _local(tmp_path, os.urandom(100), f"f{n}")
        drive.upload(local, folder, f"f{n}.txt", {}, callbacks=UploadCallbacks(), cancel=threading.Event())
    listed = fake.stats().calls.get("/adrive/v3/file/list", 0)
    assert drive.find(folder, "f4.txt") is not None
    assert fake.stats().calls["/adrive/v3/file/list"] - listed == 3  # pages of 2, 2 and 1
    local = _local(tmp_path, os.urandom(7 * PART))
    first = Recorder(cancel_after=5)
    with pytest.raises(Cancelled):
        drive.upload(local, folder, "p.bin", {}, callbacks=first, cancel=first.cancel)
    second = Recorder()
    drive.upload(local, folder, "p.bin", first.saved, callbacks=second, cancel=second.cancel)
    assert ("confirmed", 5) in second.events  # found over three pages of the drive's part list


def test_an_expired_upload_id_starts_a_fresh_upload(box: DriveBox, fake: FakeDrive, tmp_path: Path) -> None:
    local = _local(tmp_path, os.urandom(4 * PART))
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/e")
    first = Recorder(cancel_after=1)
    with pytest.raises(Cancelled):
        drive.upload(local, folder, "e.bin", {}, callbacks=first, cancel=first.cancel)
    fake.expire_upload_ids()
    second = Recorder()
    result = drive.upload(local, folder, "e.bin", first.saved, callbacks=second, cancel=second.cancel)
    assert ("restarted",) in second.events
    assert second.saved["upload_id"] != first.saved["upload_id"]
    assert result.file.size == local.size


def test_dropped_connections_expired_urls_and_lost_answers(
    box: DriveBox, fake: FakeDrive, tmp_path: Path
) -> None:
    data = os.urandom(6 * PART)
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/d")
    fake.drop_next(UPLOAD_PREFIX, after_bytes=1000)  # part 1 cut mid-body: nothing kept
    recorder = Recorder()
    result = drive.upload(
        _local(tmp_path, data), folder, "d.bin", {}, callbacks=recorder, cancel=recorder.cancel
    )
    upload_id = recorder.saved["upload_id"]
    assert fake.stats().put_bytes_by_upload[upload_id] == len(data) + 1000
    assert result.file.content_hash == hashlib.sha1(data).hexdigest().upper()

    fake.drop_next(UPLOAD_PREFIX, after_bytes=10 * PART)  # whole part kept, the answer lost
    fake.fail_next(UPLOAD_PREFIX + "/", 403, code="AccessDenied", message="Request has expired.")
    again = Recorder()
    other = os.urandom(6 * PART)
    drive.upload(_local(tmp_path, other, "o"), folder, "o.bin", {}, callbacks=again, cancel=again.cancel)
    assert fake.stats().put_bytes_by_upload[again.saved["upload_id"]] == len(other)  # no part twice
    assert fake.stats().calls["/v2/file/get_upload_url"] >= 1
    assert fake.lookup("/relayd/d/o.bin", drive_id=fake.user.resource_drive_id).read_bytes() == other  # type: ignore[union-attr]


def test_an_oversized_error_from_the_upload_host_is_read_bounded(
    box: DriveBox, fake: FakeDrive, tmp_path: Path
) -> None:
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/big-error")
    huge = "<?xml version='1.0'?><Error><Code>InvalidArgument</Code>" + "x" * (32 * 1024 * 1024)
    fake.fail_next(UPLOAD_PREFIX, 400, body=huge)
    recorder = Recorder()
    with pytest.raises(Permanent) as caught:
        drive.upload(
            _local(tmp_path, os.urandom(2 * PART)),
            folder,
            "b.bin",
            {},
            callbacks=recorder,
            cancel=recorder.cancel,
        )
    assert "400" in str(caught.value) and len(str(caught.value)) < 500
    # relayd read a few KiB and hung up: the fake could not hand over most of the answer.
    assert fake.stats().injected_bytes_sent < 16 * 1024 * 1024


@pytest.mark.parametrize("code", ["PartNotSequential", "PartAlreadyExist"])
def test_a_409_on_a_part_asks_the_drive_what_it_holds(
    box: DriveBox, fake: FakeDrive, tmp_path: Path, code: str
) -> None:
    """A part PUT may answer 409 (Aliyun's SDK counts 200 and 409 as sent); relayd asks the drive's
    list of parts instead of trusting either."""
    data = os.urandom(3 * PART)
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/conflict")
    fake.fail_next(UPLOAD_PREFIX, 409, code=code)
    recorder = Recorder()
    result = drive.upload(
        _local(tmp_path, data), folder, "c.bin", {}, callbacks=recorder, cancel=recorder.cancel
    )
    assert result.file.content_hash == hashlib.sha1(data).hexdigest().upper()
    assert fake.stats().calls["/v2/file/list_uploaded_parts"] == 1
    assert ("confirmed", 0) in recorder.events  # the refused part was not counted as sent


def test_a_429_on_a_part_is_retryable_with_retry_after(
    box: DriveBox, fake: FakeDrive, tmp_path: Path
) -> None:
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/s")
    fake.fail_next(UPLOAD_PREFIX, 429, retry_after=3)
    recorder = Recorder()
    local = _local(tmp_path, os.urandom(3 * PART))
    with pytest.raises(Retryable) as caught:
        drive.upload(local, folder, "s.bin", {}, callbacks=recorder, cancel=recorder.cancel)
    assert (caught.value.retry_after, caught.value.error_class) == (3, "rate_limit")
    result = drive.upload(local, folder, "s.bin", recorder.saved, callbacks=recorder, cancel=recorder.cancel)
    assert result.file.size == local.size


def test_a_complete_whose_answer_was_lost(box: DriveBox, fake: FakeDrive, tmp_path: Path) -> None:
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/l")
    data = os.urandom(2 * PART)
    fake.drop_next("/v2/file/complete")
    recorder = Recorder()
    result = drive.upload(
        _local(tmp_path, data), folder, "l.bin", {}, callbacks=recorder, cancel=recorder.cancel
    )
    assert result.file.content_hash == hashlib.sha1(data).hexdigest().upper()


# -- download links ---------------------------------------------------------------------------------


def test_download_url_for_vm_pull(box: DriveBox, fake: FakeDrive, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/dl")
    uploaded = drive.upload(
        _local(tmp_path, data), folder, "dl.bin", {}, callbacks=UploadCallbacks(), cancel=threading.Event()
    )
    link = drive.download_url(uploaded.file.file_id)
    assert link.headers == {"Referer": "https://www.aliyundrive.com/"}
    assert link.alternatives == ({"Referer": "https://www.alipan.com/"},)
    assert box.drive(referer="https://www.alipan.com/").download_url(uploaded.file.file_id).alternatives == (
        {"Referer": "https://www.aliyundrive.com/"},
    )
    assert (link.size, link.content_hash) == (len(data), hashlib.sha1(data).hexdigest().upper())
    remaining = (link.expires_at - uploaded_time()).total_seconds()
    assert 3000 < remaining <= 3601
    assert link.url not in repr(link)
    response = requests.get(link.url, headers={**link.headers, "Range": "bytes=10-"}, timeout=10)
    assert response.status_code == 206 and response.content == data[10:]
    assert fake.authorized_data_requests() == []
    folder_link_error = pytest.raises(Exception)
    with folder_link_error:
        drive.download_url(folder)


def uploaded_time() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_find_path_and_trash_and_rename(box: DriveBox, tmp_path: Path) -> None:
    drive = box.drive()
    folder = drive.ensure_folder("/relayd/f/sub")
    made = drive.upload(
        _local(tmp_path, b"x" * 3000),
        folder,
        "f.bin",
        {},
        callbacks=UploadCallbacks(),
        cancel=threading.Event(),
    )
    assert drive.find_path("/relayd/f/sub/f.bin") == made.file
    assert drive.find_path("/relayd/nope/f.bin") is None
    renamed = drive.rename(made.file.file_id, "g.bin")
    assert renamed.name == "g.bin" and drive.find(folder, "f.bin") is None
    drive.trash(made.file.file_id)
    assert drive.get(made.file.file_id) is None
    assert drive.find(folder, "g.bin") is None
    with pytest.raises(Exception, match="drive path"):
        drive.ensure_folder("relative/path")


def test_make_drive_picks_the_backend(box: DriveBox) -> None:
    from relayd.drive import make_drive
    from relayd.errors import ConfigError

    made = make_drive(box.config(), box.state_dir, box.store)
    assert isinstance(made, AligoDrive)
    made.close()
    with pytest.raises(ConfigError):
        make_drive(box.config(backend="other"), box.state_dir)


def test_a_wrong_content_hash_after_complete_is_detected(
    box: DriveBox, fake: FakeDrive, tmp_path: Path
) -> None:
    from relayd.drive.base import ContentMismatch

    drive = box.drive()
    folder = drive.ensure_folder("/relayd/w")
    data = os.urandom(3 * PART)
    fake.corrupt_next_parts(1)  # the fake's knob: part bytes damaged in transit
    recorder = Recorder()
    with pytest.raises(ContentMismatch) as caught:
        drive.upload(_local(tmp_path, data), folder, "w.bin", {}, callbacks=recorder, cancel=recorder.cancel)
    assert caught.value.file.content_hash != hashlib.sha1(data).hexdigest().upper()
    assert caught.value.file.size == len(data)
    assert caught.value.error_class == "integrity"


def test_aligo_giving_up_on_connections_is_retryable(box: DriveBox, fake: FakeDrive) -> None:
    drive = box.drive()
    assert box.store.service_state()["drive.token"][0]["state"] == "expired"  # published at start
    folder = drive.ensure_folder("/relayd/gone")
    # aligo retries a dropped connection five times, then fails with an AttributeError of its own.
    fake.drop_next("/adrive/v3/file/list", count=5)
    with pytest.raises(Retryable) as caught:
        drive.find(folder, "x")
    assert caught.value.error_class == "client"
    assert drive.find(folder, "x") is None


def test_importing_aligo_leaves_home_alone_for_other_threads(tmp_path: Path) -> None:
    """A drive may be built while workers start git or ssh: aligo's import gets a private home folder
    without the process's HOME changing, even for a moment (watched from another thread)."""
    real_home = tmp_path / "real-home"
    real_home.mkdir()
    private = tmp_path / "private"
    code = (
        "import os, threading\n"
        "from pathlib import Path\n"
        "from relayd.drive.aligo_session import load_aligo\n"
        "seen, done = set(), threading.Event()\n"
        "def watch():\n"
        "    while not done.is_set():\n"
        "        seen.add(os.environ.get('HOME'))\n"
        "watcher = threading.Thread(target=watch)\n"
        "watcher.start()\n"
        f"load_aligo(Path({str(private)!r}))\n"
        "done.set()\n"
        "watcher.join()\n"
        "print(sorted(seen), Path.home())\n"
    )
    env = {**os.environ, "HOME": str(real_home)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == [f"['{real_home}']", str(real_home)]
    assert not (real_home / ".aligo").exists()
    assert (private / "home" / ".aligo").is_dir()
