"""The staging disk: partial downloads, content-addressed verified copies, and the disk budget.

A verified file lives once per sha256 at ``blobs/<aa>/<sha256>`` however many repos carry it. Files are
written under ``partial/`` and moved into place with an atomic rename after fsync and verification.
Every path handed out is checked to stay inside the staging root.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from relayd.config import StagingConfig
from relayd.errors import ErrorClass, NeedsPerson
from relayd.health import FAIL, OK, WARN, Check, Finding, failed
from relayd.units import format_size

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KEY = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
#: A download's partial file under ``partial/`` (``partial_name``); relayd.partials sweeps abandoned ones.
PARTIAL_NAME = re.compile(r"^download-([0-9]+)\.part$")


def partial_name(transfer_id: int) -> str:
    """Return the name of a download's partial file: from the transfer id only, never an upstream path."""
    return f"download-{transfer_id}.part"


@dataclass(frozen=True)
class Budget:
    """Space facts for status: bytes held in staging, free bytes on its disk, and the limits."""

    used: int
    free: int
    max_bytes: int
    min_free: int

    @property
    def hold_reason(self) -> str | None:
        """Why new downloads must wait, or None when there is room."""
        if self.used >= self.max_bytes:
            return (
                f"staging holds {format_size(self.used)}, its maximum is {format_size(self.max_bytes)}: "
                "downloads wait until later hops free space (staging.max_bytes)"
            )
        if self.free <= self.min_free:
            return (
                f"the staging disk has {format_size(self.free)} free, "
                f"the floor is {format_size(self.min_free)}: "
                "downloads wait until space frees (staging.min_free)"
            )
        return None


def disk_full_error(path: Path | str) -> NeedsPerson:
    """Return the blocked error for a full disk at *path*."""
    return NeedsPerson(
        f"no space left on the disk holding {path}",
        hint="free space on that disk (or lower staging.max_bytes); relayd resumes by itself",
        error_class=ErrorClass.DISK,
    )


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class Staging:
    """Paths and space accounting under the staging root."""

    def __init__(self, config: StagingConfig) -> None:
        self.root = config.dir
        self.config = config
        self.blobs = self.root / "blobs"
        self.partial = self.root / "partial"
        self.quarantine = self.root / "quarantine"
        for directory in (self.blobs, self.partial, self.quarantine):
            directory.mkdir(parents=True, exist_ok=True)

    def blob_path(self, sha256: str) -> Path:
        """Return where the verified copy of *sha256* lives."""
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.blobs / sha256[:2] / sha256

    def partial_path(self, key: str) -> Path:
        """Return the partial file for a transfer *key* (letters, digits, '._-' only)."""
        if not _KEY.match(key):
            raise ValueError(f"invalid partial key {key!r}")
        return self.partial / key

    def relative(self, path: Path) -> str:
        """Return *path* relative to the staging root, for the catalogue."""
        return str(path.resolve().relative_to(self.root.resolve()))

    def resolve(self, relative: str) -> Path:
        """Return the absolute path of a catalogue-relative staging path; refuse paths leaving the root."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"{relative!r} is outside the staging directory")
        return path

    def promote(self, partial: Path, sha256: str) -> Path:
        """Move a verified, fsynced partial file into content-addressed staging atomically; return it."""
        target = self.blob_path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, target)
        fsync_dir(target.parent)
        return target

    def quarantine_file(self, path: Path, label: str) -> Path:
        """Move a file that failed verification aside (kept for inspection, not reused)."""
        target = self.quarantine / f"{label}-{path.name}"
        os.replace(path, target)
        log.warning("quarantined %s as %s", path, target)
        return target

    def remove(self, relative: str) -> None:
        """Delete a staged copy no hop needs any more."""
        path = self.resolve(relative)
        try:
            path.unlink()
            log.info("released staged copy %s", relative)
        except FileNotFoundError:
            pass

    def used_bytes(self, *, include_partial: bool = True) -> int:
        """Return the bytes allocated under the staging root (partial, verified and quarantined)."""
        total = 0
        for directory, dirs, files in os.walk(self.root):
            if not include_partial and Path(directory) == self.root and "partial" in dirs:
                dirs.remove("partial")
            for name in files:
                try:
                    total += os.lstat(os.path.join(directory, name)).st_blocks * 512
                except FileNotFoundError:
                    continue
        return total

    def budget(self) -> Budget:
        usage = shutil.disk_usage(self.root)
        return Budget(self.used_bytes(), usage.free, self.config.max_bytes, self.config.min_free)


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename inside it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_checks(config: StagingConfig) -> list[Check]:
    """Return the staging disk's check (`relayctl doctor`): free space against min_free, use against
    max_bytes. It creates nothing: a staging directory not made yet is measured by its disk."""

    def run() -> list[Finding]:
        root = config.dir
        probe = root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            if all((root / name).is_dir() for name in ("blobs", "partial", "quarantine")):
                budget = Staging(config).budget()
            else:
                budget = Budget(0, shutil.disk_usage(probe).free, config.max_bytes, config.min_free)
        except OSError as exc:
            return [failed("disk", "staging disk", exc, f"check staging.dir ({root}) and its permissions")]
        limits = (
            f"{format_size(budget.free)} free (floor {format_size(budget.min_free)}), "
            f"{format_size(budget.used)} staged (maximum {format_size(budget.max_bytes)}) at {root}"
        )
        if budget.free <= budget.min_free:
            return [
                Finding(
                    "disk",
                    "staging disk",
                    FAIL,
                    limits,
                    f"free space on the disk holding {root}, or lower staging.min_free: downloads wait until "
                    "then",
                )
            ]
        if budget.used >= budget.max_bytes:
            return [
                Finding(
                    "disk",
                    "staging disk",
                    WARN,
                    limits,
                    "downloads wait until later hops release staged copies (or raise staging.max_bytes)",
                )
            ]
        return [Finding("disk", "staging disk", OK, limits)]

    return [Check("disk", "staging disk", run)]
