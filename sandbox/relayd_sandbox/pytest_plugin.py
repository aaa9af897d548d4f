"""pytest fixtures for the sandbox's fakes, loaded by pytest wherever relayd-sandbox is installed (the
``pytest11`` entry point): relayd's own tests and a third-party hop's or drive backend's tests ask for
them by name.

Each fixture starts its server on 127.0.0.1 for one test (``sandbox_sshd`` for one test module: an sshd
takes a while to start), keeps the server's files in a directory of its own, never inside the test's
``tmp_path``, and stops the server after the test.

HTTPS is opt-in: ``fake_hub`` serves its CDN origin, and ``fake_drive`` its data host, over TLS when
the test asks for it with ``@pytest.mark.parametrize("fake_hub", ["tls"], indirect=True)`` (both
values, ``["plain", "tls"]``, run the test both ways); the certificate is signed by ``sandbox_ca``, a
throwaway CA for the session, which a client must be told to trust (``sandbox_ca.ca_cert``).
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Iterator

import pytest

from relayd_sandbox.drive import FakeDrive
from relayd_sandbox.gitlfs import GitLfsServer
from relayd_sandbox.hub import FakeHub
from relayd_sandbox.sshd import SSHD_PATH, SandboxSshd
from relayd_sandbox.systools import require
from relayd_sandbox.tls import OPENSSL, ThrowawayCA


def _tls(request: pytest.FixtureRequest, fixture: str) -> ssl.SSLContext | None:
    """Return the server context of ``sandbox_ca`` when the test parametrized *fixture* with "tls"."""
    mode = getattr(request, "param", "plain")
    if mode not in ("plain", "tls"):
        raise ValueError(f"{fixture} takes the parameter 'plain' or 'tls', not {mode!r}")
    if mode == "plain":
        return None
    ca: ThrowawayCA = request.getfixturevalue("sandbox_ca")
    return ca.server_context


@pytest.fixture
def fake_hub(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[FakeHub]:
    """A fake Hugging Face Hub and its CDN, with no repo and no token yet (add them with
    ``create_repo``, ``make_model_repo`` and ``add_token``); ``endpoint`` is the Hub's URL. Its CDN
    speaks HTTPS when the test parametrizes it with "tls" (see above)."""
    with FakeHub(tmp_path_factory.mktemp("fake-hub"), cdn_tls=_tls(request, "fake_hub")) as hub:
        yield hub


@pytest.fixture
def fake_drive(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[FakeDrive]:
    """A fake Aliyun Drive (API host and data host) with one user; ``api_url`` is its API's URL and
    ``issue_refresh_token()`` a first token for a client. Its data host speaks HTTPS when the test
    parametrizes it with "tls" (see above)."""
    with FakeDrive(tmp_path_factory.mktemp("fake-drive"), data_tls=_tls(request, "fake_drive")) as drive:
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
def sandbox_ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    """A throwaway CA for the session (``ca_cert`` is its certificate, PEM) and a certificate it signed
    for 127.0.0.1. Skips the test without openssl (fails it when $CI is set)."""
    require(OPENSSL, "openssl")
    return ThrowawayCA.create(tmp_path_factory.mktemp("sandbox-ca"))
