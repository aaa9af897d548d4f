"""Fixtures for the daemon process tests (the sandbox itself lives in tests/support/daemonbox.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemonbox import DaemonSandbox


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[DaemonSandbox]:
    box = DaemonSandbox(tmp_path)
    try:
        yield box
    finally:
        box.stop_all()
