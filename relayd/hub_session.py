"""huggingface_hub's shared HTTP client, routed by relayd's proxy rules.

huggingface_hub makes every call through one process-wide ``httpx2.Client`` (``get_session()``) that
reads the proxy variables itself, with httpx's own reading of ``NO_PROXY`` (no CIDR ranges, a
leading-dot rule of its own). relayd installs a client factory whose transport asks
relayd/vm/agent/proxy.py instead, so the Hub's metadata calls and the download hop's ranged GETs go
the same way for every host: ``hub.proxy``, else ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``, and
never for a host in ``NO_PROXY``. With ``hub.ca_bundle`` set, both trust its CAs besides the system's
(httpx on its own trusts ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` when set, else the system's store).
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import httpx2
from huggingface_hub import set_client_factory
from huggingface_hub.utils._http import hf_request_event_hook

from relayd.vm.agent.proxy import ProxyError, client_context, proxy_for

_lock = threading.Lock()
#: The hub.proxy, hub.ca_bundle and the bundle's mtime the installed factory uses (None: huggingface_hub's
#: own factory).
_installed: list[tuple[str, Path | None, int | None] | None] = [None]


class ProxyRouting(httpx2.BaseTransport):
    """Sends each request straight or through the proxy chosen for its URL (*proxy*, i.e. hub.proxy,
    else the environment's; ``NO_PROXY`` either way), one pooled transport per proxy, each verifying
    certificates with *verify* (True: httpx's default trust)."""

    def __init__(self, proxy: str = "", verify: ssl.SSLContext | bool = True) -> None:
        self._proxy = proxy
        self._verify = verify
        self._direct = httpx2.HTTPTransport(verify=verify)
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
                transport = httpx2.HTTPTransport(proxy=chosen.url, verify=self._verify)
                self._proxied[chosen.url] = transport
            return transport

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        return self._transport(request).handle_request(request)

    def close(self) -> None:
        with self._lock:
            transports = [self._direct, *self._proxied.values()]
            self._proxied.clear()
        for transport in transports:
            transport.close()


def route_hub_session(proxy: str, ca_bundle: Path | None = None) -> None:
    """Make huggingface_hub's shared client route by *proxy* (hub.proxy, "" for the environment's)
    and trust *ca_bundle*'s CAs besides the system's.

    The factory is replaced (closing the current client) only when either changed (or the bundle was
    replaced on disk), so building another HubClient with the same config does not cut requests in
    flight.
    """
    try:
        stamp = ca_bundle.stat().st_mtime_ns if ca_bundle else None
    except OSError:
        stamp = None
    with _lock:
        if _installed[0] == (proxy, ca_bundle, stamp):
            return
        verify: ssl.SSLContext | bool = client_context(str(ca_bundle)) if ca_bundle else True

        def build() -> httpx2.Client:
            # huggingface_hub's own default client (request hook, redirects, no timeout) with
            # relayd's routing as its transport.
            return httpx2.Client(
                event_hooks={"request": [hf_request_event_hook]},
                follow_redirects=True,
                timeout=None,
                transport=ProxyRouting(proxy, verify),
            )

        set_client_factory(build)
        _installed[0] = (proxy, ca_bundle, stamp)
