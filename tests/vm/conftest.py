"""Fixtures for the VM executor and the vm_pull hop: a sandbox sshd, the fake drive, agent markers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd.sandbox.drive import FakeDrive
from relayd.sandbox.sshd import SSHD_PATH, SandboxSshd


def require(path: str, what: str) -> None:
    """Skip (fail under CI) when a system tool the test needs is missing."""
    if os.access(path, os.X_OK):
        return
    message = f"{what} ({path}) is not installed: run scripts/dev setup"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def sshd() -> Iterator[SandboxSshd]:
    require(SSHD_PATH, "OpenSSH server")
    with SandboxSshd() as server:
        yield server


@pytest.fixture
def fake_drive(tmp_path: Path) -> Iterator[FakeDrive]:
    with FakeDrive(tmp_path / "drive") as drive:
        yield drive


@pytest.fixture
def marker() -> str:
    """A command-line marker unique to this test, so its agent processes can be found in /proc."""
    return f"relayd-agent-test-{uuid.uuid4().hex[:12]}"
