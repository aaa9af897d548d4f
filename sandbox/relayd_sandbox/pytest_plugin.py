"""pytest fixtures for the sandbox's fakes, loaded by pytest wherever relayd-sandbox is installed (the
``pytest11`` entry point): relayd's own tests and a third-party hop's or drive backend's tests ask for
them by name.

Each fixture starts its server on 127.0.0.1 for one test (``sandbox_sshd`` for one test module: an sshd
takes a while to start), keeps the server's files in a directory of its own, never inside the test's
``tmp_path``, and stops the server after the test.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import pytest

from relayd_sandbox.drive import FakeDrive
from relayd_sandbox.gitlfs import GitLfsServer
from relayd_sandbox.hub import FakeHub
from relayd_sandbox.postgres import ThrowawayPostgres
from relayd_sandbox.sshd import SSHD_PATH, SandboxSshd
from relayd_sandbox.systools import require


@pytest.fixture
def fake_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    """A fake Hugging Face Hub and its CDN, with no repo and no token yet (add them with
    ``create_repo``, ``make_model_repo`` and ``add_token``); ``endpoint`` is the Hub's URL."""
    with FakeHub(tmp_path_factory.mktemp("fake-hub")) as hub:
        yield hub


@pytest.fixture
def fake_drive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeDrive]:
    """A fake Aliyun Drive (API host and data host) with one user; ``api_url`` is its API's URL and
    ``issue_refresh_token()`` a first token for a client."""
    with FakeDrive(tmp_path_factory.mktemp("fake-drive")) as drive:
        yield drive


@pytest.fixture
def gitlfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitLfsServer]:
    """A git smart-HTTP + LFS server standing in for ModelScope, with no repo yet; clients log in as
    ``oauth2`` with ``token`` as the password."""
    with GitLfsServer(tmp_path_factory.mktemp("gitlfs"), token=secrets.token_hex(16)) as server:
        yield server


@pytest.fixture(scope="module")
def sandbox_sshd() -> Iterator[SandboxSshd]:
    """An OpenSSH server logging in as the current user, with host-key checking on, for one test
    module; ``ssh_command(...)`` reaches it. Skips the test without sshd (fails it when $CI is set)."""
    require(SSHD_PATH, "OpenSSH server")
    with SandboxSshd() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[ThrowawayPostgres]:
    """A throwaway PostgreSQL server on 127.0.0.1 for the whole session (one per xdist worker): Debian's
    ``initdb`` in a temporary directory on a free port. Never skipped: without PostgreSQL installed
    (``scripts/dev setup`` installs it) the test fails with that hint."""
    with ThrowawayPostgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: ThrowawayPostgres) -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty database on ``postgres_server`` for one test, dropped after."""
    name = f"relayd_test_{uuid.uuid4().hex[:12]}"
    url = postgres_server.create_database(name)
    try:
        yield url
    finally:
        postgres_server.drop_database(name)
