"""Which HTTP proxy a request goes through, and a connection that goes there.

relayd's own HTTP clients (the agent's pulls and LFS uploads on the VM, the download hop's ranged GETs,
webhooks, and the routing of the drive's and the Hub's sessions) all decide the same way, as curl and
requests do: a host that ``NO_PROXY`` names goes straight; otherwise the service's configured proxy
(``hub.proxy``, ``vm.proxy``, …) is used, else ``<scheme>_proxy``, else ``ALL_PROXY`` from the
environment (each lowercase first, then uppercase). Only HTTP proxies are spoken to: an https URL goes
through a ``CONNECT`` tunnel, an http URL is asked for in absolute form, and credentials in the proxy
URL become a ``Proxy-Authorization`` header, never part of a message.

Which certificates an https connection trusts is decided here too (``client_context``): the system's
authorities as OpenSSL finds them (so ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` apply), and besides them
the service's ``ca_bundle`` (a private CA, or a TLS-inspecting proxy's).

Stdlib only and Python 3.8 syntax: this module runs on the VM as part of the agent.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import os
import re
import ssl
import threading
from typing import Mapping
from urllib.parse import unquote, urlsplit

from .core import AgentError

_ENTRY_SPLIT = re.compile(r"[,\s]+")
#: The variables that say which proxy to use, in both spellings (curl and git read only the lowercase
#: http_proxy): a child that must honour the proxies inherits these.
PROXY_VARIABLES = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
)


class ProxyError(ValueError):
    """A proxy setting relayd's clients cannot use (not an HTTP proxy, no host, a bad port)."""


