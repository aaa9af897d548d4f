"""OpenDrive (``drive.backend = "open"``) against the fake drive's Open Platform routes: QR login and
the saved pair, rotation and refusal, rapid upload, multipart with URL refresh and resume across a new
instance, the per-file limit before a byte, 413, 429 with ``x-retry-after``, 5xx, download links,
``get_by_path``, and that the access token never reaches the data host."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from relayd.config import DriveConfig, SecretRef
from relayd.drive.base import LocalFile, UploadCallbacks
from relayd.drive.open_backend import OpenDrive
from relayd.errors import ErrorClass, NeedsPerson, Permanent, Retryable
from relayd_sandbox.drive import UPLOAD_PREFIX, FakeDrive, OpenApp

PART = 64 * 1024
OPEN = "/adrive/v1.0/openFile"


def open_config(fake: FakeDrive, app: OpenApp, tmp_path: Path, **changes: Any) -> DriveConfig:
    secret = SecretRef("drive.client_secret")
    if app.client_secret:
        path = tmp_path / "client-secret"
        path.write_text(app.client_secret)
        secret = SecretRef("drive.client_secret", file=path)
    config = DriveConfig(
        backend="open",
        api_url=fake.api_url,
        refresh_token=SecretRef("drive.refresh_token"),
        root="/relayd",
        drive="resource",
        concurrency=3,
        referer="https://www.aliyundrive.com/",
        on_conflict="replace",
        timeout=10.0,
        url_lifetime=900.0,
        client_id=app.client_id,
        client_secret=secret,
    )
    return dataclasses.replace(config, **changes)


def qr_login(drive: OpenDrive, fake: FakeDrive) -> None:
    """Log *drive* in the way `relayctl drive login` does, with the fake playing the phone."""
    qr = drive.auth.start_qr()
    assert qr.url.endswith(qr.sid)
    assert drive.auth.qr_status(qr.sid) == ("WaitLogin", "")
    fake.scan_qr(qr.sid)
    status, code = drive.auth.qr_status(qr.sid)
    assert status == "LoginSuccess"
    drive.auth.finish(code, qr.verifier)


@pytest.fixture
def app(fake_drive: FakeDrive) -> OpenApp:
    return fake_drive.register_app()


@pytest.fixture
def drive(fake_drive: FakeDrive, app: OpenApp, tmp_path: Path) -> OpenDrive:
    made = OpenDrive(open_config(fake_drive, app, tmp_path), tmp_path / "state", part_size=PART)
    qr_login(made, fake_drive)
    return made


def local(tmp_path: Path, data: bytes, name: str = "f.bin") -> LocalFile:
    path = tmp_path / name
    path.write_bytes(data)
    return LocalFile(path, len(data), hashlib.sha1(data).hexdigest())


def upload(
    drive: OpenDrive, file: LocalFile, name: str = "f.bin", state: dict[str, Any] | None = None, **cb: Any
) -> Any:
    parent = drive.ensure_folder("/relayd/o/n")
    return drive.upload(
        file, parent, name, state or {}, callbacks=UploadCallbacks(**cb), cancel=threading.Event()
    )


def test_qr_login_saves_both_lifetimes_atomically_with_mode_0600(drive: OpenDrive) -> None:
    lifetime = drive.token_lifetime()
    assert lifetime.state == "valid"
    assert lifetime.expires_at is not None and lifetime.refresh_expires_at is not None
    assert timedelta(days=89) < lifetime.refresh_expires_at - datetime.now(UTC) <= timedelta(days=90)
    assert stat.S_IMODE(drive.tokens.path.stat().st_mode) == 0o600
    assert "refresh_expires_at" in lifetime.as_fact()


def test_a_pkce_app_logs_in_without_a_secret(fake_drive: FakeDrive, tmp_path: Path) -> None:
    app = fake_drive.register_app(pkce=True)
    drive = OpenDrive(open_config(fake_drive, app, tmp_path), tmp_path / "state")
    qr_login(drive, fake_drive)
    lifetime = drive.token_lifetime()
    assert lifetime.refresh_expires_at is None
    assert lifetime.remaining() is not None and lifetime.remaining() > 29 * 86400  # type: ignore[operator]
    assert drive.drive_id() == fake_drive.user.resource_drive_id


def test_an_expired_pkce_token_needs_a_new_login(fake_drive: FakeDrive, tmp_path: Path) -> None:
    app = fake_drive.register_app(pkce=True)
    drive = OpenDrive(open_config(fake_drive, app, tmp_path), tmp_path / "state")
    qr_login(drive, fake_drive)
    record = drive.tokens.load()
    assert record is not None
    record["expires_at"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    drive.tokens.save(record)
    with pytest.raises(NeedsPerson) as caught:
        OpenDrive(drive.config, tmp_path / "state").drive_id()
    assert caught.value.error_class == ErrorClass.AUTH and "relayctl drive login" in (caught.value.hint or "")


def test_without_a_login_the_drive_needs_a_person(
    fake_drive: FakeDrive, app: OpenApp, tmp_path: Path
) -> None:
    drive = OpenDrive(open_config(fake_drive, app, tmp_path), tmp_path / "state")
    with pytest.raises(NeedsPerson) as caught:
        drive.ensure_folder("/relayd")
    assert caught.value.error_class == ErrorClass.AUTH


def test_an_expired_access_token_is_refreshed_once_and_rotation_saved(
    drive: OpenDrive, fake_drive: FakeDrive
) -> None:
    before = drive.tokens.load()
    assert before is not None
    fake_drive.expire_access_tokens()
    assert drive.drive_id()
    drive._drive_id = None
    assert drive.drive_id()  # the refreshed token works
    after = drive.tokens.load()
    assert after is not None and after["refresh_token"] != before["refresh_token"]
    assert fake_drive.stats().refreshes == 1


def test_a_refused_refresh_token_blocks_and_is_never_sent_again(
    drive: OpenDrive, fake_drive: FakeDrive
) -> None:
    fake_drive.revoke_refresh_tokens()
    fake_drive.expire_access_tokens()
    with pytest.raises(NeedsPerson) as caught:
        drive.drive_id()
    assert caught.value.error_class == ErrorClass.AUTH
    assert drive.token_lifetime().state == "refused"
    with pytest.raises(NeedsPerson):
        OpenDrive(drive.config, drive.tokens.directory.parent.parent).drive_id()
    assert fake_drive.stats().refresh_failures == 1


def test_multipart_upload_verifies_and_keeps_the_token_off_the_data_host(
    drive: OpenDrive, fake_drive: FakeDrive, tmp_path: Path
) -> None:
    data = os.urandom(5 * PART + 123)
    done: list[int] = []
    result = upload(drive, local(tmp_path, data), part_done=done.append)
    assert not result.rapid and done == [1, 2, 3, 4, 5, 6]
    assert result.file.content_hash == hashlib.sha1(data).hexdigest().upper()
    assert fake_drive.lookup("/relayd/o/n/f.bin", drive_id=fake_drive.user.resource_drive_id) is not None
    assert fake_drive.authorized_data_requests() == []
    assert drive.find_path("/relayd/o/n/f.bin") == result.file
    assert drive.find(drive.ensure_folder("/relayd/o/n"), "f.bin") == result.file
    assert drive.find_path("/relayd/o/n/missing.bin") is None


def test_rapid_upload_sends_no_payload(drive: OpenDrive, fake_drive: FakeDrive, tmp_path: Path) -> None:
    data = os.urandom(3 * PART)
    fake_drive.seed_content(data)
    drive.ensure_folder("/relayd/o/n")
    before = fake_drive.stats().calls.get(f"{OPEN}/create", 0)
    result = upload(drive, local(tmp_path, data))
    assert result.rapid and fake_drive.stats().put_bytes == 0
    # pre_hash, then content_hash + proof
    assert fake_drive.stats().calls.get(f"{OPEN}/create", 0) - before == 2


def test_a_refused_proof_is_computed_again(drive: OpenDrive, fake_drive: FakeDrive, tmp_path: Path) -> None:
    data = os.urandom(2 * PART)
    fake_drive.seed_content(data)
    fake_drive.reject_next_proofs(1)
    assert upload(drive, local(tmp_path, data)).rapid


def test_expired_part_urls_are_refreshed(drive: OpenDrive, fake_drive: FakeDrive, tmp_path: Path) -> None:
    data = os.urandom(3 * PART)
    fake_drive.expire_upload_urls()
    seen: list[int] = []

    def expire_after_first(number: int) -> None:
        seen.append(number)
        if number == 1:
            fake_drive.expire_upload_urls()

    upload(drive, local(tmp_path, data), part_done=expire_after_first)
    assert seen == [1, 2, 3]
    assert fake_drive.stats().calls.get(f"{OPEN}/getUploadUrl", 0) >= 1


def test_a_new_instance_resumes_from_the_parts_the_drive_holds(
    drive: OpenDrive, fake_drive: FakeDrive, tmp_path: Path
) -> None:
    data = os.urandom(6 * PART)
    file = local(tmp_path, data)
    saved: dict[str, Any] = {}
    cancel = threading.Event()

    def stop_after_three(number: int) -> None:
        if number == 3:
            cancel.set()

    parent = drive.ensure_folder("/relayd/o/n")
    with pytest.raises(Exception, match="stopping"):
        drive.upload(
            file,
            parent,
            "f.bin",
            {},
            callbacks=UploadCallbacks(state=saved.update, part_done=stop_after_three),
            cancel=cancel,
        )
    sent_before = fake_drive.stats().put_bytes
    again = OpenDrive(drive.config, drive.tokens.directory.parent.parent, part_size=PART)
    held: list[int] = []
    result = again.upload(
        file,
        parent,
        "f.bin",
        dict(saved),
        callbacks=UploadCallbacks(confirmed=held.append),
        cancel=threading.Event(),
    )
    assert held == [3]
    assert fake_drive.stats().put_bytes - sent_before == 3 * PART  # only parts 4..6
    assert result.file.content_hash == file.sha1.upper()
    assert fake_drive.stats().calls.get(f"{OPEN}/listUploadedParts", 0) >= 1


def test_an_expired_upload_id_starts_again(drive: OpenDrive, fake_drive: FakeDrive, tmp_path: Path) -> None:
    data = os.urandom(3 * PART)
    file = local(tmp_path, data)
    saved: dict[str, Any] = {}
    cancel = threading.Event()
    parent = drive.ensure_folder("/relayd/o/n")
    with pytest.raises(Exception, match="stopping"):
        drive.upload(
            file,
            parent,
            "f.bin",
            {},
            callbacks=UploadCallbacks(state=saved.update, part_done=lambda n: cancel.set()),
            cancel=cancel,
        )
    fake_drive.expire_upload_ids()
    restarted: list[bool] = []
    result = drive.upload(
        file,
        parent,
        "f.bin",
        dict(saved),
        callbacks=UploadCallbacks(restarted=lambda: restarted.append(True)),
        cancel=threading.Event(),
    )
    assert restarted and result.file.content_hash == file.sha1.upper()


def test_a_file_over_the_limit_is_blocked_before_a_byte(
    drive: OpenDrive, fake_drive: FakeDrive, tmp_path: Path
) -> None:
    small = dataclasses.replace(drive.config, max_file_size=PART)
    limited = OpenDrive(small, drive.tokens.directory.parent.parent, part_size=PART)
    limited.ensure_folder("/relayd/o/n")
    calls_before = dict(fake_drive.stats().calls)
    with pytest.raises(NeedsPerson) as caught:
        upload(limited, local(tmp_path, os.urandom(PART + 1)))
    assert caught.value.error_class == ErrorClass.QUOTA
    assert "64.0 KiB" in str(caught.value) or "per-file limit" in str(caught.value)
    assert "split" in (caught.value.hint or "")
    assert fake_drive.stats().calls.get(f"{OPEN}/create", 0) == calls_before.get(f"{OPEN}/create", 0)
    assert fake_drive.stats().put_bytes == 0


def test_the_drives_413_blocks_with_the_limit_hint(
    drive: OpenDrive, fake_drive: FakeDrive, tmp_path: Path
) -> None:
    fake_drive.settings.open_max_file_size = PART
    with pytest.raises(NeedsPerson) as caught:
        upload(drive, local(tmp_path, os.urandom(2 * PART)))
    assert "413" in str(caught.value) and "split" in (caught.value.hint or "")
    assert fake_drive.stats().put_bytes == 0


def test_429_waits_x_retry_after_milliseconds(drive: OpenDrive, fake_drive: FakeDrive) -> None:
    fake_drive.fail_next(f"{OPEN}/get_by_path", 429, retry_after=2.5)
    with pytest.raises(Retryable) as caught:
        drive.ensure_folder("/relayd")
    assert caught.value.error_class == ErrorClass.RATE_LIMIT and caught.value.retry_after == 2.5


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retryable(drive: OpenDrive, fake_drive: FakeDrive, status: int) -> None:
    fake_drive.fail_next(f"{OPEN}/get_by_path", status, body="Bad Gateway")
    with pytest.raises(Retryable) as caught:
        drive.ensure_folder("/relayd")
    assert caught.value.error_class == ErrorClass.SERVER


def test_an_endpoint_the_drive_no_longer_has_blocks(drive: OpenDrive, fake_drive: FakeDrive) -> None:
    fake_drive.settings.removed_endpoints = frozenset({f"{OPEN}/get_by_path"})
    with pytest.raises(NeedsPerson) as caught:
        drive.ensure_folder("/relayd")
    assert caught.value.error_class == ErrorClass.API_CHANGED


def test_a_full_drive_blocks(drive: OpenDrive, fake_drive: FakeDrive, tmp_path: Path) -> None:
    fake_drive.fail_next(f"{OPEN}/create", 400, code="QuotaExhausted.Drive")
    with pytest.raises(NeedsPerson) as caught:
        upload(drive, local(tmp_path, os.urandom(100)))
    assert caught.value.error_class == ErrorClass.QUOTA


def test_folders_are_found_by_path_in_one_call(drive: OpenDrive, fake_drive: FakeDrive) -> None:
    first = drive.ensure_folder("/relayd/a/b")
    drive.forget_folders()
    before = fake_drive.stats().calls.get(f"{OPEN}/create", 0)
    assert drive.ensure_folder("/relayd/a/b") == first
    assert fake_drive.stats().calls.get(f"{OPEN}/create", 0) == before
    with pytest.raises(Permanent):
        drive.ensure_folder("/relayd/../x")


def test_download_links_last_900_s_and_need_no_referer(
    drive: OpenDrive, fake_drive: FakeDrive, tmp_path: Path
) -> None:
    data = os.urandom(2 * PART)
    result = upload(drive, local(tmp_path, data))
    link = drive.download_url(result.file.file_id)
    assert link.headers == {} and link.size == len(data)
    assert 800 < (link.expires_at - datetime.now(UTC)).total_seconds() <= 900
    assert requests.get(link.url, timeout=10).content == data
    assert "url" not in repr(link).lower().replace("downloadlink", "")
    drive.trash(result.file.file_id)
    assert drive.get(result.file.file_id) is None


def test_vip_info_and_rename(drive: OpenDrive, fake_drive: FakeDrive, tmp_path: Path) -> None:
    fake_drive.settings.third_party_vip = True
    assert drive.vip_info()["thirdPartyVip"] is True
    result = upload(drive, local(tmp_path, os.urandom(100)))
    assert drive.rename(result.file.file_id, "g.bin").name == "g.bin"


def test_a_part_put_never_carries_authorization(
    drive: OpenDrive, fake_drive: FakeDrive, tmp_path: Path
) -> None:
    upload(drive, local(tmp_path, os.urandom(2 * PART)))
    puts = [r for r in fake_drive.requests.snapshot() if r.path.startswith(UPLOAD_PREFIX)]
    assert puts and all(r.header("Authorization") is None for r in puts)


def test_a_wrong_client_secret_blocks_with_the_login_hint(drive: OpenDrive, fake_drive: FakeDrive) -> None:
    secret_file = drive.config.client_secret.file
    assert secret_file is not None
    secret_file.write_text("not-the-secret")
    fake_drive.expire_access_tokens()
    with pytest.raises(NeedsPerson) as caught:
        OpenDrive(drive.config, drive.tokens.directory.parent.parent).drive_id()
    assert caught.value.error_class == ErrorClass.AUTH and "relayctl drive login" in (caught.value.hint or "")
    assert "not-the-secret" not in str(caught.value)
    assert drive.token_lifetime().state != "refused"  # the refresh token was not spent
