"""Fixtures: a fake Aliyun Drive and a DriveBox (catalogue, staging, relayd's drive) over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from drivebox import DriveBox, record_secrets

from relayd.sandbox.drive import FakeDrive


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDrive]:
    with FakeDrive(tmp_path / "fake-drive") as drive:
        yield drive


@pytest.fixture
def secrets(fake: FakeDrive) -> list[str]:
    """Every token the fake issues during the test (for leak checks)."""
    return record_secrets(fake)


@pytest.fixture
def box(tmp_path: Path, fake: FakeDrive, secrets: list[str]) -> Iterator[DriveBox]:
    world = DriveBox(tmp_path / "box", fake)
    try:
        yield world
    finally:
        world.close()
