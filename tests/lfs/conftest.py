"""Fixtures for the lfs_push agent tests: the sandbox git + LFS server and a hermetic git client."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayd_sandbox.gitlfs import GitLfsServer
from tests.support.hermetic_git import GitClient, hermetic_git


@pytest.fixture
def server(gitlfs_server: GitLfsServer) -> GitLfsServer:
    """The sandbox plugin's git + LFS server."""
    return gitlfs_server


@pytest.fixture
def git(tmp_path: Path, server: GitLfsServer) -> GitClient:
    return hermetic_git(tmp_path / "client-home", server.token, timeout=60)
