"""huggingface_hub's shared HTTP client, routed by relayd's proxy rules.

huggingface_hub makes every call through one process-wide ``httpx2.Client`` (``get_session()``) that
reads the proxy variables itself, with httpx's own reading of ``NO_PROXY`` (no CIDR ranges, a
leading-dot rule of its own). relayd installs a client factory whose transport asks
relayd/vm/agent/proxy.py instead, so the Hub's metadata calls and the download hop's ranged GETs go
the same way for every host: ``hub.proxy``, else ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``, and
never for a host in ``NO_PROXY``.
"""

from __future__ import annotations

import threading

import httpx2
from huggingface_hub import set_client_factory
from huggingface_hub.utils._http import hf_request_event_hook

from relayd.vm.agent.proxy import ProxyError, proxy_for

_lock = threading.Lock()
#: The hub.proxy the installed factory routes by (None: huggingface_hub's own factory is in place).
_installed: list[str | None] = [None]


class ProxyRouting(httpx2.BaseTransport):
    """Sends each request straight or through the proxy chosen for its URL (*proxy*, i.e. hub.proxy,
    else the environment's; ``NO_PROXY`` either way), one pooled transport per proxy."""

    def __init__(self, proxy: str = "") -> None:
        self._proxy = proxy
        self._direct = httpx2.HTTPTransport()
        self._proxied: dict[str, httpx2.HTTPTransport] = {}
        self._lock = threading.Lock()

    def _transport(self, request: httpx2.Request) -> httpx2.BaseTransport:
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            chosen = proxy_for(url.scheme, url.host, port, self._proxy, where="hub.proxy")
        except ProxyError as exc:
            raise httpx2.ProxyError(str(exc), request=request) from None
        if chosen is None:
            return self._direct
        with self._lock:
            transport = self._proxied.get(chosen.url)
            if transport is None:
                transport = self._proxied[chosen.url] = httpx2.HTTPTransport(proxy=chosen.url)
            return transport

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        return self._transport(request).handle_request(request)

    def close(self) -> None:
        with self._lock:
            transports = [self._direct, *self._proxied.values()]
            self._proxied.clear()
        for transport in transports:
            transport.close()


def route_hub_session(proxy: str) -> None:
    """Make huggingface_hub's shared client route by *proxy* (hub.proxy, "" for the environment's).

    The factory is replaced (closing the current client) only when *proxy* changed, so building
    another HubClient with the same config does not cut requests in flight.
    """
    with _lock:
        if _installed[0] == proxy:
            return

        def build() -> httpx2.Client:
            # huggingface_hub's own default client (request hook, redirects, no timeout) with
            # relayd's routing as its transport.
            return httpx2.Client(
                event_hooks={"request": [hf_request_event_hook]},
                follow_redirects=True,
                timeout=None,
                transport=ProxyRouting(proxy),
            )

        set_client_factory(build)
        _installed[0] = proxy
