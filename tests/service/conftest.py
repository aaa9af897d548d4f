"""Fixtures for the service tests: the whole route on loopback, small and quick."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd_sandbox.route import RouteSandbox


def _route(tmp_path: Path, *, ssh: bool) -> Iterator[RouteSandbox]:
    sandbox = RouteSandbox(tmp_path / "route", shards=2, shard_size=512 * 1024, ssh=ssh, piece_size="256 KiB")
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def local_route(tmp_path: Path) -> Iterator[RouteSandbox]:
    """The route's fake services, with the VM on this machine (executor = "local")."""
    yield from _route(tmp_path, ssh=False)


@pytest.fixture
def ssh_route(tmp_path: Path) -> Iterator[RouteSandbox]:
    """The route's fake services, with the VM behind the sandbox sshd."""
    yield from _route(tmp_path, ssh=True)