class Proxy:
    """An HTTP proxy: where it listens, and the ``Proxy-Authorization`` its URL's credentials give.

    ``url`` is the setting as given (it may hold a password: never log it); ``str()`` is safe to show.
    """

    def __init__(self, url: str, host: str, port: int, authorization: str | None) -> None:
        self.url = url
        self.host = host
        self.port = port
        self.authorization = authorization

    def __str__(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s:%d" % (host, self.port)

    def __repr__(self) -> str:
        return "Proxy(%s)" % self


_contexts: dict[tuple[str | None, ...], ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def new_client_context(cafile: str | None = None, cadata: str | None = None) -> ssl.SSLContext:
    """Return a new TLS client context (certificate and host name checked) that trusts the system's
    authorities as OpenSSL finds them (``SSL_CERT_FILE``, ``SSL_CERT_DIR`` or its built-in paths) and
    also the CAs of the PEM file *cafile* or the PEM text *cadata*. Raise OSError (ssl.SSLError) when
    those hold no certificate."""
    context = ssl.create_default_context()
    if cafile or cadata:
        context.load_verify_locations(cafile=cafile or None, cadata=cadata or None)
    return context


def client_context(cafile: str | None = None, cadata: str | None = None) -> ssl.SSLContext:
    """new_client_context, made once per bundle and shared (building one reads the system's whole
    trust store, some milliseconds of CPU; a context may serve many connections and threads)."""
    # The variables are part of the key (OpenSSL reads them when a context loads its defaults), and so
    # is the bundle's modification time: a bundle replaced before a reload is read again.
    try:
        stamp = str(os.stat(cafile).st_mtime_ns) if cafile else None
    except OSError:
        stamp = None  # new_client_context says what is wrong with it
    variables = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    key = (cafile or None, stamp, cadata or None, *variables)
    with _contexts_lock:
        context = _contexts.get(key)
        if context is None:
            context = _contexts[key] = new_client_context(cafile, cadata)
        return context


def parse_proxy(value: str, where: str = "") -> Proxy:
    """Return the proxy *value* names (``http://[user:password@]host[:port]``; a bare ``host:port`` is
    taken as http, as curl and requests take it; the port defaults to 80 as in Python's clients).

    Raise ProxyError, led by *where* (a config key or an environment variable) when given, when it is
    not an HTTP proxy URL. The message never repeats the value: it may hold a password.
    """
    lead = where + ": " if where else ""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme.lower() != "http":
        raise ProxyError(
            "%sa %s:// proxy is not supported; relayd's clients speak to HTTP proxies (http://host:port)"
            % (lead, parts.scheme.lower())
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise ProxyError("%sthe proxy's port is not a number from 1 to 65535" % lead) from None
    if not parts.hostname:
        raise ProxyError("%sthe proxy URL names no host (expected http://host:port)" % lead)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyError("%sa proxy URL has no path or query (expected http://host:port)" % lead)
    authorization = None
    if parts.username is not None:
        pair = "%s:%s" % (unquote(parts.username), unquote(parts.password or ""))
        authorization = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return Proxy(text, parts.hostname.lower(), port, authorization)


def environment_value(environ: Mapping[str, str], name: str) -> tuple[str, str]:
    """Return (variable, value) of proxy variable *name*: the lowercase one first, then the uppercase
    one, as curl reads them; ("", "") when neither is set to something."""
    for variable in (name.lower(), name.upper()):
        value = environ.get(variable, "").strip()
        if value:
            return variable, value
    return "", ""


def _split_host_port(entry: str) -> tuple[str, int | None]:
    """Split a NO_PROXY entry into host and optional port (``[::1]:8080``, ``host:443``, ``::1``)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None


def bypasses(host: str, port: int, no_proxy: str) -> bool:
    """Return whether the ``NO_PROXY`` list *no_proxy* sends *host*:*port* straight: ``*`` matches
    every host; an IP address or CIDR range matches addresses in it; a domain (a leading ``.`` or
    ``*.`` is ignored) matches itself and its subdomains, not names that merely end alike. An entry
    with ``:port`` matches only that port. Names are not resolved, as curl does not resolve them."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in _ENTRY_SPLIT.split(no_proxy.strip()):
        if not raw:
            continue
        if raw == "*":
            return True
        name, only_port = _split_host_port(raw.lower())
        if only_port is not None and only_port != port:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        if name.startswith("*."):
            name = name[1:]
        name = name.lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def proxy_for(
    scheme: str,
    host: str,
    port: int,
    configured: str = "",
    environ: Mapping[str, str] | None = None,
    where: str = "the configured proxy",
) -> Proxy | None:
    """Return the proxy a request to *scheme*://*host*:*port* goes through, or None to go straight.

    ``NO_PROXY`` wins (as in curl and git, even over a configured proxy); then *configured* (the
    service's ``proxy`` setting, named by *where* in errors); then ``<scheme>_proxy``, then
    ``ALL_PROXY`` from *environ* (default: this process's environment). Raise ProxyError when the
    chosen setting is not an HTTP proxy URL.
    """
    environ = os.environ if environ is None else environ
    _, no_proxy = environment_value(environ, "no_proxy")
    if no_proxy and bypasses(host, port, no_proxy):
        return None
    if configured:
        return parse_proxy(configured, where)
    for name in (scheme + "_proxy", "all_proxy"):
        variable, value = environment_value(environ, name)
        if value:
            return parse_proxy(value, variable)
    return None


class _ForwardConnection(http.client.HTTPConnection):
    """A connection to an HTTP proxy that asks it for absolute URLs of one origin (RFC 9112 §3.2.2)
    and carries the proxy's credentials on every request; callers write origin-form targets."""

    def __init__(self, proxy: Proxy, origin: str, timeout: float) -> None:
        super().__init__(proxy.host, proxy.port, timeout=timeout)
        self._origin = origin
        self._proxy_authorization = proxy.authorization

    def putrequest(
        self, method: str, url: str, skip_host: bool = False, skip_accept_encoding: bool = False
    ) -> None:
        if url.startswith("/"):
            url = "http://" + self._origin + url
        super().putrequest(method, url, skip_host=skip_host, skip_accept_encoding=skip_accept_encoding)
        if self._proxy_authorization:
            self.putheader("Proxy-Authorization", self._proxy_authorization)


class Route:
    """How requests to one origin travel: straight there, or through an HTTP proxy (a ``CONNECT``
    tunnel for https, absolute-form requests for http). Connections it opens take origin-form
    targets (``/path?query``) either way."""

    def __init__(self, scheme: str, host: str, port: int, proxy: Proxy | None) -> None:
        if scheme not in ("http", "https"):
            raise ProxyError("unsupported URL scheme %r" % scheme)
        self.scheme = scheme
        self.host = host
        self.port = port
        self.proxy = proxy

    def connection(self, timeout: float, context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
        """Return a new (not yet connected) connection for this route."""
        proxy = self.proxy
        if self.scheme == "https":
            context = context or client_context()
            if proxy is None:
                return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=context)
            tunnel = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=timeout, context=context)
            headers = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
            tunnel.set_tunnel(self.host, self.port, headers=headers)
            return tunnel
        if proxy is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        host = "[%s]" % self.host if ":" in self.host else self.host
        return _ForwardConnection(proxy, host if self.port == 80 else "%s:%d" % (host, self.port), timeout)

    def describe(self) -> str:
        """Say where requests go, for messages (the proxy without its credentials)."""
        where = "%s:%d" % (self.host, self.port)
        return where if self.proxy is None else "%s through the proxy %s" % (where, self.proxy)


def route_for(
    url: str,
    configured: str = "",
    environ: Mapping[str, str] | None = None,
    where: str = "the configured proxy",
) -> Route:
    """Return the Route for *url*'s origin (see proxy_for). Raise ProxyError for a URL that is not
    http(s) or a proxy setting that cannot be used."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ProxyError("not an http(s) URL")
    port = parts.port or (443 if scheme == "https" else 80)
    host = parts.hostname.lower()
    return Route(scheme, host, port, proxy_for(scheme, host, port, configured, environ, where))


def agent_route(url: str, configured: str, key: str) -> Route:
    """route_for on the VM: a proxy setting that cannot be used is an AgentError that blocks the
    operation, with a hint naming the config *key* (``vm.proxy``, ``modelscope.proxy``)."""
    try:
        return route_for(url, configured, where=key)
    except ProxyError as exc:
        raise AgentError(
            str(exc),
            kind="blocked",
            error_class="config",
            hint="set %s to an http:// proxy, or fix the proxy variables of the VM's login" % key,
        ) from None
