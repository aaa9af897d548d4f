"""Fixtures: a fake Hub and a relay of its repos (see tests/support/hubrelay.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd_sandbox.hub import FakeHub
from tests.support.hubrelay import TOKEN, HubRelay


@pytest.fixture
def hub(fake_hub: FakeHub) -> FakeHub:
    """The sandbox plugin's fake Hub, where user ``alice`` has TOKEN."""
    fake_hub.add_token(TOKEN, user="alice")
    return fake_hub


@pytest.fixture
def relay(tmp_path: Path, hub: FakeHub) -> Iterator[HubRelay]:
    box = HubRelay(tmp_path / "relay", hub)
    try:
        yield box
    finally:
        box.close()
