"""Fixtures for the VM executor and the vm_pull hop: agent markers (the sandbox sshd and the fake drive
come from relayd-sandbox's pytest plugin; ``sshd`` is tests/conftest.py's name for the former)."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def marker() -> str:
    """A command-line marker unique to this test, so its agent processes can be found in /proc."""
    return f"relayd-agent-test-{uuid.uuid4().hex[:12]}"
