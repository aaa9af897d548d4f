"""Ranged HTTP GETs for moving big files: one byte range per request over keep-alive connections, with
the strict checks a resumable download needs, in bounded memory. Standard library only, so the VM side
of a hop can carry the same rules.

A range is good only as a ``206`` whose ``Content-Range`` is exactly the range asked for, out of the size
expected, and whose body is complete. Everything else is raised as a ``RangeError`` subclass that says
what to do next: retry the range (``RangeIgnored``, ``BadContentRange``, ``ShortBody``, ``Stalled``,
``ConnectionLost``, ``ServerError``), fetch a fresh location (``LocationRefused``, ``RangeNotSatisfiable``)
or wait (``RateLimited``); a certificate this machine does not trust is ``Untrusted`` (waiting does not
fix it). Redirects are followed by hand so that credentials go only to the origin they
belong to. Connections go through the configured proxy or the environment's (``HTTPS_PROXY``,
``NO_PROXY``, …; relayd/vm/agent/proxy.py decides, as it does for every client relayd runs).
"""

from __future__ import annotations

import http.client
import re
import ssl
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol
from urllib.parse import urljoin, urlsplit

from relayd.vm.agent.proxy import ProxyError, Route, proxy_for

__all__ = [
    "BadContentRange",
    "ConnectionLost",
    "LocationRefused",
    "ProxyUnusable",
    "RangeClient",
    "RangeError",
    "RangeIgnored",
    "RangeNotSatisfiable",
    "RateLimited",
    "ServerError",
    "ShortBody",
    "Stalled",
    "Stopped",
    "UnexpectedStatus",
    "Untrusted",
]

Origin = tuple[str, str, int]
Writer = Callable[[int, memoryview], None]

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_RATELIMIT_RESET = re.compile(r";\s*t\s*=\s*(\d+)")
_TOTAL = re.compile(r"/\s*(\d+)\s*$")
_TUNNEL_REFUSED = re.compile(r"^Tunnel connection failed: 407\b")
_MAX_REDIRECTS = 5
_ERROR_BODY = 4096


class RangeError(Exception):
    """A ranged GET did not deliver its range; ``received`` bytes of it were written before it failed."""

    received: int = 0


class RangeIgnored(RangeError):
    """The server answered 200 (the whole body) to a Range request; the body was not used."""


class BadContentRange(RangeError):
    """A 206 whose Content-Range or Content-Length is not the range asked for."""


class ShortBody(RangeError):
    """The body ended before the announced length."""


class Stalled(RangeError):
    """No byte arrived for the stall timeout."""


class ConnectionLost(RangeError):
    """The connection failed (refused, reset, closed) before the range was complete."""


class RangeNotSatisfiable(RangeError):
    """416: the server thinks the range lies outside the resource (it may have changed)."""

    def __init__(self, message: str, total: int | None) -> None:
        super().__init__(message)
        self.total = total


class LocationRefused(RangeError):
    """400, 401, 403, 404 or 410 from the location: an expired or revoked signed URL, typically."""

    def __init__(self, message: str, status: int, body: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class RateLimited(RangeError):
    """429; ``retry_after`` is the wait the server asked for, when it said."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerError(RangeError):
    """A 5xx (or 408) answer."""


class ProxyUnusable(RangeError):
    """The proxy setting that applies to the URL is not an HTTP proxy relayd can use, or the proxy
    wants credentials (407)."""


class Untrusted(RangeError):
    """The origin's TLS certificate is not signed by an authority the client trusts (or names
    another host)."""


class UnexpectedStatus(RangeError):
    """Any other status, including redirect loops."""


class Stopped(RangeError):
    """The caller asked to stop (between two chunks)."""


def proxy_refused(where: str) -> ProxyUnusable:
    """Return the error for a proxy that answered 407, to a request or to the CONNECT of a tunnel."""
    return ProxyUnusable(
        f"{where}: the proxy asks for credentials it was not given or refused (407): set them in "
        "hub.proxy or the proxy variables as http://user:password@host:port"
    )


def origin_of(url: str) -> Origin:
    """Return (scheme, host, port) of *url*, with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """Return (first, last, total or None) of a ``bytes a-b/t`` Content-Range, or None if malformed."""
    match = _CONTENT_RANGE.match(value or "")
    if match is None:
        return None
    first, last, total = match.groups()
    return int(first), int(last), None if total == "*" else int(total)


class _Headers(Protocol):
    def get(self, name: str, /) -> str | None: ...


def retry_after_seconds(headers: _Headers) -> float | None:
    """Return the wait a 429/503 asks for: the ``RateLimit`` reset (``t=``), else ``Retry-After``
    (seconds or an HTTP date), else None."""
    rate_limit = headers.get("RateLimit")
    if rate_limit:
        match = _RATELIMIT_RESET.search(rate_limit)
        if match:
            return float(match.group(1))
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


