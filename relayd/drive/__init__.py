"""The drive boundary: relayd's adapters over Aliyun Drive (its web API through aligo, or its Open
Platform) and what they need to run headless.

Hops use the ``Drive`` interface (``relayd.drive.base``) and get the daemon's shared instance from
``ctx.services.get("drive")``, which calls ``make_drive``. The backend is imported only then, so
importing this package costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from relayd.drive.base import (
    LOGIN_HINT,
    ContentMismatch,
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
from relayd.errors import ConfigError

if TYPE_CHECKING:
    from relayd.config import DriveConfig

__all__ = [
    "BACKENDS",
    "LOGIN_HINT",
    "ContentMismatch",
    "DownloadLink",
    "Drive",
    "DriveFile",
    "FactSink",
    "LocalFile",
    "NameTaken",
    "TokenLifetime",
    "UploadCallbacks",
    "UploadGone",
    "UploadResult",
    "make_drive",
]


#: The backends ``drive.backend`` may name, each built by ``make_drive`` (the conformance kit in
#: relayd_sandbox runs every hop that uses the drive over each of them).
BACKENDS: tuple[str, ...] = ("aligo", "open")


class FactSink(Protocol):
    """Where the drive publishes facts for relayctl (the catalogue's store, or a hop's port to it)."""

    def publish(self, key: str, value: dict[str, Any]) -> None:
        """Set the fact *key* to *value*."""


def make_drive(config: DriveConfig, state_dir: Path, facts: FactSink | None = None) -> Drive:
    """Return the drive backend *config* names, keeping its login under ``<state_dir>/drive`` and
    publishing the access token's lifetime as ``drive.token`` through *facts*. No network call is made
    until the drive is used. Raise ConfigError for an unknown backend."""
    if config.backend == "aligo":
        from relayd.drive.aligo_backend import AligoDrive

        return AligoDrive(config, Path(state_dir), publish=facts.publish if facts is not None else None)
    if config.backend == "open":
        from relayd.drive.open_backend import OpenDrive

        return OpenDrive(config, Path(state_dir), publish=facts.publish if facts is not None else None)
    known = ", ".join(repr(name) for name in BACKENDS)
    raise ConfigError(f"drive.backend: unknown backend {config.backend!r} (known: {known})")
