"""Fixtures for the lfs_push agent tests: the sandbox git + LFS server and a hermetic git client."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from lfs_support import GitClient

from relayd.sandbox.gitlfs import GitLfsServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitLfsServer]:
    with GitLfsServer(tmp_path / "server", token=secrets.token_hex(16)) as srv:
        yield srv


@pytest.fixture
def git(tmp_path: Path, server: GitLfsServer) -> GitClient:
    home = tmp_path / "client-home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
        "MS_TOKEN": server.token,
    }
    for key, value in (("user.name", "relayd test"), ("user.email", "test@relayd.invalid")):
        subprocess.run(["git", "config", "--global", key, value], env=env, check=True)
    subprocess.run(["git", "lfs", "install", "--skip-repo"], env=env, check=True, capture_output=True)
    return GitClient(env)
