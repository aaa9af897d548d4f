"""System tools the fakes and the tests need (sshd, git, git-lfs, tinyproxy, openssl): skip the test where
one is missing, fail it when the environment says CI (where a missing tool is a broken machine, not a
reason to test less)."""

from __future__ import annotations

import os
import shutil

import pytest


def require(path: str, what: str) -> None:
    """Given the path of a program and what it is, return if it is executable; otherwise skip the
    calling test, or fail it when the environment says CI."""
    if os.access(path, os.X_OK):
        return
    message = f"{what} ({path}) is not installed (in a relayd checkout, scripts/dev setup installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_git_lfs() -> None:
    """Called at the top of a module: skip the whole module when git or git-lfs is not on PATH.
    Raise RuntimeError instead when the environment says CI."""
    if shutil.which("git") is None or shutil.which("git-lfs") is None:
        if os.environ.get("CI"):
            raise RuntimeError("git and git-lfs are required in CI")
        pytest.skip("git and git-lfs are not installed", allow_module_level=True)
