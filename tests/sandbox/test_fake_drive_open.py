"""The fake drive's Open Platform routes (``/oauth/*``, ``/adrive/v1.0/openFile/*``), driven with plain
``requests`` the way an Open Platform client calls them: QR login with its status transitions and
expiry, code and refresh-token exchange (secret and PKCE apps), uploads served from the same store as
the web API, the per-file limit's plain 413, ``x-retry-after`` in milliseconds."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any

import pytest
import requests

from relayd_sandbox.drive import FakeDrive, OpenApp, proof_code
from relayd_sandbox.drive_oauth import REFRESH_TTL

OPEN = "/adrive/v1.0/openFile"


def post(drive: FakeDrive, path: str, body: dict[str, Any], token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(drive.api_url + path, json=body, headers=headers, timeout=10)


def qr(drive: FakeDrive, app: OpenApp, **extra: Any) -> str:
    body = {
        "client_id": app.client_id,
        "client_secret": app.client_secret,
        "scopes": ["file:all:read"],
        **extra,
    }
    answer = post(drive, "/oauth/authorize/qrcode", body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["qrCodeUrl"].endswith(data["sid"])
    return str(data["sid"])


def status(drive: FakeDrive, sid: str) -> dict[str, Any]:
    answer = requests.get(f"{drive.api_url}/oauth/qrcode/{sid}/status", timeout=10)
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


def login(drive: FakeDrive, app: OpenApp) -> dict[str, Any]:
    sid = qr(drive, app)
    drive.scan_qr(sid)
    code = status(drive, sid)["authCode"]
    body = {"client_id": app.client_id, "client_secret": app.client_secret}
    answer = post(drive, "/oauth/access_token", {**body, "grant_type": "authorization_code", "code": code})
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


def test_the_qr_code_moves_from_waiting_to_scanned_to_logged_in(fake_drive: FakeDrive) -> None:
    app = fake_drive.register_app()
    sid = qr(fake_drive, app)
    assert status(fake_drive, sid) == {"status": "WaitLogin"}
    fake_drive.scan_qr(sid, confirm=False)
    assert status(fake_drive, sid) == {"status": "ScanSuccess"}
    fake_drive.scan_qr(sid)
    done = status(fake_drive, sid)
    assert done["status"] == "LoginSuccess" and done["authCode"]


def test_an_unscanned_qr_code_expires(fake_drive: FakeDrive) -> None:
    app = fake_drive.register_app()
    sid = qr(fake_drive, app)
    fake_drive.advance_clock(fake_drive.settings.qr_ttl + 1)
    assert status(fake_drive, sid) == {"status": "QRCodeExpired"}


def test_a_wrong_client_secret_gets_no_qr_code(fake_drive: FakeDrive) -> None:
    app = fake_drive.register_app()
    answer = post(
        fake_drive,
        "/oauth/authorize/qrcode",
        {"client_id": app.client_id, "client_secret": "x", "scopes": ["a"]},
    )
    assert answer.status_code == 401
    assert set(answer.json()) >= {"code", "message"}


def test_the_code_is_single_use_and_the_refresh_token_rotates(fake_drive: FakeDrive) -> None:
    app = fake_drive.register_app()
    pair = login(fake_drive, app)
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 7200 and pair["refresh_token"]
    body = {"client_id": app.client_id, "client_secret": app.client_secret, "grant_type": "refresh_token"}
    first = post(fake_drive, "/oauth/access_token", {**body, "refresh_token": pair["refresh_token"]})
    assert first.status_code == 200
    again = post(fake_drive, "/oauth/access_token", {**body, "refresh_token": pair["refresh_token"]})
    assert again.status_code == 400 and again.json()["code"] == "InvalidParameter.RefreshToken"


def test_a_refresh_token_dies_after_90_days(fake_drive: FakeDrive) -> None:
    app = fake_drive.register_app()
    token = fake_drive.issue_open_refresh_token(app)
    fake_drive.advance_clock(REFRESH_TTL + 1)
    body = {"client_id": app.client_id, "client_secret": app.client_secret, "grant_type": "refresh_token"}
    assert post(fake_drive, "/oauth/access_token", {**body, "refresh_token": token}).status_code == 400


@pytest.mark.parametrize("padded", [True, False])
def test_a_pkce_app_logs_in_with_its_verifier_padded_or_not(fake_drive: FakeDrive, padded: bool) -> None:
    app = fake_drive.register_app(pkce=True)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode()
    challenge = challenge if padded else challenge.rstrip("=")
    sid = qr(fake_drive, app, code_challenge=challenge, code_challenge_method="S256", source="app")
    fake_drive.scan_qr(sid)
    code = status(fake_drive, sid)["authCode"]
    body = {"client_id": app.client_id, "grant_type": "authorization_code", "code": code}
    wrong = post(fake_drive, "/oauth/access_token", {**body, "code_verifier": "nope"})
    assert wrong.status_code == 400
    sid = qr(fake_drive, app, code_challenge=challenge, code_challenge_method="S256")
    fake_drive.scan_qr(sid)
    body["code"] = status(fake_drive, sid)["authCode"]
    pair = post(fake_drive, "/oauth/access_token", {**body, "code_verifier": verifier}).json()
    assert pair["refresh_token"] == "" and pair["expires_in"] == 30 * 86400


def test_tokens_of_one_api_family_are_refused_by_the_other(fake_drive: FakeDrive) -> None:
    app = fake_drive.register_app()
    open_token = login(fake_drive, app)["access_token"]
    web_token = fake_drive.issue_access_token()
    drive_id = fake_drive.default_drive_id
    body = {"drive_id": drive_id, "parent_file_id": "root"}
    assert post(fake_drive, f"{OPEN}/list", body, open_token).status_code == 200
    assert post(fake_drive, f"{OPEN}/list", body, web_token).status_code == 401
    assert post(fake_drive, "/adrive/v3/file/list", body, open_token).status_code == 401


def test_open_and_web_clients_see_one_store(fake_drive: FakeDrive, tmp_path: Any) -> None:
    app = fake_drive.register_app()
    token = login(fake_drive, app)["access_token"]
    drive_id = fake_drive.default_drive_id
    data = secrets.token_bytes(3000)
    created = post(
        fake_drive,
        f"{OPEN}/create",
        {
            "drive_id": drive_id,
            "parent_file_id": "root",
            "name": "a.bin",
            "type": "file",
            "size": len(data),
            "check_name_mode": "refuse",
            "part_info_list": [{"part_number": 1}],
        },
        token,
    ).json()
    assert created["rapid_upload"] is False and created["exist"] is False
    put = requests.put(created["part_info_list"][0]["upload_url"], data=data, timeout=10)
    assert put.status_code == 200
    parts = post(
        fake_drive,
        f"{OPEN}/listUploadedParts",
        {"drive_id": drive_id, "file_id": created["file_id"], "upload_id": created["upload_id"]},
        token,
    ).json()
    assert parts["uploaded_parts"][0]["part_number"] == 1 and "parallelUpload" in parts
    done = post(
        fake_drive,
        f"{OPEN}/complete",
        {"drive_id": drive_id, "file_id": created["file_id"], "upload_id": created["upload_id"]},
        token,
    ).json()
    assert done["content_hash"] == hashlib.sha1(data).hexdigest().upper()
    assert fake_drive.lookup("/a.bin") is not None  # the web API's view of the same drive
    found = post(fake_drive, f"{OPEN}/get_by_path", {"drive_id": drive_id, "file_path": "/a.bin"}, token)
    assert found.json()["file_id"] == created["file_id"]
    missing = post(fake_drive, f"{OPEN}/get_by_path", {"drive_id": drive_id, "file_path": "/b.bin"}, token)
    assert missing.status_code == 404 and missing.json()["code"] == "NotFound.File"
    link = post(
        fake_drive,
        f"{OPEN}/getDownloadUrl",
        {"drive_id": drive_id, "file_id": created["file_id"], "expire_sec": 14400},
        token,
    ).json()
    assert requests.get(link["url"], timeout=10).content == data  # no Referer needed
    # A second app's rapid upload of the same content, with a proof from its own token.
    other = login(fake_drive, fake_drive.register_app())["access_token"]
    path = tmp_path / "a.bin"
    path.write_bytes(data)
    rapid = post(
        fake_drive,
        f"{OPEN}/create",
        {
            "drive_id": drive_id,
            "parent_file_id": "root",
            "name": "b.bin",
            "type": "file",
            "size": len(data),
            "content_hash_name": "sha1",
            "content_hash": done["content_hash"],
            "proof_code": proof_code(other, path),
            "proof_version": "v1",
        },
        other,
    ).json()
    assert rapid["rapid_upload"] is True


def test_a_file_over_the_limit_gets_a_plain_413(fake_drive: FakeDrive) -> None:
    token = login(fake_drive, fake_drive.register_app())["access_token"]
    body = {
        "drive_id": fake_drive.default_drive_id,
        "parent_file_id": "root",
        "name": "big",
        "type": "file",
        "size": 31 * 1000**3,
    }
    answer = post(fake_drive, f"{OPEN}/create", body, token)
    assert answer.status_code == 413 and answer.text == "Payload Too Large"


def test_a_429_on_the_open_platform_says_when_in_milliseconds(fake_drive: FakeDrive) -> None:
    token = login(fake_drive, fake_drive.register_app())["access_token"]
    fake_drive.fail_next(f"{OPEN}/list", 429, retry_after=1.5)
    answer = post(fake_drive, f"{OPEN}/list", {"drive_id": fake_drive.default_drive_id}, token)
    assert answer.status_code == 429 and answer.headers["x-retry-after"] == "1500"
    assert answer.json()["code"] == "TooManyRequests"


def test_vip_info_reports_the_third_party_rights(fake_drive: FakeDrive) -> None:
    token = login(fake_drive, fake_drive.register_app())["access_token"]
    assert post(fake_drive, "/business/v1.0/user/getVipInfo", {}, token).json()["thirdPartyVip"] is False
    fake_drive.settings.third_party_vip = True
    assert post(fake_drive, "/business/v1.0/user/getVipInfo", {}, token).json()["thirdPartyVip"] is True
    info = post(fake_drive, "/adrive/v1.0/user/getDriveInfo", {}, token).json()
    assert info["resource_drive_id"] == fake_drive.user.resource_drive_id
