"""Harnesses of relayd's hops that use the drive: each runs once per drive backend, over the
``DriveHarness`` the suite hands it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from relayd.hops.base import FileInfo
from relayd_sandbox.conformance.bench import Bench, Completion
from relayd_sandbox.conformance.harness import REPO, DriveHarness, Fixture, HopHarness
from relayd_sandbox.sshd import SandboxSshd

#: The VM's PATH: the system's tools, not this test run's virtualenv.
VM_PATH = "/usr/local/bin:/usr/bin:/bin"

ROOT = "/relayd"


class _DriveHop(HopHarness):
    """A hop over a drive backend's harness."""

    def __init__(self, bench: Bench, fixture: Fixture, drive: DriveHarness | None = None) -> None:
        super().__init__(bench, fixture, drive)
        if drive is None:
            raise TypeError(f"the {self.hop} harness runs over a drive backend's harness")
        self.drive_backend: DriveHarness = drive

    def drive_path(self, path: str) -> str:
        return f"{ROOT}/{REPO}/{path}"


class PanUploadHarness(_DriveHop):
    """pan_upload from staged copies to the drive, in the backend's parts; damage alters every part
    on its way in (the drive then reports another content hash)."""

    hop = "pan_upload"
    piece_size = 0  # the backend's part size, see files()
    location_keys = ("file_id", "path")

    def files(self) -> dict[str, bytes]:
        part = self.drive_backend.part_size
        return {"weights-00001.bin": self.bench.content(3 * part + part // 2)}

    def sections(self) -> dict[str, dict[str, Any]]:
        return {"drive": self.drive_backend.section()}

    def seed(self, files: Mapping[str, bytes]) -> None:
        route = ("download", self.hop)
        staged = {path: self.bench.stage(data) for path, data in files.items()}
        self.bench.add_snapshot(route, files)

        def downloaded(_hop: str, file: FileInfo) -> Completion:
            data = files[file.path]
            return Completion(
                {"staged": staged[file.path]},
                sha256=hashlib.sha256(data).hexdigest(),
                sha1=hashlib.sha1(data, usedforsecurity=False).hexdigest(),
                staged_path=staged[file.path],
            )

        self.bench.complete_earlier(route, downloaded)

    def received(self) -> int | None:
        return self.drive_backend.uploaded()

    def fetch(self, path: str) -> bytes | None:
        return self.drive_backend.read(self.drive_path(path))

    def damage(self) -> None:
        self.drive_backend.damage_uploads()

    def repair(self) -> None:
        self.drive_backend.repair()


class VmPullHarness(_DriveHop):
    """vm_pull from the drive to a "VM" directory reached over SSH (the sandbox's sshd on 127.0.0.1,
    the ssh executor and its agent) in 64 KiB pieces over two connections; damage makes the drive's
    stored copies bad (their hash unchanged)."""

    hop = "vm_pull"
    piece_size = 64 * 1024
    location_keys = ("path",)

    def __init__(self, bench: Bench, fixture: Fixture, drive: DriveHarness | None = None) -> None:
        super().__init__(bench, fixture, drive)
        self.sshd: SandboxSshd = fixture("sandbox_sshd")
        self.vm_root = bench.root / "vm"
        self.file_ids: dict[str, str] = {}

    def sections(self) -> dict[str, dict[str, Any]]:
        return {
            "drive": self.drive_backend.section(),
            "vm": {
                "executor": "ssh",
                "host": self.sshd.host,
                "ssh_config_file": str(self.sshd.ssh_config_file),
                "root": str(self.vm_root),
                "python": "python3",
                "path": VM_PATH,
                "piece_size": "64 KiB",
                "connections": 2,
            },
        }

    def seed(self, files: Mapping[str, bytes]) -> None:
        route = ("pan_upload", self.hop)
        self.file_ids = {
            path: self.drive_backend.put(self.drive_path(path), data) for path, data in files.items()
        }
        self.bench.add_snapshot(route, files)

        def uploaded(_hop: str, file: FileInfo) -> Completion:
            data = files[file.path]
            return Completion(
                {"file_id": self.file_ids[file.path], "path": self.drive_path(file.path)},
                sha1=hashlib.sha1(data, usedforsecurity=False).hexdigest(),
            )

        self.bench.complete_earlier(route, uploaded)

    def received(self) -> int | None:
        return self.drive_backend.downloaded()

    def fetch(self, path: str) -> bytes | None:
        target = self.vm_root / REPO / path
        return target.read_bytes() if target.is_file() else None

    def damage(self) -> None:
        for file_id in self.file_ids.values():
            self.drive_backend.damage_file(file_id)

    def repair(self) -> None:
        self.drive_backend.repair()
