"""Fidelity of the fake Aliyun Drive: the real aligo 6.2.8 drives it, headless, through the redirect
adapter; plain ``requests`` clients (without Authorization, as relayd's will be) use the part and
download URLs it hands out.

aligo creates ``~/.aligo`` when imported and reads ``~/.aligo/config.json5`` from the HOME of that
moment, so it is imported only inside the ``aligo_mod`` fixture, with HOME pointed at a private
directory.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import os
import pwd
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from relayd.drive._redirect import ALIGO_HOSTS, RedirectAdapter, redirect_session
from relayd_sandbox.drive import (
    DOWNLOAD_PREFIX,
    UPLOAD_PREFIX,
    FakeDrive,
    pre_hash,
    proof_code,
    proof_offset,
    sha1_hex_upper,
)

REFERER = {"Referer": "https://www.aliyundrive.com/"}
PART = 64 * 1024
REAL_HOME = Path(pwd.getpwuid(os.getuid()).pw_dir)
REAL_CONFIG = REAL_HOME / ".aligo" / "config.json5"
_REAL_CONFIG_EXISTED = REAL_CONFIG.exists()

# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aligo_mod(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """Import aligo with HOME and TQDM_DISABLE set for the import only, and check that its
    import-time config folder (where config.json5 is read) is private."""
    if "aligo" not in sys.modules:
        saved = {key: os.environ.get(key) for key in ("HOME", "TQDM_DISABLE")}
        os.environ["HOME"] = str(tmp_path_factory.mktemp("aligo-home"))
        os.environ["TQDM_DISABLE"] = "1"
        try:
            importlib.import_module("aligo")
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    import_time_folder = Path(sys.modules["aligo.apis.Aligo"].aligo_config_folder)
    if REAL_HOME in import_time_folder.parents:
        pytest.fail(f"aligo was imported earlier with the real HOME; it would read {REAL_CONFIG}")
    assert not (import_time_folder / "config.json5").exists()
    return sys.modules["aligo"]


@pytest.fixture
def drive(tmp_path: Path) -> Iterator[FakeDrive]:
    with FakeDrive(tmp_path / "drive") as fake:
        yield fake


def _no_qr(link: str) -> None:
    raise AssertionError(f"aligo tried a QR login ({link})")


@pytest.fixture
def make_aligo(
    aligo_mod: ModuleType, drive: FakeDrive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Any]:
    """Return a factory of headless Aligo instances bound to the fake (the recipe of §9)."""
    auth_module = sys.modules["aligo.core.Auth"]
    monkeypatch.setattr(auth_module.Auth, "_SLEEP_TIME_SEC", 0)
    monkeypatch.setattr(auth_module, "aligo_config_folder", auth_module.aligo_config_folder)
    made = 0

    def make(token: dict[str, Any] | None = None, *, name: str = "relayd") -> Any:
        nonlocal made
        made += 1
        config = tmp_path / f"aligo-config-{made}"
        config.mkdir(mode=0o700)
        aligo_mod.set_config_folder(str(config))
        payload = dict(token or drive.token_payload(valid_access_token=False))
        payload.setdefault("x_device_id", "relayd-test-device")
        (config / f"{name}.json").write_text(json.dumps(payload))
        ali = aligo_mod.Aligo(
            name,
            show=_no_qr,
            re_login=False,
            requests_timeout=10,
            login_timeout=1,
            request_failed_delay=0,
            level=logging.WARNING,
        )
        redirect_session(ali._session, drive.api_url)
        ali.token_file = config / f"{name}.json"
        return ali

    return make


@pytest.fixture
def ali(make_aligo: Callable[..., Any]) -> Any:
    return make_aligo()


@pytest.fixture
def data_client() -> Iterator[requests.Session]:
    """A client for part and download URLs with no Authorization header, as relayd's must be."""
    with requests.Session() as session:
        yield session


def _parts(aligo_mod: ModuleType, count: int) -> list[Any]:
    return [aligo_mod.UploadPartInfo(part_number=n) for n in range(1, count + 1)]


def _create(aligo_mod: ModuleType, ali: Any, name: str, data: bytes, **extra: Any) -> Any:
    return ali.create_file(
        aligo_mod.CreateFileRequest(
            name=name,
            type="file",
            parent_file_id=extra.pop("parent_file_id", "root"),
            size=len(data),
            check_name_mode=extra.pop("check_name_mode", "refuse"),
            part_info_list=_parts(aligo_mod, max(1, math.ceil(len(data) / PART))),
            **extra,
        )
    )


