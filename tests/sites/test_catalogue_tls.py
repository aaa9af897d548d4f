"""docs/sites.md's catalogue over TLS, for real: a throwaway PostgreSQL that serves TLS only and
authenticates each site by its client certificate, reached with the URL the doc gives by the daemon's
store (psycopg) and by relayctl (libpq), and what a site is told when a piece of it is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relayd.catalogue import migrate, queries
from relayd.catalogue.store import RepoSpec, Store
from relayd_sandbox.postgres import ThrowawayPostgres
from relayd_sandbox.tls import ThrowawayCA

RELAYCTL = Path(sys.executable).parent / "relayctl"
ROLE = "relayd_vm"


@pytest.fixture(scope="module")
def tls_server(sandbox_ca: ThrowawayCA) -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres(tls=sandbox_ca) as server:
        with server.admin() as admin:
            admin.execute(f"CREATE ROLE {ROLE} LOGIN")
            admin.execute(f"CREATE DATABASE relayd OWNER {ROLE}")
        yield server


@pytest.fixture(scope="module")
def site_url(tls_server: ThrowawayPostgres, sandbox_ca: ThrowawayCA) -> str:
    """The doc's URL: verify-full against the CA, the site's certificate and key; the schema made."""
    cert, key = sandbox_ca.client_certificate(ROLE)
    url = tls_server.url("relayd", user=ROLE, options=tls_options(sandbox_ca.ca_cert, cert, key))
    store = Store(url)
    try:
        migrate.ensure_schema(store.engine, auto_upgrade=False)
        store.add_repo(RepoSpec(name="acme/over-tls", every=3600, route=("local_copy",)))
    finally:
        store.close()
    return url


def tls_options(root: Path, cert: Path | None, key: Path | None) -> dict[str, str]:
    options = {"sslmode": "verify-full", "sslrootcert": str(root)}
    if cert is not None and key is not None:
        options |= {"sslcert": str(cert), "sslkey": str(key)}
    return options


def relayctl_status(
    tmp_path: Path, make_config: Callable[..., Path], url: str
) -> subprocess.CompletedProcess[str]:
    config = make_config(tmp_path, catalogue={"url": url})
    return subprocess.run(
        [str(RELAYCTL), "-c", str(config), "status", "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_site_records_and_reads_status_over_verified_tls(
    site_url: str, tmp_path: Path, make_config: Callable[..., Path]
) -> None:
    done = relayctl_status(tmp_path, make_config, site_url)
    assert done.returncode == 0, done.stderr
    assert [repo["name"] for repo in json.loads(done.stdout)["repos"]] == ["acme/over-tls"]
    reader = queries.open_reader(site_url)
    try:
        query = "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        assert reader.rows(query) == [(True, f"/CN={ROLE}")]
        assert reader.rows("SELECT current_user") == [(ROLE,)]
    finally:
        reader.close()


@pytest.fixture
def refused(
    tls_server: ThrowawayPostgres, site_url: str, tmp_path: Path, make_config: Callable[..., Path]
) -> Callable[[dict[str, str]], str]:
    """Return ``refused(options)``: relayctl status as the site with these libpq options must fail
    (exit 1); its stderr."""

    def run(options: dict[str, str]) -> str:
        done = relayctl_status(tmp_path, make_config, tls_server.url("relayd", user=ROLE, options=options))
        assert done.returncode == 1, done.stdout
        return done.stderr

    return run


def test_the_site_is_refused_without_its_certificate_and_over_plain_tcp(
    sandbox_ca: ThrowawayCA, refused: Callable[[dict[str, str]], str]
) -> None:
    message = refused(tls_options(sandbox_ca.ca_cert, None, None))
    assert "cannot reach the catalogue" in message and "certificate" in message
    message = refused({"sslmode": "disable"})
    assert "no encryption" in message and "[catalogue] url" in message


def test_a_server_signed_by_another_ca_is_not_trusted(
    sandbox_ca: ThrowawayCA, refused: Callable[[dict[str, str]], str], tmp_path: Path
) -> None:
    stranger = ThrowawayCA.create(tmp_path / "other-ca")
    cert, key = sandbox_ca.client_certificate(ROLE)
    assert "certificate verify failed" in refused(tls_options(stranger.ca_cert, cert, key))


def test_a_key_others_can_read_is_refused_as_the_doc_says(
    sandbox_ca: ThrowawayCA, refused: Callable[[dict[str, str]], str], tmp_path: Path
) -> None:
    cert, key = sandbox_ca.client_certificate(ROLE)
    readable = tmp_path / "readable.key"
    readable.write_bytes(key.read_bytes())
    readable.chmod(0o644)
    assert "group or world access" in refused(tls_options(sandbox_ca.ca_cert, cert, readable))
