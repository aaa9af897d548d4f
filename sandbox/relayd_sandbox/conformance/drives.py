"""Drive backend harnesses: each drive backend of relayd (``relayd.drive.BACKENDS``) over its fake."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from relayd_sandbox.conformance.harness import DriveHarness, Fixture
from relayd_sandbox.vm_testkit import upload_to_fake_drive

if TYPE_CHECKING:
    from relayd.config import Config
    from relayd.drive.base import Drive
    from relayd_sandbox.drive import FakeDrive


class _FakeDriveHarness(DriveHarness):
    """What both backends share: the same fake drive, its counters and damage knobs."""

    def __init__(self, root: Path, fixture: Fixture) -> None:
        super().__init__(root, fixture)
        self.fake: FakeDrive = fixture("fake_drive")
        root.mkdir(parents=True, exist_ok=True)
        self.drive_id = self.fake.user.resource_drive_id  # drive.drive = "resource", the default

    def put(self, path: str, data: bytes) -> str:
        return upload_to_fake_drive(self.fake, data, path.lstrip("/"), drive_id=self.drive_id)

    def read(self, path: str) -> bytes | None:
        found = self.fake.lookup(path, drive_id=self.drive_id)
        return None if found is None or found.data_path is None else found.read_bytes()

    def uploaded(self) -> int:
        return self.fake.stats().put_bytes

    def downloaded(self) -> int:
        return self.fake.stats().download_bytes

    def damage_uploads(self) -> None:
        self.fake.corrupt_next_parts(1_000_000)

    def damage_file(self, file_id: str) -> None:
        self.fake.corrupt_file(file_id)

    def repair(self) -> None:
        self.fake.repair()


class AligoDriveHarness(_FakeDriveHarness):
    """The ``aligo`` backend (the real aligo client) over the sandbox's fake Aliyun Drive, with
    64 KiB parts so that small files still have several."""

    backend = "aligo"
    part_size: ClassVar[int] = 64 * 1024

    def __init__(self, root: Path, fixture: Fixture) -> None:
        super().__init__(root, fixture)
        self.token_file = root / "bootstrap-refresh-token"
        self.token_file.write_text(self.fake.issue_refresh_token() + "\n")
        self.token_file.chmod(0o600)

    def section(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "api_url": self.fake.api_url,
            "refresh_token_file": str(self.token_file),
            "root": "/relayd",
            "drive": "resource",
            "timeout": "10s",
        }

    @classmethod
    def make(cls, config: Config) -> Drive:
        from relayd.drive.aligo_backend import AligoDrive

        return AligoDrive(config.drive, config.daemon.state_dir, part_size=cls.part_size)


class OpenDriveHarness(_FakeDriveHarness):
    """The ``open`` backend (Aliyun's Open Platform) over the same fake drive, an app registered on it
    and logged in by the QR code the fake scans, with 64 KiB parts."""

    backend = "open"
    part_size: ClassVar[int] = 64 * 1024

    def __init__(self, root: Path, fixture: Fixture) -> None:
        super().__init__(root, fixture)
        self.app = self.fake.register_app()
        self.secret_file = root / "client-secret"
        self.secret_file.write_text(self.app.client_secret + "\n")
        self.secret_file.chmod(0o600)

    def section(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "api_url": self.fake.api_url,
            "client_id": self.app.client_id,
            "client_secret_file": str(self.secret_file),
            "root": "/relayd",
            "drive": "resource",
            "timeout": "10s",
        }

    def prepare(self, config: Config) -> None:
        """Log in as `relayctl drive login` does: the fake scans and confirms the QR code."""
        from relayd.drive.open_backend import OpenDrive

        drive = OpenDrive(config.drive, config.daemon.state_dir)
        try:
            if drive.tokens.load() is None:
                login = drive.auth.start_qr()
                self.fake.scan_qr(login.sid)
                status, code = drive.auth.qr_status(login.sid)
                if status != "LoginSuccess":
                    raise RuntimeError(f"the fake drive's QR login ended {status}")
                drive.auth.finish(code, login.verifier)
        finally:
            drive.close()

    @classmethod
    def make(cls, config: Config) -> Drive:
        from relayd.drive.open_backend import OpenDrive

        return OpenDrive(config.drive, config.daemon.state_dir, part_size=cls.part_size)
