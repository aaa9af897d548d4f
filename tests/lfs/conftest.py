"""Fixtures for the lfs_push agent tests: the sandbox git + LFS server and a hermetic git client."""

from __future__ import annotations

from pathlib import Path

import pytest
from hermetic_git import GitClient, hermetic_git
from proxybox import locked_proxy, no_proxy_variables, tinyproxy  # noqa: F401 - fixtures

from relayd_sandbox.gitlfs import GitLfsServer


@pytest.fixture
def server(gitlfs_server: GitLfsServer) -> GitLfsServer:
    """The sandbox plugin's git + LFS server."""
    return gitlfs_server


@pytest.fixture
def git(tmp_path: Path, server: GitLfsServer) -> GitClient:
    return hermetic_git(tmp_path / "client-home", server.token, timeout=60)
