"""The download hop and huggingface_hub's calls through a real forwarding proxy (tinyproxy): hub.proxy
with credentials, the environment's variables, NO_PROXY (a host, a host:port), and an https CDN reached
through a CONNECT tunnel. The token still reaches only the Hub, through the proxy or not."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd.catalogue.schema import BLOCKED, DONE
from relayd.http_ranges import ConnectionLost, ProxyUnusable, RangeClient, origin_of
from relayd.hub_session import route_hub_session
from relayd_sandbox.hub import FakeHub, Generated, make_model_repo
from tests.support.hubrelay import TOKEN, HubRelay
from tests.support.proxybox import LOCKED_PASSWORD, Tinyproxy, TlsFront, make_certificate, via_proxy

pytestmark = pytest.mark.usefixtures("no_proxy_variables")

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def direct_client_after() -> Iterator[None]:
    """huggingface_hub's HTTP client is process-wide and these tests route it through hub.proxy: give
    later tests of this process the direct client back."""
    yield
    route_hub_session("")


@pytest.fixture
def private_repo(hub: FakeHub) -> str:
    make_model_repo(hub, "alice/tiny", shards=2, shard_size=MiB, private=True)
    hub.cdn_reject_authorization = True  # the CDN answers 400 to a request that carries the token
    return "alice/tiny"


def test_hub_proxy_carries_every_hub_and_cdn_request_and_the_token_only_to_the_hub(
    relay: HubRelay, hub: FakeHub, private_repo: str, locked_proxy: Tinyproxy
) -> None:
    relay.write_config(extra=f'proxy = "{locked_proxy.url}"')
    relay.add_repo(private_repo)

    transfers = relay.relay()

    assert transfers and {t.state for t in transfers} == {DONE}
    hub_seen, cdn_seen = hub.hub_log.snapshot(), hub.cdn_log.snapshot()
    assert hub_seen and all(via_proxy(e.headers) for e in hub_seen)
    assert cdn_seen and all(via_proxy(e.headers) for e in cdn_seen)
    # The proxy's own log: huggingface_hub's head, listing and metadata calls, and relayd's ranged GETs.
    assert locked_proxy.carried(f"{hub.endpoint}/alice/tiny/resolve/", "HEAD")
    assert locked_proxy.carried(f"{hub.endpoint}/api/models/alice/tiny/tree/", "GET")
    assert len(locked_proxy.carried(f"{hub.cdn_url}/xet-bridge-us/", "GET")) == len(cdn_seen)
    assert all(e.header("Authorization") is None for e in cdn_seen)
    assert all(e.header("Authorization") == f"Bearer {TOKEN}" for e in hub_seen)


def test_the_environment_variables_carry_the_relay_when_no_proxy_is_configured(
    relay: HubRelay, hub: FakeHub, private_repo: str, tinyproxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", tinyproxy.url)
    relay.add_repo(private_repo)

    assert {t.state for t in relay.relay()} == {DONE}

    assert all(via_proxy(e.headers) for e in [*hub.hub_log.snapshot(), *hub.cdn_log.snapshot()])
    assert tinyproxy.carried(f"{hub.endpoint}/api/models/alice/tiny/tree/")
    assert tinyproxy.carried(f"{hub.cdn_url}/xet-bridge-us/")
    assert all(e.header("Authorization") is None for e in hub.cdn_log.snapshot())


def test_no_proxy_sends_the_hosts_it_names_straight_even_past_a_configured_proxy(
    relay: HubRelay, hub: FakeHub, private_repo: str, tinyproxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    cdn_port = origin_of(hub.cdn_url)[2]
    monkeypatch.setenv("HTTP_PROXY", tinyproxy.url)
    monkeypatch.setenv("NO_PROXY", f"example.com, 127.0.0.1:{cdn_port}")
    relay.write_config(extra=f'proxy = "{tinyproxy.url}"')
    relay.add_repo(private_repo)

    assert {t.state for t in relay.relay()} == {DONE}

    # The Hub's port is not named: through the proxy. The CDN's host:port is: straight there.
    assert all(via_proxy(e.headers) for e in hub.hub_log.snapshot())
    assert hub.cdn_log.snapshot() and not any(via_proxy(e.headers) for e in hub.cdn_log.snapshot())
    assert tinyproxy.carried(hub.endpoint) and not tinyproxy.carried(hub.cdn_url)

    monkeypatch.setenv("NO_PROXY", "127.0.0.0/8")
    hub.hub_log.clear()
    carried = len(tinyproxy.requests())
    hub.commit(private_repo, {"extra.safetensors": Generated(MiB, seed=7)})
    relay.build()  # a new HubClient (huggingface_hub's client reads the variables per request anyway)

    assert {t.state for t in relay.relay()} == {DONE}
    assert len(tinyproxy.requests()) == carried
    assert hub.hub_log.snapshot() and not any(via_proxy(e.headers) for e in hub.hub_log.snapshot())


def test_ranged_gets_reach_an_https_cdn_through_one_connect_tunnel(
    hub: FakeHub, locked_proxy: Tinyproxy, tmp_path: Path
) -> None:
    hub.create_repo("alice/one", files={"w.safetensors": Generated(3 * MiB, seed=3)})
    sha256 = hub.file("alice/one", "w.safetensors").sha256
    cert, key = make_certificate(tmp_path / "tls")
    front = TlsFront(origin_of(hub.cdn_url)[2], cert, key)
    url = front.https(hub.sign_url(sha256))
    received = bytearray(3 * MiB)

    def write(offset: int, data: memoryview) -> None:
        received[offset : offset + len(data)] = data

    client = RangeClient(
        connect_timeout=5,
        stall_timeout=5,
        authorize=lambda target: (
            {"Authorization": f"Bearer {TOKEN}"} if target.startswith(hub.endpoint) else {}
        ),
        ssl_context=ssl.create_default_context(cafile=str(cert)),
        proxy=locked_proxy.url,
    )
    try:
        client.fetch(url, 0, MiB, 3 * MiB, write)
        client.fetch(url, MiB, 3 * MiB, 3 * MiB, write)
    finally:
        client.close()
        front.stop()

    assert hashlib.sha256(received).hexdigest() == sha256
    assert locked_proxy.carried(f"127.0.0.1:{front.port}", "CONNECT") == [f"127.0.0.1:{front.port}"]
    seen = hub.cdn_log.snapshot()
    assert len(seen) == 2 and all(e.status == 206 for e in seen)
    # Inside a tunnel the proxy never reads the request: no Via, and no token for the CDN either way.
    assert not any(via_proxy(e.headers) or e.header("Authorization") for e in seen)


def test_a_proxy_that_refuses_or_cannot_be_spoken_to_says_so(
    hub: FakeHub, locked_proxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.create_repo("alice/one", files={"w.safetensors": Generated(MiB, seed=4)})
    url = hub.sign_url(hub.file("alice/one", "w.safetensors").sha256)
    client = RangeClient(connect_timeout=5, stall_timeout=5, proxy=f"http://127.0.0.1:{locked_proxy.port}")
    with pytest.raises(ProxyUnusable) as refused:
        client.fetch(url, 0, MiB, MiB, lambda offset, data: None)
    client.close()
    assert "(407)" in str(refused.value) and f"through the proxy 127.0.0.1:{locked_proxy.port}" in str(
        refused.value
    )
    assert not hub.cdn_log.snapshot()

    monkeypatch.setenv("ALL_PROXY", f"socks5://relayd:{LOCKED_PASSWORD}@127.0.0.1:1080")
    with pytest.raises(ProxyUnusable) as unusable:
        RangeClient(connect_timeout=5, stall_timeout=5).fetch(url, 0, MiB, MiB, lambda offset, data: None)
    assert "ALL_PROXY" in str(unusable.value) and LOCKED_PASSWORD not in str(unusable.value)

    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ConnectionLost) as lost:
        RangeClient(connect_timeout=5, stall_timeout=5).fetch(url, 0, MiB, MiB, lambda offset, data: None)
    assert "through the proxy 127.0.0.1:9" in str(lost.value)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_that_wants_credentials_blocks_the_poll_with_a_hint(
    relay: HubRelay, hub: FakeHub, private_repo: str, locked_proxy: Tinyproxy, tmp_path: Path, scheme: str
) -> None:
    # http: the proxy answers the request 407; https: it answers the tunnel's CONNECT 407 (httpx's
    # ProxyError), the Hub behind a TLS front.
    front = None
    extra = f'proxy = "http://127.0.0.1:{locked_proxy.port}"'  # no credentials
    if scheme == "https":
        cert, key = make_certificate(tmp_path / "tls")
        front = TlsFront(origin_of(hub.endpoint)[2], cert, key)
        extra += f'\nca_bundle = "{cert}"'
    relay.write_config(extra=extra)
    if front is not None:
        text = relay.config_path.read_text()
        relay.config_path.write_text(text.replace(hub.endpoint, f"https://127.0.0.1:{front.port}"))
    relay.add_repo(private_repo)
    try:
        (result,) = relay.poll()
    finally:
        if front is not None:
            front.stop()

    repo = relay.repo(private_repo)
    assert result.error and repo.poll_state == "blocked" and repo.poll_error_class == "config"
    assert "asks for credentials" in (repo.poll_error or "") and "(407)" in (repo.poll_error or "")
    assert "hub.proxy" in (repo.poll_hint or "") and LOCKED_PASSWORD not in (repo.poll_hint or "")
    assert not relay.transfers()
    if front is not None:
        assert locked_proxy.carried(f"127.0.0.1:{front.port}", "CONNECT") and not front.connections


def test_a_proxy_that_wants_credentials_for_the_cdn_blocks_the_transfer_with_a_hint(
    relay: HubRelay, hub: FakeHub, private_repo: str, locked_proxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Hub straight (NO_PROXY names its host:port), the CDN through a proxy that wants credentials.
    monkeypatch.setenv("NO_PROXY", f"127.0.0.1:{origin_of(hub.endpoint)[2]}")
    relay.write_config(extra=f'proxy = "http://127.0.0.1:{locked_proxy.port}"')
    relay.add_repo(private_repo)

    transfers = relay.relay()

    # The LFS files (the shards, the tokenizer) come from the CDN; the small ones the Hub serves arrive.
    blocked = [t for t in transfers if t.state == BLOCKED]
    assert len(blocked) == 3 and {t.state for t in transfers} == {BLOCKED, DONE}
    assert all(t.error_class == "config" and "(407)" in (t.last_error or "") for t in blocked)
    assert all("hub.proxy" in (t.last_error or "") and t.hint and t.attempts == 1 for t in blocked)
    assert not hub.cdn_log.snapshot()  # the proxy refused every request: nothing reached the CDN


def test_a_connect_answered_407_is_a_proxy_that_wants_credentials(
    hub: FakeHub, locked_proxy: Tinyproxy, tmp_path: Path
) -> None:
    hub.create_repo("alice/one", files={"w.safetensors": Generated(MiB, seed=5)})
    cert, key = make_certificate(tmp_path / "tls")
    front = TlsFront(origin_of(hub.cdn_url)[2], cert, key)
    client = RangeClient(
        connect_timeout=5,
        stall_timeout=5,
        ssl_context=ssl.create_default_context(cafile=str(cert)),
        proxy=f"http://127.0.0.1:{locked_proxy.port}",
    )
    try:
        with pytest.raises(ProxyUnusable, match=r"asks for credentials .*\(407\)"):
            client.fetch(
                front.https(hub.sign_url(hub.file("alice/one", "w.safetensors").sha256)),
                0,
                MiB,
                MiB,
                lambda offset, data: None,
            )
    finally:
        client.close()
        front.stop()
    assert locked_proxy.carried(f"127.0.0.1:{front.port}", "CONNECT") == [f"127.0.0.1:{front.port}"]
    assert not hub.cdn_log.snapshot()
