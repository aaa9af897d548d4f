"""Fixtures for the lfs_push agent tests: the sandbox git + LFS server and a hermetic git client."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from hermetic_git import GitClient, hermetic_git
from proxybox import locked_proxy, no_proxy_variables, tinyproxy  # noqa: F401 - fixtures

from relayd_sandbox.gitlfs import GitLfsServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitLfsServer]:
    with GitLfsServer(tmp_path / "server", token=secrets.token_hex(16)) as srv:
        yield srv


@pytest.fixture
def git(tmp_path: Path, server: GitLfsServer) -> GitClient:
    return hermetic_git(tmp_path / "client-home", server.token, timeout=60)
