"""Fixtures for the web face: a catalogue with repos in every state, served in process
(tests/support/webbox.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.webbox import WebBox


@pytest.fixture
def box(tmp_path: Path, make_config: Callable[..., Path]) -> Iterator[WebBox]:
    web_box = WebBox(tmp_path, make_config)
    yield web_box
    web_box.close()


@pytest.fixture
def populated(box: WebBox) -> WebBox:
    """org/calm: two pending files; org/stuck: one blocked (with a hint), one pending, one done."""
    box.add_repo("org/stuck", {"stuck.bin": 200, "later.bin": 300, "done.bin": 100})
    box.finish("local_copy")  # the largest first: later.bin
    box.block("local_copy", "the token expired", "log in again with `relayctl drive login`")  # stuck.bin
    box.add_repo("org/calm", {"a.bin": 10, "b.bin": 20})
    box.store.publish("daemon", {"pid": 4242, "state": "running"})
    return box
