"""The download hop from a CDN that speaks HTTPS with a certificate of the sandbox's throwaway CA, as
every real CDN speaks it: trusted through hub.ca_bundle or SSL_CERT_FILE the file arrives verified, and
the token still goes only to the Hub; untrusted, the transfer blocks saying so in plain words."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relayd.catalogue.schema import BLOCKED, DONE
from relayd.errors import ErrorClass
from relayd.hub_session import route_hub_session
from relayd_sandbox.hub import FakeHub, make_model_repo
from relayd_sandbox.tls import ThrowawayCA
from tests.support.hubrelay import TOKEN, HubRelay

pytestmark = [
    pytest.mark.usefixtures("no_proxy_variables"),
    pytest.mark.parametrize("fake_hub", ["tls"], indirect=True),
]

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def default_client_after() -> Iterator[None]:
    """huggingface_hub's client is process-wide and hub.ca_bundle replaces it: give later tests the
    default one back."""
    yield
    route_hub_session("")


@pytest.fixture
def private_repo(hub: FakeHub) -> str:
    make_model_repo(hub, "alice/tiny", shards=2, shard_size=3 * MiB, private=True)
    hub.cdn_reject_authorization = True  # the CDN answers 400 to a request that carries the token
    return "alice/tiny"


def test_the_cdn_speaks_https(hub: FakeHub) -> None:
    assert hub.cdn_url.startswith("https://127.0.0.1:")
    assert hub.endpoint.startswith("http://")


def test_a_cdn_signed_by_the_ca_in_hub_ca_bundle_serves_verified_files(
    relay: HubRelay, hub: FakeHub, private_repo: str, sandbox_ca: ThrowawayCA
) -> None:
    relay.write_config(extra=f'ca_bundle = "{sandbox_ca.ca_cert}"')
    relay.add_repo(private_repo)

    transfers = relay.relay()

    assert transfers and {t.state for t in transfers} == {DONE}, [t.last_error for t in transfers]
    cdn_seen = hub.cdn_log.snapshot()
    assert cdn_seen and all(entry.status == 206 for entry in cdn_seen)
    assert all(entry.header("Authorization") is None for entry in cdn_seen)
    assert any(entry.header("Authorization") == f"Bearer {TOKEN}" for entry in hub.hub_log.snapshot())


def test_ssl_cert_file_is_honoured_without_ca_bundle(
    relay: HubRelay, hub: FakeHub, private_repo: str, sandbox_ca: ThrowawayCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(sandbox_ca.ca_cert))
    relay.add_repo(private_repo)

    transfers = relay.relay()

    assert transfers and {t.state for t in transfers} == {DONE}, [t.last_error for t in transfers]


def test_an_untrusted_cdn_certificate_blocks_with_a_plain_reason_and_the_setting_to_fix(
    relay: HubRelay, hub: FakeHub, private_repo: str
) -> None:
    relay.add_repo(private_repo)

    transfers = relay.relay()

    lfs = [t for t in transfers if t.bytes_total and t.bytes_total >= MiB]
    assert lfs and {t.state for t in lfs} == {BLOCKED}
    for transfer in lfs:
        assert transfer.error_class == ErrorClass.TLS
        assert "certificate" in (transfer.last_error or "") and "not trusted" in (transfer.last_error or "")
        assert "hub.ca_bundle" in (transfer.hint or "")
    # One refused handshake per connection tried, not a retry loop: nothing was served.
    assert hub.cdn_log.snapshot() == []
