"""relayctl under click's CliRunner, over a config and a SQLite catalogue in tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.relayctl import Relayctl


@pytest.fixture
def relayctl(tmp_path: Path, make_config: Callable[..., Path]) -> Iterator[Relayctl]:
    runner = Relayctl(tmp_path, make_config(tmp_path))
    yield runner
    runner.close()
