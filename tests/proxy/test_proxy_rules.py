"""Which proxy relayd's clients use for a URL (relayd/vm/agent/proxy.py): the variables, their case,
NO_PROXY's forms, a service's configured proxy, and settings that cannot be used. Pure logic."""

from __future__ import annotations

import base64

import pytest

from relayd.vm.agent.proxy import ProxyError, bypasses, parse_proxy, proxy_for


def chosen(url_scheme: str, host: str, port: int, configured: str = "", **environ: str) -> str | None:
    proxy = proxy_for(url_scheme, host, port, configured, environ)
    return None if proxy is None else str(proxy)


def test_each_scheme_has_its_variable_and_all_proxy_covers_the_rest() -> None:
    env = {"HTTPS_PROXY": "http://secure:1", "HTTP_PROXY": "http://plain:2"}
    assert chosen("https", "hub.example", 443, **env) == "secure:1"
    assert chosen("http", "hub.example", 80, **env) == "plain:2"
    assert chosen("http", "hub.example", 80, ALL_PROXY="http://every:3") == "every:3"
    assert chosen("https", "hub.example", 443, ALL_PROXY="every:3", HTTPS_PROXY="secure:1") == "secure:1"
    assert chosen("https", "hub.example", 443) is None


def test_lowercase_variables_come_first_as_in_curl() -> None:
    env = {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2", "all_proxy": "http://a:3"}
    assert chosen("https", "hub.example", 443, **env) == "lower:1"
    assert chosen("https", "hub.example", 443, HTTPS_PROXY="http://upper:2") == "upper:2"
    # An empty variable counts as unset.
    assert chosen("https", "hub.example", 443, https_proxy="", HTTPS_PROXY="http://upper:2") == "upper:2"


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypassed"),
    [
        ("*", "anything.example", 443, True),
        ("example.com", "example.com", 443, True),
        ("example.com", "cdn.example.com", 443, True),
        (".example.com", "example.com", 443, True),
        ("*.example.com", "cdn.example.com", 443, True),
        ("example.com", "badexample.com", 443, False),
        ("example.com", "example.com.evil", 443, False),
        ("Example.COM", "CDN.example.com", 443, True),
        ("127.0.0.1", "127.0.0.1", 80, True),
        ("10.0.0.0/8", "10.1.2.3", 443, True),
        ("10.0.0.0/8", "11.1.2.3", 443, False),
        ("::1", "::1", 443, True),
        ("fd00::/8", "fd12::1", 443, True),
        ("[::1]:8080", "::1", 8080, True),
        ("[::1]:8080", "::1", 443, False),
        ("hub.example:8443", "hub.example", 8443, True),
        ("hub.example:8443", "hub.example", 443, False),
        ("localhost", "127.0.0.1", 80, False),  # names are not resolved, as in curl
        ("a.example, b.example\tc.example", "c.example", 443, True),
        ("", "hub.example", 443, False),
    ],
)
def test_no_proxy_entries(no_proxy: str, host: str, port: int, bypassed: bool) -> None:
    assert bypasses(host, port, no_proxy) is bypassed


def test_no_proxy_wins_over_every_proxy_even_a_configured_one() -> None:
    env = {"HTTPS_PROXY": "http://env:1", "no_proxy": ".internal"}
    assert chosen("https", "files.internal", 443, **env) is None
    assert chosen("https", "files.internal", 443, "http://configured:2", **env) is None
    assert chosen("https", "hub.example", 443, "http://configured:2", **env) == "configured:2"


def test_a_configured_proxy_overrides_the_environment() -> None:
    env = {"https_proxy": "http://env:1", "ALL_PROXY": "http://env:3"}
    assert chosen("https", "hub.example", 443, "http://configured:2", **env) == "configured:2"
    assert chosen("http", "hub.example", 80, "http://configured:2", **env) == "configured:2"


def test_credentials_become_a_proxy_authorization_and_never_its_name() -> None:
    proxy = parse_proxy("http://us%40er:p%3Ass@proxy.example:3128")
    assert (proxy.host, proxy.port) == ("proxy.example", 3128)
    assert proxy.authorization == "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert "p%3Ass" not in f"{proxy} {proxy!r}" and "us%40er" not in str(proxy)
    bare = parse_proxy("proxy.example:8080")
    assert (bare.host, bare.port, bare.authorization) == ("proxy.example", 8080, None)
    assert parse_proxy("http://proxy.example").port == 80


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("socks5://user:hunter22@proxy.example:1080", "socks5:// proxy is not supported"),
        ("https://user:hunter22@proxy.example:3128", "https:// proxy is not supported"),
        ("http://user:hunter22@proxy.example:99999", "port"),
        ("http://user:hunter22@:3128", "names no host"),
        ("http://user:hunter22@proxy.example:3128/path", "no path"),
    ],
)
def test_unusable_proxies_are_refused_naming_the_variable_not_the_password(value: str, says: str) -> None:
    with pytest.raises(ProxyError) as caught:
        proxy_for("https", "hub.example", 443, environ={"ALL_PROXY": value})
    message = str(caught.value)
    assert message.startswith("ALL_PROXY: ") and says in message
    assert "hunter22" not in message