class RangeClient:
    """Keep-alive connections (one per origin) for one thread, and a reusable receive buffer.

    Not thread-safe: each worker thread owns one. *authorize* maps a URL to the credential headers it may
    carry (an empty dict for foreign origins); it is consulted for every request, redirects included.
    *on_answer* is shown the URL and headers of every answer, redirects included (to read the rate
    limits a Hub announces).
    *proxy* is the service's configured proxy ("" for the environment's proxy variables); ``NO_PROXY``
    applies either way.
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        stall_timeout: float,
        buffer_size: int = 1024 * 1024,
        authorize: Callable[[str], Mapping[str, str]] | None = None,
        on_answer: Callable[[str, Mapping[str, str]], None] | None = None,
        user_agent: str = "relayd",
        ssl_context: ssl.SSLContext | None = None,
        proxy: str = "",
    ) -> None:
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self._buffer = memoryview(bytearray(buffer_size))
        self._authorize = authorize
        self._on_answer = on_answer
        self._user_agent = user_agent
        self._ssl_context = ssl_context
        self._proxy = proxy
        self._routes: dict[Origin, Route] = {}
        self._connections: dict[Origin, http.client.HTTPConnection] = {}
        self._fresh: set[Origin] = set()

    def close(self) -> None:
        """Close every open connection."""
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    def _route(self, origin: Origin) -> Route:
        """Return how requests to *origin* travel (decided once per origin and client)."""
        route = self._routes.get(origin)
        if route is None:
            scheme, host, port = origin
            if scheme not in ("http", "https"):
                raise UnexpectedStatus(f"unsupported URL scheme {scheme!r}")
            try:
                route = Route(
                    scheme, host, port, proxy_for(scheme, host, port, self._proxy, where="hub.proxy")
                )
            except ProxyError as exc:
                raise ProxyUnusable(str(exc)) from exc
            self._routes[origin] = route
        return route

    def _where(self, origin: Origin) -> str:
        route = self._routes.get(origin)
        return route.describe() if route is not None else f"{origin[1]}:{origin[2]}"

    def _connection(self, origin: Origin) -> http.client.HTTPConnection:
        connection = self._connections.get(origin)
        if connection is None:
            connection = self._route(origin).connection(self.connect_timeout, self._ssl_context)
            self._connections[origin] = connection
            self._fresh.add(origin)
        return connection

    def _drop(self, origin: Origin) -> None:
        connection = self._connections.pop(origin, None)
        if connection is not None:
            connection.close()

    def fetch(
        self,
        url: str,
        start: int,
        end: int,
        total: int,
        write: Writer,
        *,
        headers: Mapping[str, str] | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        """GET bytes [start, end) of a resource of *total* bytes from *url*; hand each chunk received to
        ``write(offset, data)`` (data is only valid during the call). Return the bytes written.

        Raise a RangeError subclass when the range was not delivered whole; its ``received`` says how
        many bytes were written first (they are good: only complete, checked chunks are handed over).
        Exceptions raised by *write* (a full disk) propagate untouched.
        """
        if not 0 <= start < end <= total:
            raise ValueError(f"bad range [{start}, {end}) of {total} bytes")
        target = url
        for _ in range(_MAX_REDIRECTS + 1):
            response, origin = self._request(target, start, end, headers or {})
            if self._on_answer is not None:
                self._on_answer(target, dict(response.getheaders()))
            status = response.status
            if status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                location = urljoin(target, response.getheader("Location", ""))
                self._discard(response, origin)
                target = location
                continue
            return self._receive(
                response=response,
                origin=origin,
                url=target,
                start=start,
                end=end,
                total=total,
                write=write,
                stop=stop,
            )
        raise UnexpectedStatus(f"more than {_MAX_REDIRECTS} redirects from {_redact(url)}")

    def _request(
        self, url: str, start: int, end: int, extra: Mapping[str, str]
    ) -> tuple[http.client.HTTPResponse, Origin]:
        parts = urlsplit(url)
        origin = origin_of(url)
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        headers = {
            "Range": f"bytes={start}-{end - 1}",
            "Accept-Encoding": "identity",
            "User-Agent": self._user_agent,
            **{name: value for name, value in extra.items() if name.lower() != "authorization"},
        }
        if self._authorize is not None:
            headers.update(self._authorize(url))
        for attempt in range(2):
            connection = self._connection(origin)
            reused = origin not in self._fresh
            self._fresh.discard(origin)
            try:
                if connection.sock is not None:
                    connection.sock.settimeout(self.connect_timeout)
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
            except ssl.SSLCertVerificationError as exc:
                self._drop(origin)
                why = exc.verify_message or exc.reason or str(exc)
                where = self._where(origin)
                raise Untrusted(f"the TLS certificate of {where} is not trusted: {why}") from exc
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._drop(origin)
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection; say it again, once
                raise ConnectionLost(f"{type(exc).__name__} from {self._where(origin)}: {exc}") from exc
            except TimeoutError as exc:
                self._drop(origin)
                raise Stalled(f"no answer from {self._where(origin)} in {self.connect_timeout:.0f}s") from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop(origin)
                if _TUNNEL_REFUSED.match(str(exc)):  # http.client's word for a CONNECT answered 407
                    raise proxy_refused(self._where(origin)) from exc
                raise ConnectionLost(f"{type(exc).__name__} from {self._where(origin)}: {exc}") from exc
            return response, origin
        raise AssertionError("unreachable")  # pragma: no cover

    def _discard(self, response: http.client.HTTPResponse, origin: Origin) -> str:
        """Read a small non-payload body (so the connection can be reused) and return it as text;
        close the connection instead when the body is large or unknown."""
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) <= _ERROR_BODY:
            try:
                return response.read().decode("utf-8", "replace")
            except (OSError, http.client.HTTPException):
                self._drop(origin)
                return ""
        self._drop(origin)
        return ""

    def _receive(
        self,
        *,
        response: http.client.HTTPResponse,
        origin: Origin,
        url: str,
        start: int,
        end: int,
        total: int,
        write: Writer,
        stop: threading.Event | None,
    ) -> int:
        status = response.status
        where = _redact(url)
        if status != 206:
            body = self._discard(response, origin) if status != 200 else ""
            if status == 200:
                self._drop(origin)  # never read a whole file we did not ask for
                raise RangeIgnored(f"{where} answered 200 to a Range request (the range was ignored)")
            if status == 416:
                announced = _TOTAL.search(response.getheader("Content-Range", ""))
                raise RangeNotSatisfiable(
                    f"{where} answered 416 to bytes={start}-{end - 1} "
                    f"(Content-Range {response.getheader('Content-Range')!r})",
                    int(announced.group(1)) if announced else None,
                )
            if status == 407:
                raise proxy_refused(self._where(origin))
            if status == 429:
                raise RateLimited(f"{where} answered 429", retry_after_seconds(response.msg))
            if status in (400, 401, 403, 404, 410):
                raise LocationRefused(f"{where} answered {status}{_excerpt(body)}", status, body)
            if status >= 500 or status == 408:
                raise ServerError(f"{where} answered {status}{_excerpt(body)}")
            raise UnexpectedStatus(f"{where} answered {status}{_excerpt(body)}")
        parsed = parse_content_range(response.getheader("Content-Range"))
        length = response.getheader("Content-Length")
        if parsed is None or parsed[0] != start or parsed[1] != end - 1 or parsed[2] not in (total, None):
            self._drop(origin)
            raise BadContentRange(
                f"{where} sent Content-Range {response.getheader('Content-Range')!r} "
                f"for bytes={start}-{end - 1} of {total}"
            )
        if length is not None and (not length.isdigit() or int(length) != end - start):
            self._drop(origin)
            raise BadContentRange(f"{where} sent Content-Length {length} for a range of {end - start} bytes")
        return self._body(
            response=response, origin=origin, where=where, start=start, end=end, write=write, stop=stop
        )

    def _body(
        self,
        *,
        response: http.client.HTTPResponse,
        origin: Origin,
        where: str,
        start: int,
        end: int,
        write: Writer,
        stop: threading.Event | None,
    ) -> int:
        connection = self._connections.get(origin)
        if connection is not None and connection.sock is not None:
            connection.sock.settimeout(self.stall_timeout)
        buffer = self._buffer
        position = start
        try:
            while position < end:
                if stop is not None and stop.is_set():
                    self._drop(origin)
                    raise Stopped("stopped")
                want = min(len(buffer), end - position)
                try:
                    got = response.readinto(buffer[:want])
                except TimeoutError as exc:
                    self._drop(origin)
                    raise Stalled(f"{where}: no byte for {self.stall_timeout:.0f}s") from exc
                except http.client.IncompleteRead as exc:
                    self._drop(origin)
                    raise ShortBody(f"{where}: the body ended after {position - start} bytes") from exc
                except (OSError, http.client.HTTPException) as exc:
                    self._drop(origin)
                    raise ConnectionLost(f"{where}: {type(exc).__name__}: {exc}") from exc
                if not got:
                    self._drop(origin)
                    raise ShortBody(
                        f"{where}: the body ended after {position - start} of {end - start} bytes"
                    )
                write(position, buffer[:got])
                position += got
        except RangeError as exc:
            exc.received = position - start
            raise
        return position - start


def _excerpt(body: str) -> str:
    text = " ".join(body.split())
    return f": {text[:160]}" if text else ""


def _redact(url: str) -> str:
    """Return *url* without its query string (signed URLs carry credentials there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