def _put_all(client: requests.Session, created: Any, data: bytes) -> None:
    for info in created.part_info_list:
        start = (info.part_number - 1) * PART
        response = client.put(info.upload_url, data=data[start : start + PART], timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers["ETag"].startswith('"')


def _upload(
    aligo_mod: ModuleType, ali: Any, client: requests.Session, name: str, data: bytes, **extra: Any
) -> Any:
    created = _create(aligo_mod, ali, name, data, **extra)
    assert created.upload_id and not created.rapid_upload
    _put_all(client, created, data)
    done = ali.complete_file(
        aligo_mod.CompleteFileRequest(
            drive_id=created.drive_id, file_id=created.file_id, upload_id=created.upload_id
        )
    )
    assert done.size == len(data)
    return done


def _aligo_error(name: str) -> type[Exception]:
    error: type[Exception] = getattr(importlib.import_module("aligo.error"), name)
    return error


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest().upper()


# --- §3.1: hashes and proof -------------------------------------------------------------------


VECTORS = [
    (bytes(range(256)) * 8, 1786, "+vv8/f7/AAE="),
    (b"hello", 4, "bw=="),
    (b"", 0, ""),
]


@pytest.mark.parametrize(("content", "offset", "expected"), VECTORS)
def test_proof_code_vectors_fake(content: bytes, offset: int, expected: str, tmp_path: Path) -> None:
    assert proof_offset("test-token", len(content)) == offset
    assert proof_code("test-token", content) == expected
    path = tmp_path / "content.bin"
    path.write_bytes(content)
    assert proof_code("test-token", path) == expected


def test_hash_vectors() -> None:
    content = bytes(range(256)) * 8
    assert pre_hash(content) == "5b00669c480d5cffbdfa8bdba99561160f2d1b77"
    assert _sha1(content) == "F10CCFDE60C17DB26E7D85D35665C7661DBBEB2C"
    assert _sha1(b"") == "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709"


def test_proof_code_vectors_aligo(make_aligo: Callable[..., Any], drive: FakeDrive, tmp_path: Path) -> None:
    """aligo's own proof (computed from its current access token) agrees with §3.1 and the fake."""
    token = drive.token_payload()
    token["access_token"] = "test-token"
    ali = make_aligo(token)
    for content, _, expected in VECTORS:
        path = tmp_path / f"v{len(content)}.bin"
        path.write_bytes(content)
        assert ali._get_proof_code(str(path), len(content)) == expected


# --- §2: tokens -----------------------------------------------------------------------------


def test_refresh_on_401_rotates_and_old_token_is_refused(
    make_aligo: Callable[..., Any], aligo_mod: ModuleType, drive: FakeDrive
) -> None:
    bootstrap = drive.token_payload(valid_access_token=False)
    ali = make_aligo(bootstrap)
    root = ali.get_file("root")
    assert root.file_id == "root" and root.type == "folder"
    assert drive.stats().refreshes == 1
    saved = json.loads(ali.token_file.read_text())
    assert saved["refresh_token"] != bootstrap["refresh_token"]
    assert saved["access_token"] == ali._auth.token.access_token

    stale = requests.post(
        drive.api_url + "/v2/account/token",
        json={"refresh_token": bootstrap["refresh_token"], "grant_type": "refresh_token"},
        timeout=10,
    )
    assert stale.status_code == 400
    assert stale.json()["code"] == "InvalidParameter.RefreshToken"

    drive.expire_access_tokens()
    assert ali.get_file("root").file_id == "root"
    assert drive.stats().refreshes == 2
    assert json.loads(ali.token_file.read_text())["refresh_token"] != saved["refresh_token"]

    # Another aligo holding the superseded refresh token cannot refresh, and does not try QR login.
    other = make_aligo(bootstrap, name="stale")
    with pytest.raises(_aligo_error("AligoRefreshFailed")):
        other.get_file("root")


def test_access_token_401_codes(drive: FakeDrive) -> None:
    url = drive.api_url + "/v2/file/get"
    assert requests.post(url, json={"file_id": "root"}, timeout=10).json()["code"] == "AccessTokenInvalid"
    token = drive.issue_access_token()
    for auth in (token, "Bearer " + token):
        assert requests.post(url, json={"file_id": "root"}, headers={"Authorization": auth}, timeout=10).ok
    drive.advance_clock(drive.settings.access_token_ttl + 1)
    expired = requests.post(url, json={"file_id": "root"}, headers={"Authorization": token}, timeout=10)
    assert (expired.status_code, expired.json()["code"]) == (401, "AccessTokenExpired")


def test_user_and_device_session(ali: Any, drive: FakeDrive) -> None:
    user = ali.v2_user_get()
    assert user.default_drive_id == drive.default_drive_id
    assert user.resource_drive_id == drive.user.resource_drive_id
    ali._auth._create_session()
    assert drive.stats().calls["/users/v1/users/device/create_session"] == 1


# --- §6: folders, lookup, listing ------------------------------------------------------------


def test_get_folder_by_path_creates_once(ali: Any, drive: FakeDrive) -> None:
    first = ali.get_folder_by_path("relayd/owner/name", create_folder=True)
    again = ali.get_folder_by_path("relayd/owner/name", create_folder=True)
    assert first.file_id == again.file_id
    assert again.exist is True
    walked = ali.get_folder_by_path("relayd/owner/name")
    assert walked.file_id == first.file_id
    stored = drive.lookup("/relayd/owner/name")
    assert stored is not None and stored.type == "folder" and stored.file_id == first.file_id
    assert ali.get_file(first.file_id).name == "name"
    assert not ali.get_file("no-such-id")


def test_file_list_paginates(ali: Any, drive: FakeDrive) -> None:
    drive.settings.page_limit = 3
    parent = ali.get_folder_by_path("many", create_folder=True)
    names = {f"d{i}" for i in range(7)}
    for name in names:
        ali.create_folder(name, parent_file_id=parent.file_id, check_name_mode="refuse")
    drive.requests.clear()
    listed = ali.get_file_list(parent.file_id)
    assert {f.name for f in listed} == names
    assert len([e for e in drive.requests.snapshot() if e.path.startswith("/adrive/v3/file/list")]) == 3
    assert ali.get_file_list(parent.file_id, type="file") == []

    token = drive.issue_access_token()
    marker, pages = None, []
    while marker != "":
        page = requests.post(
            drive.api_url + "/adrive/v3/file/list",
            json={"parent_file_id": parent.file_id, "limit": 100, "marker": marker, "order_by": "name"},
            headers={"Authorization": token},
            timeout=10,
        ).json()
        pages.append([item["name"] for item in page["items"]])
        marker = page["next_marker"]
        assert isinstance(marker, str)
    assert pages == [["d0", "d1", "d2"], ["d3", "d4", "d5"], ["d6"]]


# --- §3: rapid upload -------------------------------------------------------------------------


def test_rapid_upload_pre_hash_then_proof(
    ali: Any, aligo_mod: ModuleType, drive: FakeDrive, tmp_path: Path
) -> None:
    data = os.urandom(5000)
    path = tmp_path / "known.bin"
    path.write_bytes(data)
    assert drive.seed_content(path) == _sha1(data)

    matched = _create(aligo_mod, ali, "known.bin", data, pre_hash=pre_hash(data))
    assert not matched and matched.code == "PreHashMatched"

    # aligo's code, then tickstep/aliyunpan-api's (its code 22): the knob picks which one refuses.
    for refusals, code in enumerate(("InvalidParameter.ProofCode", "InvalidRapidProof"), start=1):
        drive.settings.proof_refusal_code = code
        wrong = _create(
            aligo_mod,
            ali,
            "known.bin",
            data,
            content_hash=_sha1(data),
            proof_code="AAAAAAAAAAA=",
            proof_version="v1",
        )
        assert not wrong and (wrong.response.status_code, wrong.code) == (400, code)
        assert drive.stats().proofs_rejected == refusals

    proof = ali._get_proof_code(str(path), len(data))
    assert proof == proof_code(ali._auth.token.access_token, data)
    hit = _create(
        aligo_mod, ali, "known.bin", data, content_hash=_sha1(data), proof_code=proof, proof_version="v1"
    )
    assert hit.rapid_upload is True
    got = ali.get_file(hit.file_id)
    assert (got.size, got.content_hash, got.name) == (len(data), _sha1(data), "known.bin")
    assert drive.stats().rapid_upload_hits == 1
    assert drive.stats().proofs_rejected == 2

    again = _create(aligo_mod, ali, "known.bin", data, pre_hash=pre_hash(data))
    assert again.exist is True and again.file_id == hit.file_id


def test_unknown_content_gets_an_upload(ali: Any, aligo_mod: ModuleType, drive: FakeDrive) -> None:
    data = os.urandom(3000)
    created = _create(aligo_mod, ali, "new.bin", data, pre_hash=pre_hash(data))
    assert created.upload_id and created.rapid_upload is False
    assert [p.part_number for p in created.part_info_list] == [1]
    assert created.part_info_list[0].upload_url.startswith(drive.data_url + UPLOAD_PREFIX)


def test_aligo_upload_file_rapid_across_users(
    make_aligo: Callable[..., Any], drive: FakeDrive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aligo's whole upload_file flow: user B's upload makes the content known to user A, whose
    first proof is refused once (aligo recomputes and retries, §3.2)."""
    create_module = sys.modules["aligo.core.Create"]
    monkeypatch.setattr(create_module.Create, "_UPLOAD_CHUNK_SIZE", PART)
    data = os.urandom(3 * PART + 17)
    path = tmp_path / "weights.bin"
    path.write_bytes(data)

    other = drive.add_user("someone-else")
    bob = make_aligo(drive.token_payload(other), name="bob")
    uploaded = bob.upload_file(str(path))
    assert (uploaded.size, uploaded.content_hash) == (len(data), _sha1(data))

    alice = make_aligo(name="alice")
    drive.reject_next_proofs(1)
    rapid = alice.upload_file(str(path), check_name_mode="refuse")
    assert rapid.rapid_upload is True
    assert drive.stats().proofs_rejected == 1
    assert drive.lookup("/weights.bin") is not None
    assert drive.lookup("/weights.bin", drive_id=other.default_drive_id) is not None


# --- §4: multipart ----------------------------------------------------------------------------


def test_multipart_resume_after_dropped_part(
    ali: Any, aligo_mod: ModuleType, drive: FakeDrive, data_client: requests.Session
) -> None:
    data = os.urandom(3 * PART - 5)
    created = _create(
        aligo_mod,
        ali,
        "big.bin",
        data,
        parent_file_id=ali.get_folder_by_path("up", create_folder=True).file_id,
    )
    urls = {p.part_number: p.upload_url for p in created.part_info_list}
    assert data_client.put(urls[1], data=data[:PART], timeout=10).status_code == 200

    drive.drop_next(UPLOAD_PREFIX, after_bytes=1000)
    with pytest.raises(requests.ConnectionError):
        data_client.put(urls[2], data=data[PART : 2 * PART], timeout=10)

    listed = ali.post(
        "/v2/file/list_uploaded_parts",
        body={
            "drive_id": None,
            "file_id": created.file_id,
            "upload_id": created.upload_id,
            "part_number_marker": 0,
        },
    ).json()
    assert [p["part_number"] for p in listed["uploaded_parts"]] == [1]
    assert listed["uploaded_parts"][0]["part_size"] == PART
    assert listed["next_part_number_marker"] == ""

    fresh = ali.get_upload_url(
        aligo_mod.GetUploadUrlRequest(
            drive_id=created.drive_id,
            file_id=created.file_id,
            upload_id=created.upload_id,
            part_info_list=_parts(aligo_mod, 3)[1:],
        )
    )
    assert (fresh.file_id, fresh.upload_id) == (created.file_id, created.upload_id)
    assert [p.part_number for p in fresh.part_info_list] == [2, 3]
    stale = data_client.put(urls[2], data=data[PART : 2 * PART], timeout=10)
    assert stale.status_code == 403 and "<Code>AccessDenied</Code>" in stale.text

    for info in fresh.part_info_list:
        start = (info.part_number - 1) * PART
        assert data_client.put(info.upload_url, data=data[start : start + PART], timeout=10).ok

    done = ali.complete_file(
        aligo_mod.CompleteFileRequest(
            drive_id=created.drive_id, file_id=created.file_id, upload_id=created.upload_id
        )
    )
    assert (done.size, done.content_hash, done.status) == (len(data), _sha1(data), "available")
    stored = drive.lookup("/up/big.bin")
    assert stored is not None and stored.read_bytes() == data
    stats = drive.stats()
    assert stats.parts_received == 3
    assert stats.put_bytes_by_upload[created.upload_id] == len(data) + 1000
    assert stats.put_bytes == len(data) + 1000 + PART  # the refused PUT's body was read too
    assert drive.authorized_data_requests() == []

    gone = ali.complete_file(
        aligo_mod.CompleteFileRequest(
            drive_id=created.drive_id, file_id=created.file_id, upload_id=created.upload_id
        )
    )
    assert not gone and gone.code == "NotFound.UploadId"


def test_lost_answer_keeps_the_part(
    ali: Any, aligo_mod: ModuleType, drive: FakeDrive, data_client: requests.Session
) -> None:
    data = os.urandom(PART + 10)
    created = _create(aligo_mod, ali, "lost.bin", data)
    drive.drop_next(UPLOAD_PREFIX, after_bytes=10 * PART)
    with pytest.raises(requests.ConnectionError):
        data_client.put(created.part_info_list[0].upload_url, data=data[:PART], timeout=10)
    repeat = data_client.put(created.part_info_list[0].upload_url, data=data[:PART], timeout=10)
    assert repeat.status_code == 409 and "<Code>PartNotSequential</Code>" in repeat.text
    assert drive.upload(created.upload_id).parts == (1,)  # type: ignore[union-attr]


def test_parts_out_of_order_refused(
    ali: Any, aligo_mod: ModuleType, drive: FakeDrive, data_client: requests.Session
) -> None:
    data = os.urandom(3 * PART)
    created = _create(aligo_mod, ali, "order.bin", data)
    urls = [p.upload_url for p in created.part_info_list]
    gap = data_client.put(urls[1], data=data[PART : 2 * PART], timeout=10)
    assert gap.status_code == 400 and "PartNotSequential" in gap.text
    assert data_client.put(urls[0], data=data[:PART], timeout=10).ok
    repeat = data_client.put(urls[0], data=data[:PART], timeout=10)
    assert repeat.status_code == 409 and "PartNotSequential" in repeat.text

    short = ali.complete_file(
        aligo_mod.CompleteFileRequest(
            drive_id=created.drive_id, file_id=created.file_id, upload_id=created.upload_id
        )
    )
    assert not short and short.code == "InvalidParameter.Size"
    assert drive.lookup("/order.bin") is None


def test_list_uploaded_parts_pages(
    ali: Any, aligo_mod: ModuleType, drive: FakeDrive, data_client: requests.Session
) -> None:
    drive.settings.parts_page_limit = 2
    data = os.urandom(5 * PART)
    created = _create(aligo_mod, ali, "paged.bin", data)
    _put_all(data_client, created, data)
    seen, marker = [], 0
    while True:
        page = ali.post(
            "/v2/file/list_uploaded_parts",
            body={
                "drive_id": None,
                "file_id": created.file_id,
                "upload_id": created.upload_id,
                "part_number_marker": marker,
            },
        ).json()
        seen.append([p["part_number"] for p in page["uploaded_parts"]])
        if page["next_part_number_marker"] == "":
            break
        marker = int(page["next_part_number_marker"])
    assert seen == [[1, 2], [3, 4], [5]]


def test_expired_upload_id(
    ali: Any, aligo_mod: ModuleType, drive: FakeDrive, data_client: requests.Session
) -> None:
    data = os.urandom(PART)
    created = _create(aligo_mod, ali, "expired.bin", data)
    drive.expire_upload_ids(created.upload_id)
    body = {
        "drive_id": None,
        "file_id": created.file_id,
        "upload_id": created.upload_id,
        "part_number_marker": 0,
    }
    response = ali.post("/v2/file/list_uploaded_parts", body=body)
    assert (response.status_code, response.json()["code"]) == (404, "NotFound.UploadId")
    put = data_client.put(created.part_info_list[0].upload_url, data=data, timeout=10)
    assert put.status_code == 404 and "NoSuchUpload" in put.text
    again = _create(aligo_mod, ali, "expired.bin", data)
    assert again.upload_id != created.upload_id and not again.exist


def test_chunked_put_is_accepted(
    ali: Any, aligo_mod: ModuleType, drive: FakeDrive, data_client: requests.Session
) -> None:
    data = os.urandom(PART + 3)
    created = _create(aligo_mod, ali, "chunked.bin", data)
    chunks = (data[i : i + 4096] for i in range(0, PART, 4096))
    assert data_client.put(created.part_info_list[0].upload_url, data=chunks, timeout=10).ok
    assert data_client.put(created.part_info_list[1].upload_url, data=data[PART:], timeout=10).ok
    done = ali.complete_file(
        aligo_mod.CompleteFileRequest(
            drive_id=created.drive_id, file_id=created.file_id, upload_id=created.upload_id
        )
    )
    assert done.content_hash == _sha1(data)


def test_aligo_retries_a_part_after_403(
    make_aligo: Callable[..., Any], drive: FakeDrive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aligo's _put_data refreshes all part URLs on a 403 and puts that part again (§4)."""
    monkeypatch.setattr(sys.modules["aligo.core.Create"].Create, "_UPLOAD_CHUNK_SIZE", PART)
    ali = make_aligo()
    path = tmp_path / "retry.bin"
    path.write_bytes(os.urandom(2 * PART + 1))
    drive.fail_next(UPLOAD_PREFIX, 403, code="AccessDenied", message="Request has expired.")
    done = ali.upload_file(str(path))
    assert done.content_hash == sha1_hex_upper(path)
    assert drive.stats().calls["/v2/file/get_upload_url"] == 1


# --- name collisions, rename, trash ------------------------------------------------------------


def test_name_modes_rename_and_trash(
    ali: Any, aligo_mod: ModuleType, drive: FakeDrive, data_client: requests.Session
) -> None:
    first = _upload(aligo_mod, ali, data_client, "x.bin", b"one" * 500)
    renamed = _upload(aligo_mod, ali, data_client, "x.bin", b"two" * 500, check_name_mode="auto_rename")
    assert renamed.name == "x(1).bin"
    replaced = _upload(aligo_mod, ali, data_client, "x.bin", b"three" * 500, check_name_mode="overwrite")
    assert [f.name for f in ali.get_file_list("root")].count("x.bin") == 1
    assert drive.lookup("/x.bin").file_id == replaced.file_id  # type: ignore[union-attr]
    assert drive.file(first.file_id).trashed  # type: ignore[union-attr]

    clash = ali.rename_file(renamed.file_id, "x.bin")
    assert not clash and clash.code == "AlreadyExist.File"
    moved = ali.rename_file(renamed.file_id, "stale.bin")
    assert moved.name == "stale.bin"
    ali.move_file_to_trash(moved.file_id)
    assert drive.lookup("/stale.bin") is None
    assert {f.name for f in ali.get_file_list("root")} == {"x.bin"}


# --- §5: download ---------------------------------------------------------------------------


def test_download_url_range_referer_and_expiry(
    ali: Any, aligo_mod: ModuleType, drive: FakeDrive, data_client: requests.Session
) -> None:
    data = os.urandom(100_000)
    done = _upload(aligo_mod, ali, data_client, "dl.bin", data)
    link = ali.get_download_url(file_id=done.file_id)
    assert (link.size, link.content_hash, link.method) == (len(data), _sha1(data), "GET")
    assert link.expiration.endswith("Z")

    ranged = data_client.get(link.url, headers={**REFERER, "Range": "bytes=1000-"}, timeout=10)
    assert ranged.status_code == 206
    assert ranged.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert ranged.content == data[1000:]
    whole = data_client.get(link.url, headers=REFERER, timeout=10)
    assert whole.status_code == 200 and _sha1(whole.content) == _sha1(data)

    no_referer = data_client.get(link.url, headers={"Range": "bytes=0-"}, timeout=10)
    assert no_referer.status_code == 403 and no_referer.text.startswith("<?xml")
    past_end = data_client.get(link.url, headers={**REFERER, "Range": f"bytes={len(data)}-"}, timeout=10)
    assert past_end.status_code == 416 and past_end.headers["Content-Range"] == f"bytes */{len(data)}"

    drive.settings.ignore_range = True
    ignored = data_client.get(link.url, headers={**REFERER, "Range": "bytes=1000-"}, timeout=10)
    assert ignored.status_code == 200 and ignored.headers["Accept-Ranges"] == "bytes"
    drive.settings.ignore_range = False

    drive.expire_download_urls()
    expired = data_client.get(link.url, headers=REFERER, timeout=10)
    assert expired.status_code == 403 and "Request has expired." in expired.text
    fresh = ali.get_download_url(file_id=done.file_id, expire_sec=60)
    assert data_client.get(fresh.url, headers=REFERER, timeout=10).ok
    drive.advance_clock(61)
    assert data_client.get(fresh.url, headers=REFERER, timeout=10).status_code == 403
    assert drive.authorized_data_requests() == []

    folder = ali.get_download_url(file_id=ali.get_folder_by_path("dir", create_folder=True).file_id)
    assert not folder and folder.code == "InvalidResource.FileTypeFolder"


def _hold(url: str, referer: dict[str, str] = REFERER) -> requests.Response:
    """Start a download of *url* and keep it open (the fake paces it), holding a slot of the cap."""
    held = requests.get(url, headers=referer, stream=True, timeout=10)
    assert held.status_code == 200
    return held


def test_download_cap_is_2_per_app_and_3_per_user_with_the_real_answer(
    ali: Any, aligo_mod: ModuleType, drive: FakeDrive, data_client: requests.Session
) -> None:
    data = os.urandom(256 * 1024)
    done = _upload(aligo_mod, ali, data_client, "cap.bin", data)
    url = ali.get_download_url(file_id=done.file_id).url
    drive.settings.download_bandwidth = 64 * 1024
    held = [_hold(url), _hold(url)]  # relayd's app (the web client's tokens): 2 at once

    refused = data_client.get(url, headers=REFERER, timeout=10)
    assert refused.status_code == 403
    assert refused.headers["Content-Type"] == "application/xml"
    assert "<Code>AccessDenied</Code>" in refused.text
    assert "<Message>Callback deny this request reason: ExceedMaxConcurrency</Message>" in refused.text
    assert "<HostId>cn-beijing-data.aliyundrive.net</HostId>" in refused.text
    assert "<EC>0007-00000209</EC>" in refused.text
    assert drive.stats().downloads_over_cap == 1

    # Another app of the same user (the phone) may take the user's third slot, not a fourth.
    phone = drive.issue_access_token(app_id="phone-app")
    answer = requests.post(
        drive.api_url + "/v2/file/get_download_url",
        json={"file_id": done.file_id, "drive_id": done.drive_id},
        headers={"Authorization": phone},
        timeout=10,
    )
    phone_url = answer.json()["url"]
    held.append(_hold(phone_url))
    assert data_client.get(phone_url, headers=REFERER, timeout=10).status_code == 403  # 4 per user

    for response in held:
        response.close()
    drive.settings.download_bandwidth = None
    deadline = time.monotonic() + 10
    while data_client.get(url, headers={**REFERER, "Range": "bytes=0-0"}, timeout=10).status_code == 403:
        assert time.monotonic() < deadline, "the held downloads never released their slots"
        time.sleep(0.05)


def test_download_referer_is_a_knob(ali: Any, aligo_mod: ModuleType, drive: FakeDrive) -> None:
    data_client = requests.Session()
    done = _upload(aligo_mod, ali, data_client, "ref.bin", b"r" * 5000)
    url = ali.get_download_url(file_id=done.file_id).url
    drive.settings.download_referer = "https://www.alipan.com/"
    refused = data_client.get(url, headers=REFERER, timeout=10)
    assert refused.status_code == 403 and "referer policy" in refused.text
    assert "Request has expired." not in refused.text
    assert data_client.get(url, headers={"Referer": "https://www.alipan.com/"}, timeout=10).ok


def test_truncation_and_corruption(
    ali: Any, aligo_mod: ModuleType, drive: FakeDrive, data_client: requests.Session
) -> None:
    data = os.urandom(256 * 1024)
    done = _upload(aligo_mod, ali, data_client, "cut.bin", data)
    url = ali.get_download_url(file_id=done.file_id).url
    drive.drop_next(DOWNLOAD_PREFIX, after_bytes=1000)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        data_client.get(url, headers=REFERER, timeout=10)

    drive.corrupt_file("/cut.bin")
    bad = data_client.get(url, headers=REFERER, timeout=10).content
    assert len(bad) == len(data) and _sha1(bad) != _sha1(data)
    assert ali.get_file(done.file_id).content_hash == _sha1(data)


# --- device sessions --------------------------------------------------------------------------


def _raw_call(drive: FakeDrive, token: str, device: str, path: str = "/v2/file/get") -> requests.Response:
    return requests.post(
        drive.api_url + path,
        json={"file_id": "root"},
        headers={"Authorization": token, "x-device-id": device},
        timeout=10,
    )


def test_require_session_until_create_session(ali: Any, drive: FakeDrive) -> None:
    drive.settings.device_policy = "require_session"
    token = drive.issue_access_token()
    offline = _raw_call(drive, token, "new-device")
    assert offline.status_code == 401 and offline.json()["code"] == "UserDeviceOffline"
    created = _raw_call(drive, token, "new-device", "/users/v1/users/device/create_session")
    assert created.json() == {"result": True, "success": True, "code": None, "message": None}
    assert _raw_call(drive, token, "new-device").ok
    # aligo re-creates the session itself on UserDeviceOffline and carries on.
    assert ali.get_file("root").file_id == "root"
    assert drive.stats().calls["/users/v1/users/device/create_session"] == 2


def test_reject_answers_every_call_with_a_signature_error(
    ali: Any, aligo_mod: ModuleType, drive: FakeDrive
) -> None:
    drive.settings.device_policy = "reject"
    rejected = _raw_call(drive, drive.issue_access_token(), "dev")
    assert rejected.status_code == 400
    assert rejected.json()["code"] == "DeviceSessionSignatureInvalid"
    with pytest.raises(_aligo_error("AligoFatalError"), match="DeviceSessionSignatureInvalid"):
        ali.get_file("root")  # aligo re-creates the session after each refusal, then gives up
    # Five attempts: the first refreshed the fixture's expired access token, four met the refusal.
    assert drive.stats().calls["/users/v1/users/device/create_session"] == 4


def test_more_than_ten_devices_are_offline(drive: FakeDrive) -> None:
    token = drive.issue_access_token()
    for n in range(10):
        assert _raw_call(drive, token, f"device-{n}").ok
    eleventh = _raw_call(drive, token, "device-10")
    assert eleventh.status_code == 401 and eleventh.json()["code"] == "UserDeviceOffline"
    assert "10 devices" in eleventh.json()["message"]
    session = _raw_call(drive, token, "device-10", "/users/v1/users/device/create_session")
    assert session.status_code == 200 and session.json()["result"] is False
    assert _raw_call(drive, token, "device-3").ok  # the first ten still work
    drive.log_out_device("device-3")  # a person logs a device out in the app
    assert _raw_call(drive, token, "device-10").ok
    other = drive.add_user("other")
    assert _raw_call(drive, drive.issue_access_token(other), "device-10").ok  # counted per user


# --- §7: failures -----------------------------------------------------------------------------


def test_429_retry_after(ali: Any, aligo_mod: ModuleType, drive: FakeDrive) -> None:
    path = "/v2/file/get"
    drive.fail_next(path, 429, retry_after=7)
    token = drive.issue_access_token()
    raw = requests.post(
        drive.api_url + path, json={"file_id": "root"}, headers={"Authorization": token}, timeout=10
    )
    assert (raw.status_code, raw.headers["Retry-After"], raw.json()["code"]) == (429, "7", "TooManyRequests")

    drive.fail_next(path, 429, retry_after=7)
    assert ali.get_file("root").file_id == "root"
    statuses = [e.status for e in drive.requests.snapshot() if e.path == path]
    assert statuses == [429, 429, 401, 200]  # raw; then aligo: 429, retried, 401, refreshed, retried

    drive.fail_next(path, 429, retry_after=7, count=5)
    with pytest.raises(_aligo_error("AligoFatalError")):
        ali.get_file("root")


def test_an_empty_429_and_a_plain_bad_gateway(drive: FakeDrive) -> None:
    """What the web API often sends (messense/aliyundrive-webdav#321, zxbu/webdav-aliyundriver#130;
    tickstep/aliyunpan-api reads a 502 "Bad Gateway" text as throttling)."""
    token = drive.issue_access_token()
    drive.fail_next("/v2/file/get_download_url", 429, body="")
    empty = requests.post(
        drive.api_url + "/v2/file/get_download_url", json={}, headers={"Authorization": token}, timeout=10
    )
    assert (empty.status_code, empty.content) == (429, b"")
    assert "Retry-After" not in empty.headers and "Content-Type" not in empty.headers
    drive.fail_next("/v2/file/get", 502, body="Bad Gateway")
    gateway = requests.post(
        drive.api_url + "/v2/file/get", json={}, headers={"Authorization": token}, timeout=10
    )
    assert (gateway.status_code, gateway.text, gateway.headers["Content-Type"]) == (
        502,
        "Bad Gateway",
        "text/plain",
    )


def test_an_endpoint_the_service_does_not_have(ali: Any, drive: FakeDrive) -> None:
    token = drive.issue_access_token()
    unknown = requests.post(
        drive.api_url + "/v9/nothing", json={}, headers={"Authorization": token}, timeout=10
    )
    assert unknown.status_code == 404 and unknown.json()["code"] == "NotFound"
    drive.settings.removed_endpoints = frozenset({"/v2/file/get"})
    gone = ali.get_file("root")
    assert not gone and (gone.response.status_code, gone.code) == (404, "NotFound")


def test_injected_quota_and_gateway_page(ali: Any, aligo_mod: ModuleType, drive: FakeDrive) -> None:
    drive.fail_next("/adrive/v2/file/createWithFolders", 400, code="QuotaExhausted.Drive")
    refused = _create(aligo_mod, ali, "q.bin", b"x" * 10)
    assert not refused and refused.code == "QuotaExhausted.Drive"
    drive.fail_next("/v2/file/get", 200, body="<html>gateway</html>")
    assert ali.get_file("root").file_id is None  # aligo turns a non-JSON 200 into an empty object


# --- the redirect seam and the headless setup -------------------------------------------------


def test_redirect_adapter_rewrites_only_aligo_hosts() -> None:
    adapter = RedirectAdapter("http://127.0.0.1:9/base/")
    assert adapter.rewrite("https://api.aliyundrive.com/v2/file/get") == "http://127.0.0.1:9/base/v2/file/get"
    assert (
        adapter.rewrite("https://user.aliyundrive.com/v2/user/get?a=1")
        == "http://127.0.0.1:9/base/v2/user/get?a=1"
    )
    assert (
        adapter.rewrite("https://api.aliyundrive.com.evil.test/x")
        == "https://api.aliyundrive.com.evil.test/x"
    )
    assert (
        adapter.rewrite("https://cn-beijing-data.aliyundrive.net/x")
        == "https://cn-beijing-data.aliyundrive.net/x"
    )
    with requests.Session() as session:
        redirect_session(session, "http://127.0.0.1:9")
        for host in ALIGO_HOSTS:
            assert isinstance(session.get_adapter(host + "/v2/x"), RedirectAdapter)
        assert not isinstance(session.get_adapter("https://example.com/"), RedirectAdapter)
    with pytest.raises(ValueError, match="http"):
        RedirectAdapter("127.0.0.1:9")


def test_real_home_is_untouched(aligo_mod: ModuleType) -> None:
    assert REAL_CONFIG.exists() == _REAL_CONFIG_EXISTED
    assert REAL_HOME not in Path(sys.modules["aligo.core.Auth"].aligo_config_folder).parents


def test_concurrent_refresh_race_is_reproduced(
    make_aligo: Callable[..., Any], aligo_mod: ModuleType, drive: FakeDrive
) -> None:
    """§2.2: threads of one aligo hitting 401 together all refresh with the same token; only one
    wins. relayd must serialize an account's calls."""
    ali = make_aligo()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            ali.get_file("root")
        except _aligo_error("AligoRefreshFailed") as exc:
            errors.append(exc)

    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        call()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    stats = drive.stats()
    assert stats.refreshes >= 1
    assert stats.refresh_failures == len(errors)


def test_restart_keeps_state_and_ports(
    ali: Any, aligo_mod: ModuleType, drive: FakeDrive, data_client: requests.Session
) -> None:
    data = os.urandom(5000)
    done = _upload(aligo_mod, ali, data_client, "kept.bin", data)
    url = ali.get_download_url(file_id=done.file_id).url
    api_url = drive.api_url
    drive.stop()
    with pytest.raises(requests.ConnectionError):
        data_client.get(url, headers=REFERER, timeout=10)  # the pooled keep-alive connection is cut
    drive.start()
    assert drive.api_url == api_url
    assert data_client.get(url, headers=REFERER, timeout=10).content == data
    assert ali.get_file(done.file_id).content_hash == _sha1(data)


def test_client_abort_mid_part_keeps_nothing(
    ali: Any, aligo_mod: ModuleType, drive: FakeDrive, data_client: requests.Session
) -> None:
    data = os.urandom(2 * PART)
    created = _create(aligo_mod, ali, "abort.bin", data)
    url = urlsplit(created.part_info_list[0].upload_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as raw:
        head = f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: {PART}\r\n\r\n"
        raw.sendall(head.encode() + data[: PART // 2])
    for info in created.part_info_list:  # the retry waits for the aborted PUT to be cleaned up
        start = (info.part_number - 1) * PART
        assert data_client.put(info.upload_url, data=data[start : start + PART], timeout=10).ok
    done = ali.complete_file(
        aligo_mod.CompleteFileRequest(
            drive_id=created.drive_id, file_id=created.file_id, upload_id=created.upload_id
        )
    )
    assert done.content_hash == _sha1(data)
    assert drive.lookup("/abort.bin").read_bytes() == data  # type: ignore[union-attr]


def test_expired_part_urls_and_gateway_statuses(
    ali: Any, aligo_mod: ModuleType, drive: FakeDrive, data_client: requests.Session
) -> None:
    data = os.urandom(PART)
    created = _create(aligo_mod, ali, "urls.bin", data)
    drive.expire_upload_urls()
    expired = data_client.put(created.part_info_list[0].upload_url, data=data, timeout=10)
    assert expired.status_code == 403 and "Request has expired." in expired.text
    drive.advance_clock(drive.settings.upload_url_ttl + 1)
    fresh = ali.get_upload_url(
        aligo_mod.GetUploadUrlRequest(
            drive_id=created.drive_id, file_id=created.file_id, upload_id=created.upload_id
        )
    )
    assert data_client.put(fresh.part_info_list[0].upload_url, data=data, timeout=10).ok

    drive.fail_next("/v2/file/get", 502, count=2)
    assert ali.get_file("root").file_id == "root"  # aligo retries 502 (§7)
    drive.fail_next("/v2/file/get", 500)
    with pytest.raises(_aligo_error("AligoStatus500")):
        ali.get_file("root")
