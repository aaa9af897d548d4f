"""Harnesses of relayd's hops that need no drive: local_copy (no server), download (the fake Hub and
its CDN) and lfs_push (the git + LFS server, from a local "VM" directory)."""

from __future__ import annotations

import hashlib
import secrets
import sys
from collections.abc import Mapping
from typing import Any

from relayd.catalogue.store import FileSpec
from relayd.hops.base import FileInfo
from relayd_sandbox.conformance.bench import Bench, Completion
from relayd_sandbox.conformance.harness import REPO, DriveHarness, Fixture, HopHarness
from relayd_sandbox.gitlfs import GitLfsServer
from relayd_sandbox.hub import FakeHub
from relayd_sandbox.hub_faults import FaultRule
from relayd_sandbox.systools import require_git_lfs

KiB = 1024
MiB = 1024 * KiB


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read(path: Any) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


class LocalCopyHarness(HopHarness):
    """local_copy between two directories under the bench; damage flips a byte of the copy on disk
    after its last piece is recorded (there is no server to damage it in transit)."""

    hop = "local_copy"
    piece_size = 64 * KiB
    location_keys = ("path",)

    def __init__(self, bench: Bench, fixture: Fixture, drive: DriveHarness | None = None) -> None:
        super().__init__(bench, fixture, drive)
        self.source = bench.root / "source"
        self.dest = bench.root / "copies"
        self.damaging = False

    def sections(self) -> dict[str, dict[str, Any]]:
        return {"local_copy": {"source": str(self.source), "dest": str(self.dest), "piece_size": "64 KiB"}}

    def seed(self, files: Mapping[str, bytes]) -> None:
        for path, data in files.items():
            target = self.source / REPO / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        self.bench.add_snapshot((self.hop,), files)

    def received(self) -> int | None:
        return None

    def fetch(self, path: str) -> bytes | None:
        return read(self.dest / REPO / path)

    def damage(self) -> None:
        self.damaging = True

    def repair(self) -> None:
        self.damaging = False

    def landed(self, transfer_id: int) -> None:
        if not self.damaging:
            return
        file = self.bench.store.load_job(transfer_id).file
        assert file is not None
        target = self.dest / REPO / file.path
        partial = target.with_name(target.name + ".relayd-partial")
        with partial.open("r+b") as handle:
            handle.seek(file.size // 2)
            byte = handle.read(1)
            handle.seek(file.size // 2)
            handle.write(bytes([byte[0] ^ 0xFF]))


class DownloadHarness(HopHarness):
    """download from the fake Hub's CDN over two connections; damage flips a byte of every body the
    CDN serves."""

    hop = "download"
    piece_size = 1 * MiB
    location_keys = ("staged", "size")

    def __init__(self, bench: Bench, fixture: Fixture, drive: DriveHarness | None = None) -> None:
        super().__init__(bench, fixture, drive)
        self.hub: FakeHub = fixture("fake_hub")
        self.token = f"hf_conformance_{secrets.token_hex(8)}"
        self.hub.add_token(self.token, user="conformance")
        self.rule: FaultRule | None = None

    def sections(self) -> dict[str, dict[str, Any]]:
        return {
            "hub": {
                "endpoint": self.hub.endpoint,
                "token": self.token,
                "connections": 2,
                "piece_size": "1 MiB",
                "stall_timeout": "2s",
                "timeout": "10s",
            }
        }

    def seed(self, files: Mapping[str, bytes]) -> None:
        commit = self.hub.create_repo(REPO, files=dict(files))
        listed = self.hub.files(REPO, commit)
        specs = [
            FileSpec(path, entry.size, entry.lfs, entry.sha256, None if entry.lfs else entry.blob_id)
            for path, entry in listed.items()
            if path in files
        ]
        self.bench.add_snapshot((self.hop,), specs, commit=commit)

    def received(self) -> int | None:
        return self.hub.bytes_served()

    def fetch(self, path: str) -> bytes | None:
        return read(self.bench.staging.blob_path(sha256(self.bench.files[path])))

    def damage(self) -> None:
        self.rule = self.hub.faults.flip_bytes(times=None)

    def repair(self) -> None:
        if self.rule is not None:
            self.rule.cancel()


class LfsPushHarness(HopHarness):
    """lfs_push to the sandbox's git + LFS server, from files vm_pull left in a local "VM" directory
    (the local executor); damage flips a byte of every object PUT on its way in (the server refuses it)."""

    hop = "lfs_push"
    piece_size = 256 * KiB  # one piece per object: two objects of different sizes
    location_keys = ("oid", "size")
    owner, name = "relay", "model"

    def __init__(self, bench: Bench, fixture: Fixture, drive: DriveHarness | None = None) -> None:
        require_git_lfs()
        super().__init__(bench, fixture, drive)
        self.server: GitLfsServer = fixture("gitlfs_server")
        self.server.new_repo(self.owner, self.name)
        self.vm_root = bench.root / "vm"
        self.token_file = bench.root / "modelscope-token"
        self.token_file.write_text(self.server.token + "\n")
        self.token_file.chmod(0o600)

    def files(self) -> dict[str, bytes]:
        return {
            "weights-00001.bin": self.bench.content(200 * KiB + 11),
            "weights-00002.bin": self.bench.content(300 * KiB + 7),
        }

    def sections(self) -> dict[str, dict[str, Any]]:
        return {
            "vm": {"executor": "local", "root": str(self.vm_root), "python": sys.executable},
            "modelscope": {
                "remote": self.server.base_url + "/{owner}/{name}.git",
                "token_file": str(self.token_file),
            },
        }

    def seed(self, files: Mapping[str, bytes]) -> None:
        route = ("vm_pull", self.hop)
        for path, data in files.items():
            target = self.vm_root / REPO / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        self.bench.add_snapshot(route, files, destinations={"modelscope_repo": f"{self.owner}/{self.name}"})

        def pulled(_hop: str, file: FileInfo) -> Completion:
            return Completion({"path": str(self.vm_root / REPO / file.path)}, sha256=file.sha256)

        self.bench.complete_earlier(route, pulled)

    def received(self) -> int | None:
        return self.server.counters().put_bytes

    def fetch(self, path: str) -> bytes | None:
        try:
            return self.server.read_object(self.owner, self.name, sha256(self.bench.files[path]))
        except FileNotFoundError:
            return None

    def damage(self) -> None:
        self.server.corrupt_puts = 1_000_000

    def repair(self) -> None:
        self.server.corrupt_puts = 0


class MsUploadHarness(LfsPushHarness):
    """ms_upload through ModelScope's HTTP upload API, which the git + LFS server serves on its own port
    into the same repositories (its blob PUTs are counted and damaged as the LFS PUTs are)."""

    hop = "ms_upload"
