"""The pan_upload hop through the real engine (and the real daemon for kill -9 and restarts), with
real aligo against the fake drive: rapid upload, multipart that resumes, verified copies, the name
collision policy, token rotation and expiry, and no secrets where they must not be."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import signal
import threading
import time
from typing import Any

import pytest

from relayd.catalogue.schema import BLOCKED, DONE, WAITING
from relayd.drive.base import (
    DownloadLink,
    Drive,
    DriveFile,
    LocalFile,
    NameTaken,
    TokenLifetime,
    UploadCallbacks,
    UploadGone,
    UploadResult,
)
from relayd.drive.hashing import part_count
from relayd.errors import Cancelled
from relayd_sandbox.drive import FakeDrive
from tests.support.drivebox import PART, DriveBox, sign_in_other_devices

MIB = 1024 * 1024

# tests/drive's fixtures, for this module's tests: the fake drive, the tokens it issues, a DriveBox over it.


def _resource(fake: FakeDrive, path: str) -> Any:
    return fake.lookup(path, drive_id=fake.user.resource_drive_id)


def _done(box: DriveBox) -> None:
    states = [(t.id, t.state, t.last_error) for t in box.transfers()]
    assert all(state == DONE for _, state, _ in states), states


# -- rapid upload and plain uploads -----------------------------------------------------------------


def test_rapid_hit_sends_no_payload_bytes(box: DriveBox, fake: FakeDrive) -> None:
    data = os.urandom(3 * PART + 5)
    fake.seed_content(data)
    staged = box.stage("acme/known", {"weights.bin": data})
    box.run()
    _done(box)
    stats = fake.stats()
    assert (stats.put_bytes, stats.rapid_upload_hits, stats.pre_hash_matches) == (0, 1, 1)
    (transfer,) = box.transfers()
    assert transfer.handles["rapid"] is True
    assert transfer.handles["content_hash"] == staged["weights.bin"].sha1.upper()
    assert transfer.handles["path"] == "/relayd/acme/known/weights.bin"
    stored = _resource(fake, "/relayd/acme/known/weights.bin")
    assert stored is not None and transfer.handles["file_id"] == stored.file_id
    assert set(transfer.handles) >= {"file_id", "drive_id", "path", "content_hash", "rapid"}
    assert all(p.done for p in box.pieces(transfer.id))
    assert transfer.bytes_moved == 0


def test_rapid_miss_then_full_upload_of_a_repo(box: DriveBox, fake: FakeDrive) -> None:
    files = {
        "model.bin": os.urandom(7 * PART + 99),
        "sub/dir/config.json": b'{"hidden_size": 8}',
        "empty.txt": b"",
        "README.md": os.urandom(1500),
    }
    staged = box.stage("acme/tiny", files)
    box.run()
    _done(box)
    for path, data in files.items():
        stored = _resource(fake, f"/relayd/acme/tiny/{path}")
        assert stored is not None and stored.read_bytes() == data
        assert stored.content_hash == staged[path].sha1.upper()
    assert fake.stats().put_bytes == sum(len(d) for d in files.values())
    assert fake.stats().rapid_upload_hits == 1  # the empty file: the drive always knows it
    big = next(t for t in box.transfers() if t.bytes_total == len(files["model.bin"]))
    pieces = box.pieces(big.id)
    assert len(pieces) == part_count(len(files["model.bin"]), PART)
    assert all(p.done and p.sends == 1 for p in pieces)
    assert big.handles["rapid"] is False and "upload" not in big.handles
    assert fake.authorized_data_requests() == []


def test_destination_folder_from_the_repo_and_for_datasets(box: DriveBox, fake: FakeDrive) -> None:
    box.stage("acme/a", {"x.bin": b"a" * 2000}, destinations={"drive_folder": "/mirror/custom"})
    box.stage("acme/b", {"y.bin": b"b" * 2000}, repo_type="dataset")
    box.run()
    _done(box)
    assert _resource(fake, "/mirror/custom/x.bin") is not None
    assert _resource(fake, "/relayd/datasets/acme/b/y.bin") is not None


def test_a_file_already_there_with_the_same_hash_is_not_uploaded(box: DriveBox, fake: FakeDrive) -> None:
    data = os.urandom(4 * PART)
    box.stage("acme/one", {"w.bin": data})
    box.run()
    puts, creates = fake.stats().put_bytes, fake.stats().calls.get("/adrive/v2/file/createWithFolders", 0)
    box.stage("acme/two", {"w.bin": data}, destinations={"drive_folder": "/relayd/acme/one"})
    box.run()
    _done(box)
    assert fake.stats().put_bytes == puts
    # Folders are created with `refuse` (one call each); no file create at all.
    assert fake.stats().calls["/adrive/v2/file/createWithFolders"] - creates == 3
    one, two = box.transfers()
    assert one.handles["file_id"] == two.handles["file_id"]


def test_a_missing_sha1_is_computed_once_and_recorded(box: DriveBox, fake: FakeDrive) -> None:
    data = os.urandom(2 * PART)
    box.stage("acme/nosha", {"w.bin": data}, record_sha1=False)
    box.run()
    _done(box)
    (transfer,) = box.transfers()
    job = box.store.load_job(transfer.id)
    assert job.file is not None and job.file.sha1 == hashlib.sha1(data).hexdigest()


# -- verification and collisions --------------------------------------------------------------------


def test_a_wrong_content_hash_after_complete_is_detected_and_repaired(
    box: DriveBox, fake: FakeDrive, caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(4 * PART)
    box.stage("acme/rot", {"w.bin": data})
    fake.corrupt_next_parts(1)
    box.run()
    _done(box)
    (transfer,) = box.transfers()
    assert transfer.attempts == 2
    detected = [r for r in caplog.records if "the drive's copy is wrong" in r.getMessage()]
    assert len(detected) == 1 and "content hash" in detected[0].getMessage()
    assert any(
        "sha1 mismatch measured on the drive after pan_upload" in r.getMessage()
        and "sending it again" in r.getMessage()
        and r.name == "relayd.hops.pan_upload"
        for r in caplog.records
    )
    # The wrong copy went to the recycle bin; the one at the path has the right bytes.
    trashed = [f for f in fake.files(include_hidden=True) if f.trashed and f.name == "w.bin"]
    assert len(trashed) == 1 and trashed[0].content_hash != hashlib.sha1(data).hexdigest().upper()
    stored = _resource(fake, "/relayd/acme/rot/w.bin")
    assert stored is not None and stored.read_bytes() == data


def test_a_link_that_keeps_damaging_uploads_blocks_after_the_second_send(
    box: DriveBox, fake: FakeDrive
) -> None:
    """Every part arrives with a byte flipped: the file is uploaded exactly twice, then blocked with
    the expected sha1, the one the drive measured, and where; never a third time."""
    data = os.urandom(4 * PART)
    box.stage("acme/rot", {"w.bin": data})
    fake.corrupt_next_parts(1000)
    box.run(timeout=20)
    (transfer,) = box.transfers()
    assert transfer.state == BLOCKED and transfer.error_class == "integrity"
    error = transfer.last_error or ""
    assert error.startswith("sha1 mismatch measured on the drive after pan_upload, twice in a row")
    expected, got = re.findall(r"expected ([0-9A-F]{40}), got ([0-9A-F]{40})", error)[0]
    assert expected == hashlib.sha1(data).hexdigest().upper() and got != expected
    assert "staged copy is intact" in (transfer.hint or "")
    assert fake.stats().put_bytes == 2 * len(data)
    assert {p.sends for p in box.pieces(transfer.id)} == {2}
    trashed = [f for f in fake.files(include_hidden=True) if f.trashed and f.name == "w.bin"]
    assert len(trashed) == 2 and _resource(fake, "/relayd/acme/rot/w.bin") is None


def test_a_damaged_staged_copy_blocks(box: DriveBox, fake: FakeDrive) -> None:
    data = os.urandom(3 * PART)
    staged = box.stage("acme/bad", {"w.bin": data})
    with staged["w.bin"].staged.open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\x00\xff")
    box.run()
    (transfer,) = box.transfers()
    assert transfer.state == BLOCKED and transfer.error_class == "integrity"
    assert "no longer matches its recorded sha1" in (transfer.last_error or "")
    assert _resource(fake, "/relayd/acme/bad/w.bin") is None


def test_a_missing_staged_copy_blocks(box: DriveBox) -> None:
    staged = box.stage("acme/gone", {"w.bin": os.urandom(2000)})
    staged["w.bin"].staged.unlink()
    box.run()
    (transfer,) = box.transfers()
    assert transfer.state == BLOCKED and transfer.error_class == "staging"
    assert "is gone" in (transfer.last_error or "")


def _place_stale(box: DriveBox, fake: FakeDrive, repo: str, name: str, data: bytes) -> str:
    """Put a different file where relayd will upload, as another client would have."""
    drive = box.drive()
    folder = drive.ensure_folder(f"/relayd/{repo}")
    path = box.root / "stale.bin"
    path.write_bytes(data)
    result = drive.upload(
        LocalFile(path, len(data), hashlib.sha1(data).hexdigest()),
        folder,
        name,
        {},
        callbacks=UploadCallbacks(),
        cancel=threading.Event(),
    )
    return result.file.file_id


def test_conflict_replace_moves_the_stale_file_to_the_recycle_bin(box: DriveBox, fake: FakeDrive) -> None:
    stale = _place_stale(box, fake, "acme/c", "w.bin", b"old" * 1000)
    data = os.urandom(2 * PART)
    box.stage("acme/c", {"w.bin": data})
    box.run(box.engine(on_conflict="replace"))
    _done(box)
    assert fake.file(stale).trashed  # type: ignore[union-attr]
    assert _resource(fake, "/relayd/acme/c/w.bin").read_bytes() == data


def test_conflict_keep_both_renames_the_stale_file_aside(box: DriveBox, fake: FakeDrive) -> None:
    stale = _place_stale(box, fake, "acme/k", "w.bin", b"old" * 1000)
    old_hash = hashlib.sha1(b"old" * 1000).hexdigest()
    data = os.urandom(2 * PART)
    box.stage("acme/k", {"w.bin": data})
    box.run(box.engine(on_conflict="keep_both"))
    _done(box)
    kept = fake.file(stale)
    assert kept is not None and not kept.trashed and kept.name == f"w.relayd-old-{old_hash[:8]}.bin"
    assert _resource(fake, "/relayd/acme/k/w.bin").read_bytes() == data


def test_conflict_block_waits_for_a_person_and_touches_nothing(box: DriveBox, fake: FakeDrive) -> None:
    stale = _place_stale(box, fake, "acme/b", "w.bin", b"old" * 1000)
    box.stage("acme/b", {"w.bin": os.urandom(2 * PART)})
    box.run(box.engine(on_conflict="block"))
    (transfer,) = box.transfers()
    assert transfer.state == BLOCKED and transfer.error_class == "conflict"
    assert "relayctl retry" in (transfer.hint or "")
    assert _resource(fake, "/relayd/acme/b/w.bin").file_id == stale


# -- tokens, throttling, concurrency ---------------------------------------------------------------


def test_access_token_expiry_mid_upload_refreshes_and_the_same_part_continues(
    box: DriveBox, fake: FakeDrive
) -> None:
    data = os.urandom(12 * PART)
    box.stage("acme/exp", {"w.bin": data})
    fake.settings.upload_bandwidth = 8 * PART  # about 1.5 s for the whole file
    engine = box.engine()
    runner = threading.Thread(target=lambda: box.run(engine), daemon=True)
    runner.start()

    def parts() -> int:
        uploads = fake.uploads()
        return len(uploads[0].parts) if uploads else 0

    box.wait_for(lambda: parts() >= 3, what="three parts at the drive")
    fake.expire_access_tokens()
    fake.expire_upload_urls()
    fake.settings.upload_bandwidth = None
    runner.join(60)
    _done(box)
    stats = fake.stats()
    (upload,) = fake.uploads()
    assert stats.refreshes == 2 and stats.refresh_failures == 0
    assert stats.put_bytes_by_upload[upload.upload_id] == len(data)  # no accepted part was sent twice
    assert stats.parts_received == 12
    assert stats.calls["/v2/file/get_upload_url"] >= 1


def test_429_backs_off_with_retry_after_and_continues(box: DriveBox, fake: FakeDrive) -> None:
    from relayd_sandbox.drive import UPLOAD_PREFIX

    data = os.urandom(4 * PART)
    box.stage("acme/slow", {"w.bin": data})
    fake.fail_next(UPLOAD_PREFIX, 429, retry_after=1)
    engine = box.engine()
    engine.run_until_idle(timeout=30)
    (transfer,) = box.transfers()
    assert transfer.state == WAITING and transfer.error_class == "rate_limit"
    assert transfer.next_attempt_at is not None
    delay = (transfer.next_attempt_at - transfer.updated_at).total_seconds()
    assert delay >= 0.9  # the engine's backoff here is ≤ 0.5 s: Retry-After wins
    box.run(engine)
    _done(box)
    assert fake.stats().put_bytes_by_upload[fake.uploads()[0].upload_id] == len(data)


# -- what only a person can fix blocks, once ----------------------------------------------------------


def _one_blocked(box: DriveBox, error_class: str) -> Any:
    (transfer,) = box.transfers()
    assert transfer.state == BLOCKED, (transfer.state, transfer.last_error)
    assert transfer.error_class == error_class
    assert transfer.attempts == 1  # blocked at the first failure, never retried for ever
    return transfer


def test_too_many_devices_blocks_with_the_device_hint_and_retry_resumes(
    box: DriveBox, fake: FakeDrive
) -> None:
    sign_in_other_devices(fake, 10)
    box.stage("acme/devices", {"w.bin": os.urandom(2 * PART)})
    engine = box.run()
    transfer = _one_blocked(box, "device")
    assert "UserDeviceOffline" in (transfer.last_error or "")
    assert "log one out in the Aliyun Drive app" in (transfer.hint or "")
    fake.log_out_device("other-device-0")  # the person does what the hint says, then `relayctl retry`
    assert box.store.retry() == 1
    box.run(engine)
    _done(box)


def test_a_refused_device_signature_blocks_with_a_login_hint(box: DriveBox, fake: FakeDrive) -> None:
    fake.settings.device_policy = "reject"
    box.stage("acme/signature", {"w.bin": os.urandom(PART)})
    box.run()
    transfer = _one_blocked(box, "device")
    assert "relayctl drive login" in (transfer.hint or "")


def test_an_api_the_drive_no_longer_has_blocks_instead_of_retrying(box: DriveBox, fake: FakeDrive) -> None:
    fake.settings.removed_endpoints = frozenset({"/adrive/v2/file/createWithFolders"})
    box.stage("acme/changed", {"w.bin": os.urandom(PART)})
    box.run()
    transfer = _one_blocked(box, "api_changed")
    assert "needs an update" in (transfer.hint or "")
    assert fake.stats().calls["/adrive/v2/file/createWithFolders"] == 1


def test_invalid_rapid_proof_is_a_refused_proof(box: DriveBox, fake: FakeDrive) -> None:
    fake.settings.proof_refusal_code = "InvalidRapidProof"
    data = os.urandom(3 * PART)
    fake.seed_content(data)
    fake.reject_next_proofs(1)
    box.stage("acme/proof", {"w.bin": data})
    box.run()
    _done(box)
    assert (fake.stats().proofs_rejected, fake.stats().put_bytes) == (1, 0)
    (transfer,) = box.transfers()
    assert transfer.handles["rapid"] is True


class CountingDrive(Drive):
    """Wraps a Drive and records how many uploads run at once."""

    backend = "counting"

    def __init__(self, inner: Drive) -> None:
        self.inner = inner
        self.now = 0
        self.most = 0
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def ensure_folder(self, path: str) -> str:
        return self.inner.ensure_folder(path)

    def find(self, parent_id: str, name: str) -> DriveFile | None:
        return self.inner.find(parent_id, name)

    def find_path(self, path: str) -> DriveFile | None:
        return self.inner.find_path(path)

    def get(self, file_id: str) -> DriveFile | None:
        return self.inner.get(file_id)

    def part_size(self, size: int) -> int:
        return self.inner.part_size(size)

    def upload(
        self, local: LocalFile, parent_id: str, name: str, state: dict[str, Any], **kw: Any
    ) -> UploadResult:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return self.inner.upload(local, parent_id, name, state, **kw)
        finally:
            with self.lock:
                self.now -= 1

    def trash(self, file_id: str) -> None:
        self.inner.trash(file_id)

    def rename(self, file_id: str, name: str) -> DriveFile:
        return self.inner.rename(file_id, name)

    def download_url(self, file_id: str) -> DownloadLink:
        return self.inner.download_url(file_id)

    def token_lifetime(self) -> TokenLifetime:
        return self.inner.token_lifetime()


def test_upload_concurrency_is_capped_and_concurrent_refreshes_do_not_race(
    box: DriveBox, fake: FakeDrive
) -> None:
    files = {f"f{i}.bin": os.urandom(6 * PART) for i in range(7)}
    box.stage("acme/many", files)
    fake.settings.upload_bandwidth = 16 * PART
    drive = CountingDrive(box.drive())
    engine = box.engine(drive, limit=3, workers=8)
    runner = threading.Thread(target=lambda: box.run(engine), daemon=True)
    runner.start()
    box.wait_for(lambda: drive.most >= 3, what="three uploads at once")
    fake.expire_access_tokens()  # every running upload meets a 401 at its next API call
    fake.expire_upload_urls()
    fake.settings.upload_bandwidth = None
    runner.join(120)
    _done(box)
    assert drive.most == 3
    assert fake.stats().refreshes == 2 and fake.stats().refresh_failures == 0


# -- a second backend fits the hop unchanged --------------------------------------------------------


class MemoryDrive(Drive):
    """A drive held in memory: proof that another backend fits the interface without touching the hop."""

    backend = "memory"

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, str, bytes]] = {}  # id → (parent, name, bytes)
        self.folders: dict[str, str] = {"/": "root"}
        self.ids = itertools.count()
        self.lock = threading.Lock()  # the hop uploads several files at once, as a real drive allows

    def ensure_folder(self, path: str) -> str:
        return self.folders.setdefault(path, f"folder:{path}")

    def find(self, parent_id: str, name: str) -> DriveFile | None:
        for file_id, (parent, file_name, data) in self.files.items():
            if (parent, file_name) == (parent_id, name):
                return DriveFile(file_id, name, len(data), hashlib.sha1(data).hexdigest().upper())
        return None

    def find_path(self, path: str) -> DriveFile | None:
        folder, _, name = path.rpartition("/")
        return self.find(self.folders.get(folder or "/", ""), name)

    def get(self, file_id: str) -> DriveFile | None:
        if file_id not in self.files:
            return None
        parent, name, data = self.files[file_id]
        return DriveFile(file_id, name, len(data), hashlib.sha1(data).hexdigest().upper(), "mem", parent)

    def part_size(self, size: int) -> int:
        return 1000

    def upload(
        self,
        local: LocalFile,
        parent_id: str,
        name: str,
        state: dict[str, Any],
        *,
        callbacks: UploadCallbacks,
        cancel: threading.Event,
    ) -> UploadResult:
        if self.find(parent_id, name):
            raise NameTaken(name, self.find(parent_id, name))
        count = part_count(local.size, 1000)
        callbacks.plan(1000, count)
        callbacks.state({"upload_id": "mem"})
        for number in range(1, count + 1):
            if cancel.is_set():
                raise Cancelled("stopping")
            callbacks.part_started(number)
            callbacks.part_done(number)
        with self.lock:
            if self.find(parent_id, name):
                raise NameTaken(name, self.find(parent_id, name))
            file_id = f"id{next(self.ids)}"
            self.files[file_id] = (parent_id, name, local.path.read_bytes())
        found = self.get(file_id)
        assert found is not None
        return UploadResult(found, rapid=False)

    def trash(self, file_id: str) -> None:
        self.files.pop(file_id, None)

    def rename(self, file_id: str, name: str) -> DriveFile:
        parent, _, data = self.files[file_id]
        self.files[file_id] = (parent, name, data)
        found = self.get(file_id)
        assert found is not None
        return found

    def download_url(self, file_id: str) -> DownloadLink:
        raise UploadGone("memory drives have no URLs")

    def token_lifetime(self) -> TokenLifetime:
        return TokenLifetime("valid")


def test_another_backend_fits_the_same_hop(box: DriveBox) -> None:
    memory = MemoryDrive()
    files = {"a.bin": os.urandom(4500), "b/c.bin": b"c" * 10}
    box.stage("acme/mem", files)
    box.run(box.engine(memory))
    _done(box)
    assert sorted(name for _, name, _ in memory.files.values()) == ["a.bin", "c.bin"]


# -- the daemon: kill -9, restarts, rotation, secrets ------------------------------------------------


def test_kill_9_mid_multipart_then_restart_resends_at_most_one_part(box: DriveBox, fake: FakeDrive) -> None:
    size = 6 * 10 * MIB + 12345  # the daemon uses the drive's own 10 MiB parts: 7 of them
    data = os.urandom(size)
    staged = box.stage("acme/big", {"model.safetensors": data})
    fake.settings.upload_bandwidth = 12 * MIB
    first = box.start_daemon()
    box.wait_for(lambda: bool(fake.uploads()) and len(fake.uploads()[0].parts) >= 2, what="two parts")
    time.sleep(0.3)  # well inside the third part
    first.send_signal(signal.SIGKILL)
    out, _ = first.communicate(timeout=10)
    assert out == b""
    (upload,) = fake.uploads()
    received_before = len(upload.parts)
    (transfer,) = box.transfers()
    assert transfer.handles["upload"]["upload_id"] == upload.upload_id  # saved before the first PUT
    fake.settings.upload_bandwidth = None
    second = box.start_daemon()
    box.wait_for(lambda: box.transfers()[0].state == DONE, timeout=120, what="the upload to finish")
    assert box.stop_daemon(second) == b""
    stats = fake.stats()
    assert [u.upload_id for u in fake.uploads()] == [upload.upload_id]  # resumed, not started again
    resent = stats.put_bytes_by_upload[upload.upload_id] - size
    print(f"re-sent {resent} bytes after kill -9 with {received_before} parts at the drive")
    assert 0 <= resent <= 10 * MIB, resent  # at most the one part in flight
    assert stats.parts_received == 7 and received_before >= 2
    stored = _resource(fake, "/relayd/acme/big/model.safetensors")
    assert stored is not None and stored.content_hash == staged["model.safetensors"].sha1.upper()
    assert "resuming the upload after part" in box.log()


def test_token_rotation_survives_daemon_restarts_and_no_secret_leaks(
    box: DriveBox, fake: FakeDrive, secrets: list[str]
) -> None:
    box.stage("acme/r1", {"a.bin": os.urandom(3 * PART)})
    first = box.start_daemon()
    box.wait_for(lambda: box.transfers()[0].state == DONE, what="the first upload")
    assert box.stop_daemon(first) == b""
    token_file = box.state_dir / "drive" / "token.json"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert (box.state_dir / "drive").stat().st_mode & 0o777 == 0o700
    saved = token_file.read_text()
    assert fake.stats().refreshes == 1

    # The bootstrap token in the config is dead now; a restart must use the saved, rotated one.
    fake.expire_access_tokens()
    box.stage("acme/r2", {"b.bin": os.urandom(3 * PART)})
    second = box.start_daemon()
    box.wait_for(lambda: all(t.state == DONE for t in box.transfers()), what="the second upload")
    assert box.stop_daemon(second) == b""
    assert fake.stats().refreshes == 2 and fake.stats().refresh_failures == 0
    assert token_file.read_text() != saved
    assert token_file.stat().st_mode & 0o777 == 0o600
    fact, _ = box.store.service_state()["drive.token"]
    assert fact["state"] == "valid" and fact["expires_at"] > fact["refreshed_at"]

    # A refused token blocks with the login hint, and still leaks nothing.
    fake.revoke_refresh_tokens()
    fake.expire_access_tokens()
    box.stage("acme/r3", {"c.bin": os.urandom(2 * PART)})
    third = box.start_daemon()
    box.wait_for(lambda: any(t.state == BLOCKED for t in box.transfers()), what="a blocked upload")
    assert box.stop_daemon(third) == b""
    blocked = next(t for t in box.transfers() if t.state == BLOCKED)
    assert "relayctl drive login --refresh-token-file" in (blocked.hint or "")

    box.store.close()
    catalogue = box.db.read_bytes() + b"".join(
        p.read_bytes() for p in box.db.parent.glob(box.db.name + "-*") if p.is_file()
    )
    texts = {"log": box.log(), "errors": " ".join(f"{t.last_error} {t.hint}" for t in box.transfers())}
    assert len(secrets) >= 5
    for secret in secrets:
        assert secret.encode() not in catalogue, "a drive token is in the catalogue"
        for where, text in texts.items():
            assert secret not in text, f"a drive token is in the {where}"
    assert not re.search(r"[█▀▄]{4}", box.log())  # no QR code art
