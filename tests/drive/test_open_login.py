"""`relayctl drive login` and `drive status` with the Open Platform backend: the QR code in the
terminal and its URL, the wait through scan and confirmation, expiry, a token file 0600 with no secret
printed; status with both lifetimes, the third-party rights and the rate to expect; doctor's warning
14 days before the refresh token ends."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from relayd.cli import cli
from relayd.config import load_config
from relayd.drive.checks import drive_checks
from relayd.health import OK, WARN, CheckScope
from relayd.hops.base import Services
from relayd_sandbox.drive import FakeDrive
from tests.support.drivebox import DriveBox


@pytest.fixture
def obox(tmp_path: Path, fake: FakeDrive) -> Iterator[DriveBox]:
    world = DriveBox(tmp_path / "box", fake, backend="open")
    try:
        yield world
    finally:
        world.close()


@pytest.fixture
def config(obox: DriveBox) -> Path:
    return obox.write_daemon_config()


def _run(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["-c", str(config), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _phone(fake: FakeDrive, confirm_after: float) -> threading.Thread:
    """Scan the first QR code that appears, then confirm the login *confirm_after* seconds later."""

    def act() -> None:
        deadline = time.monotonic() + 20
        while not fake.qr_sids() and time.monotonic() < deadline:
            time.sleep(0.05)
        sid = fake.scan_qr(confirm=False)
        time.sleep(confirm_after)
        fake.scan_qr(sid)

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    return thread


def test_login_shows_a_qr_code_waits_for_the_scan_and_saves_0600(
    config: Path, obox: DriveBox, fake: FakeDrive, secrets: list[str]
) -> None:
    phone = _phone(fake, confirm_after=1.6)
    code, out, err = _run(config, "drive", "login", "--wait", "30")
    phone.join(5)
    assert code == 0, err
    assert "█" in out or "▀" in out or "▄" in out  # the QR code drawn in text
    (sid,) = fake.qr_sids()
    assert f"/oauth/qrcode/{sid}" in out  # the URL, for a terminal that cannot show the code
    assert "scanned: confirm the login" in out and "relayctl retry" in out
    saved = obox.state_dir / "drive" / "open" / "token.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    record = json.loads(saved.read_text())
    assert record["client_id"] == obox.app.client_id and record["refresh_token"]
    assert not any(secret in out + err for secret in secrets)
    assert record["access_token"] not in out + err and obox.app.client_secret not in out + err

    code, out, _ = _run(config, "drive", "status", "--json")
    assert code == 0
    status = json.loads(out)
    assert status["backend"] == "open" and status["state"] == "valid"
    assert 89 * 86400 < status["refresh_remaining_seconds"] <= 90 * 86400
    assert status["third_party_vip"] is False and "1.5 MB/s" in status["expected_rate"]
    assert status["refresh_warning"] is None


def test_an_expired_qr_code_says_so_and_saves_nothing(config: Path, obox: DriveBox, fake: FakeDrive) -> None:
    fake.settings.qr_ttl = 0.5
    code, _, err = _run(config, "drive", "login", "--wait", "30")
    assert code == 1 and "QR code expired" in err
    assert not (obox.state_dir / "drive" / "open" / "token.json").exists()


def test_nobody_scanning_ends_the_wait(config: Path, obox: DriveBox) -> None:
    code, _, err = _run(config, "drive", "login", "--wait", "1")
    assert code == 1 and "nobody scanned" in err


def test_a_refresh_token_file_is_refused_on_the_open_platform(config: Path, tmp_path: Path) -> None:
    token = tmp_path / "t"
    token.write_text("x")
    code, _, err = _run(config, "drive", "login", "--refresh-token-file", str(token))
    assert code == 2 and "QR code" in err


def test_status_without_a_login_says_how_to_log_in(config: Path) -> None:
    code, out, _ = _run(config, "drive", "status")
    assert code == 1 and "relayctl drive login" in out and "--refresh-token-file" not in out


def test_status_shows_the_rights_and_doctor_warns_before_the_refresh_token_ends(
    config: Path, obox: DriveBox, fake: FakeDrive
) -> None:
    obox.open_drive()
    fake.settings.third_party_vip = True
    code, out, _ = _run(config, "drive", "status")
    assert code == 0
    assert "third-party rights (三方应用权益包): yes; expect about 50 MB/s" in out
    assert "refresh token: valid for 90 more days" in out or "refresh token: valid for 89 more days" in out

    loaded = load_config(config)
    scope = CheckScope(timeout=10, services=Services({}), state_dir=obox.state_dir)
    checks = {check.name: check for check in drive_checks(loaded.drive, scope)}
    assert checks["drive login"].run()[0].status == OK
    assert checks["drive rights"].run()[0].status == OK

    tokens = obox.state_dir / "drive" / "open" / "token.json"
    record = json.loads(tokens.read_text())
    record["refresh_expires_at"] = (datetime.now(UTC) + timedelta(days=10)).isoformat()
    tokens.write_text(json.dumps(record))
    (finding,) = checks["drive login"].run()
    assert finding.status == WARN and "ends in 9 days" in finding.detail
    code, out, _ = _run(config, "drive", "status")
    assert "warning: the drive login's refresh token ends in 9 days" in out

    fake.settings.third_party_vip = False
    (rights,) = checks["drive rights"].run()
    assert rights.status == WARN and "1.5 MB/s" in rights.detail and "三方应用权益包" in rights.hint
