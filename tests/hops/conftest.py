"""Fixtures: a fake Hub and a relay of its repos (see hubrelay.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hubrelay import TOKEN, HubRelay
from proxybox import locked_proxy, no_proxy_variables, tinyproxy  # noqa: F401 - fixtures

from relayd_sandbox.hub import FakeHub


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    with FakeHub(tmp_path / "hub") as fake:
        fake.add_token(TOKEN, user="alice")
        yield fake


@pytest.fixture
def relay(tmp_path: Path, hub: FakeHub) -> Iterator[HubRelay]:
    box = HubRelay(tmp_path / "relay", hub)
    try:
        yield box
    finally:
        box.close()
