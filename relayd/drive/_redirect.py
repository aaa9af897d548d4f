"""Point aligo at a different Aliyun Drive API base (the sandbox's fake drive, or a mirror), and send
its requests through the proxy relayd's rules pick.

aligo hard-codes its hosts (``API_HOST`` is bound as a default argument at import) and turns
``trust_env`` off, so neither configuration nor proxy variables can move it. What it does share is
one ``requests.Session`` per instance (``ali._session``); an adapter mounted there rewrites each
request's URL before it leaves (reference/aliyun-drive.md §9). Upload and download URLs the
service hands out are used verbatim and need no rewriting.

With ``trust_env`` off requests reads no proxy variable either, so every adapter here picks each
request's proxy itself: ``drive.proxy``, else ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``, with
``NO_PROXY`` honoured (relayd/vm/agent/proxy.py, the rules every client of relayd follows). For the
same reason ``REQUESTS_CA_BUNDLE`` is not read: ``drive.ca_bundle`` names CAs to trust besides the
system's (``SSL_CERT_FILE`` applies) and requests' own bundle (certifi).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest, Response

from relayd.vm.agent.proxy import ProxyError, new_client_context, proxy_for

_log = logging.getLogger(__name__)

#: Every host aligo 6.2.8 talks to (aligo/core/Config.py); the API host carries all file calls and
#: the token refresh, the user host ``/v2/user/get``, the others only QR login and rewards. Sending
#: them all to the new base keeps a misrouted login from leaving the machine.
ALIGO_HOSTS: tuple[str, ...] = (
    "https://api.aliyundrive.com",
    "https://user.aliyundrive.com",
    "https://auth.aliyundrive.com",
    "https://passport.aliyundrive.com",
    "https://member.aliyundrive.com",
    "https://websv.aliyundrive.com",
)


class ProxyAdapter(HTTPAdapter):
    """An HTTPAdapter that sends each request straight or through the proxy relayd's rules pick for
    its URL: *proxy* (``drive.proxy``) or the environment's, unless ``NO_PROXY`` names the host; with
    *ca_bundle* (``drive.ca_bundle``) its https connections also trust the CAs of that PEM file."""

    def __init__(self, proxy: str = "", ca_bundle: Path | None = None) -> None:
        # Its own context: urllib3 adds requests' bundle to the context of each connection it opens.
        self._ssl_context: ssl.SSLContext | None = new_client_context(str(ca_bundle)) if ca_bundle else None
        super().__init__()
        self.proxy = proxy

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        if self._ssl_context is not None:
            pool_kwargs.setdefault("ssl_context", self._ssl_context)
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        if self._ssl_context is not None:
            proxy_kwargs.setdefault("ssl_context", self._ssl_context)
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> Response:
        """Send *request* through the proxy chosen for its URL (*proxies* from the session is ignored:
        aligo's own proxy setting is never used)."""
        parts = urlsplit(request.url or "")
        scheme = parts.scheme.lower()
        try:
            port = parts.port or (443 if scheme == "https" else 80)
            chosen = proxy_for(scheme, parts.hostname or "", port, self.proxy, where="drive.proxy")
        except (ProxyError, ValueError) as exc:
            raise requests.exceptions.InvalidProxyURL(str(exc), request=request) from None
        routed = {scheme: chosen.url} if chosen is not None else {}
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=routed)


class RedirectAdapter(ProxyAdapter):
    """A ProxyAdapter that sends requests for the given host prefixes to *base_url* instead.

    ``https://api.aliyundrive.com/v2/file/get?x=1`` becomes ``<base_url>/v2/file/get?x=1``; any
    path under *base_url* (``http://127.0.0.1:8080/drive``) is kept as a prefix. URLs of other
    hosts pass through unchanged. The proxy is chosen for the rewritten URL.
    """

    def __init__(
        self,
        base_url: str,
        prefixes: Iterable[str] = ALIGO_HOSTS,
        proxy: str = "",
        ca_bundle: Path | None = None,
    ) -> None:
        super().__init__(proxy, ca_bundle)
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.prefixes = tuple(p.rstrip("/") for p in prefixes)

    def rewrite(self, url: str) -> str:
        """Return *url* with a matching host prefix replaced by the base URL."""
        for prefix in self.prefixes:
            if url == prefix or url.startswith((prefix + "/", prefix + "?")):
                return self.base_url + url[len(prefix) :]
        return url

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> Response:
        """Rewrite the URL of *request* (a copy), then send it as HTTPAdapter would."""
        url = request.url or ""
        target = self.rewrite(url)
        if target != url:
            request = request.copy()
            request.url = target
            _log.debug("redirected %s %s", request.method, target)
        return super().send(
            request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
        )


def redirect_session(
    session: requests.Session,
    api_url: str,
    prefixes: Iterable[str] = ALIGO_HOSTS,
    proxy: str = "",
    ca_bundle: Path | None = None,
) -> RedirectAdapter:
    """Mount a RedirectAdapter on *session* for each prefix, so aligo's calls go to *api_url*
    (through *proxy* or the environment's, as ProxyAdapter chooses).

    Call it right after constructing ``Aligo`` and before its first request (a constructor that
    finds its token file makes none). Return the adapter.
    """
    adapter = RedirectAdapter(api_url, prefixes, proxy, ca_bundle)
    for prefix in adapter.prefixes:
        session.mount(prefix + "/", adapter)
    return adapter


def proxy_session(session: requests.Session, proxy: str = "", ca_bundle: Path | None = None) -> ProxyAdapter:
    """Mount a ProxyAdapter on *session* for every http(s) URL (more specific mounts, such as
    redirect_session's, still win). Return the adapter."""
    adapter = ProxyAdapter(proxy, ca_bundle)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return adapter
