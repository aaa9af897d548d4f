"""`relayctl drive login` and `relayctl drive status`: a refresh token from a file (or the web app's QR
login, as aligo does it), exchanged at once, saved 0600 in the state directory, never echoed; the
lifetime shown by `drive status` and `status`."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from relayd.catalogue.schema import Piece, Transfer
from relayd.cli import cli
from relayd_sandbox.drive import FakeDrive
from tests.support.drivebox import PART, DriveBox


@pytest.fixture
def config(box: DriveBox) -> Path:
    return box.write_daemon_config()


def _run(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["-c", str(config), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "new-token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def test_status_without_a_login_says_how_to_log_in(config: Path) -> None:
    code, out, _ = _run(config, "drive", "status")
    assert code == 1
    assert "missing" in out and "relayctl drive login --refresh-token-file" in out


def test_login_exchanges_and_saves_the_token(
    config: Path, box: DriveBox, fake: FakeDrive, tmp_path: Path
) -> None:
    token = fake.issue_refresh_token()
    code, out, err = _run(config, "drive", "login", "--refresh-token-file", str(_token_file(tmp_path, token)))
    assert code == 0, err
    assert fake.stats().refreshes == 1
    saved = box.state_dir / "drive" / "token.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    record = json.loads(saved.read_text())
    assert record["source"] == "login" and record["refresh_token"] != token  # rotated at once
    assert token not in out + err and record["refresh_token"] not in out + err
    assert "valid for" in out and "relayctl retry" in out

    code, out, _ = _run(config, "drive", "status", "--json")
    assert code == 0
    status = json.loads(out)
    assert status["state"] == "valid" and 7000 < status["remaining_seconds"] <= 7200
    assert status["mode"] == "600"
    assert token not in out and record["access_token"] not in out

    code, out, _ = _run(config, "status")
    assert code == 0
    assert "drive.token" in out and "state=valid" in out

    # The daemon side uses the login rather than the config's bootstrap token.
    assert box.drive().ensure_folder("/relayd/after-login")
    assert fake.stats().refreshes == 1 and fake.stats().refresh_failures == 0


def test_a_refused_login_saves_nothing(config: Path, box: DriveBox, fake: FakeDrive, tmp_path: Path) -> None:
    code, _, err = _run(
        config, "drive", "login", "--refresh-token-file", str(_token_file(tmp_path, "dead-token"))
    )
    assert code == 1
    assert "refused" in err and "dead-token" not in err
    assert not (box.state_dir / "drive" / "token.json").exists()


def test_login_without_check_saves_for_the_daemon(
    config: Path, box: DriveBox, fake: FakeDrive, tmp_path: Path
) -> None:
    token = fake.issue_refresh_token()
    code, out, _ = _run(
        config, "drive", "login", "--no-check", "--refresh-token-file", str(_token_file(tmp_path, token))
    )
    assert code == 0
    assert fake.stats().refreshes == 0
    code, out, _ = _run(config, "drive", "status")
    assert code == 0 and "expired" in out
    box.drive().ensure_folder("/relayd/x")
    assert fake.stats().refreshes == 1


def test_a_token_file_with_junk_is_refused(config: Path, tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_text("two words\n")
    code, _, err = _run(config, "drive", "login", "--refresh-token-file", str(path))
    assert code == 2 and "one refresh token" in err


# -- the drive's measured rate ------------------------------------------------------------------------


def _retime_pieces(box: DriveBox, start: datetime, step: float, hop: str = "pan_upload") -> int:
    """Record the *hop* pieces as landed one every *step* seconds from *start*; return how many."""
    pieces = [p for t in box.transfers(hop) for p in box.pieces(t.id)]
    with box.store.engine.begin() as connection:
        for n, piece in enumerate(pieces):
            connection.execute(
                update(Piece)
                .where(Piece.transfer_id == piece.transfer_id, Piece.idx == piece.idx)
                .values(done_at=start + timedelta(seconds=n * step))
            )
    return len(pieces)


def test_drive_status_and_doctor_show_the_measured_rate(config: Path, box: DriveBox, fake: FakeDrive) -> None:
    from relayd.catalogue.queries import open_reader
    from relayd.cli.doctor import WARN, drive_rate_rows

    code, out, _ = _run(config, "drive", "status")
    assert "nothing measured in the last hour" in out
    box.stage("acme/rate", {"w.bin": os.urandom(5 * PART)})
    box.run()
    assert all(t.state == "done" for t in box.transfers())

    # Parts of 64 KiB landing 0.1 s apart: 4 intervals, 4 parts after the first, 640 KiB/s.
    count = _retime_pieces(box, datetime.now(UTC) - timedelta(minutes=5), 0.1)
    assert count == 5
    code, out, _ = _run(config, "drive", "status")
    assert code == 0
    assert "upload to the drive (pan_upload): 640.0 KiB/s over the last hour (256.0 KiB measured)" in out
    code, out, _ = _run(config, "drive", "status", "--json")
    rate = json.loads(out)["rates"]["pan_upload"]
    assert (rate["bytes"], rate["seconds"]) == (4 * PART, 0.4)

    # Idle gaps (here 10 minutes between parts) are not counted as time spent moving bytes.
    _retime_pieces(box, datetime.now(UTC) - timedelta(minutes=50), 600)
    code, out, _ = _run(config, "drive", "status")
    assert "pan_upload): nothing measured in the last hour" in out

    # A slow download from the drive makes doctor warn about the third-party rate.
    with box.store.engine.begin() as connection:
        connection.execute(update(Transfer).where(Transfer.hop == "pan_upload").values(hop="vm_pull"))
    _retime_pieces(box, datetime.now(UTC) - timedelta(minutes=5), 1.0, hop="vm_pull")
    reader = open_reader(f"sqlite:///{box.db}")
    try:
        (row,) = drive_rate_rows(reader)
    finally:
        reader.close()
    assert row.status == WARN and "download from the drive (vm_pull): 64.0 KiB/s" in row.detail
    assert "三方应用权益包" in row.hint


def test_a_rapid_upload_is_not_counted_as_throughput(config: Path, box: DriveBox, fake: FakeDrive) -> None:
    data = os.urandom(5 * PART)
    fake.seed_content(data)
    box.stage("acme/rapid", {"w.bin": data})
    box.run()
    (transfer,) = box.transfers()
    assert transfer.handles["rapid"] is True
    _, out, _ = _run(config, "drive", "status")
    assert "pan_upload): nothing measured in the last hour" in out


# -- the web backend's QR login (aligo's own flow) ---------------------------------------------------


def _scan_web_qr(fake: FakeDrive, *, confirm: bool = True) -> threading.Thread:
    def act() -> None:
        deadline = time.monotonic() + 20
        while not fake.web_qr_count() and time.monotonic() < deadline:
            time.sleep(0.05)
        fake.scan_web_qr(confirm=confirm)

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    return thread


def test_login_without_a_token_file_logs_in_by_the_web_apps_qr_code(
    config: Path, box: DriveBox, fake: FakeDrive, secrets: list[str]
) -> None:
    phone = _scan_web_qr(fake)
    code, out, err = _run(config, "drive", "login", "--wait", "30")
    phone.join(5)
    assert code == 0, err
    assert "qrcodeCheck.htm" in out and ("▀" in out or "█" in out)
    saved = box.state_dir / "drive" / "token.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    record = json.loads(saved.read_text())
    assert record["source"] == "login" and record["access_token"]
    assert fake.stats().refreshes == 1  # the QR code's refresh token, exchanged (and rotated) at once
    assert not any(secret in out + err for secret in secrets)
    assert box.drive().ensure_folder("/relayd/after-qr")


def test_an_expired_web_qr_code_fails_and_saves_nothing(config: Path, box: DriveBox, fake: FakeDrive) -> None:
    fake.settings.qr_ttl = 0.5
    code, _, err = _run(config, "drive", "login", "--wait", "30")
    assert code == 1 and "expired" in err
    assert not (box.state_dir / "drive" / "token.json").exists()
