"""Network failures in plain words: what went wrong on the way to a server, and what to do about it.

Client libraries wrap the operating system's error in their own (httpx's ``ConnectError``, requests'
``ConnectionError`` around urllib3's ``MaxRetryError``, urllib's ``URLError``), and their text reads
``<urlopen error [Errno 111] Connection refused>``. ``plain_network_error`` walks the chain down to the
error the socket or TLS layer gave and names it as a person would: "connection refused at …",
"certificate not trusted (…)", "DNS name not found: host", "timed out after N s".
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

#: What an HTTP status means for a person checking a service (the phrase alone rarely says it).
STATUS_MEANINGS = {
    400: "the server could not understand the request",
    401: "the credentials are missing or were refused",
    403: "the credentials may not do this",
    404: "nothing is at this address",
    407: "a proxy on the way asks for credentials",
    408: "the server gave up waiting for the request",
    429: "too many requests: the server is rate-limiting this machine",
    500: "the server failed",
    502: "a proxy or gateway got no usable answer from the server behind it",
    503: "the server is down or overloaded",
    504: "a proxy or gateway timed out waiting for the server behind it",
}
_NOT_FOUND = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


@dataclass(frozen=True)
class Plain:
    """A failure as a person reads it: what happened, and what to do."""

    detail: str
    hint: str


def causes(exc: BaseException) -> Iterator[BaseException]:
    """Yield *exc* and every error behind it (``__cause__``, ``__context__``, a ``reason`` as urllib and
    urllib3 keep it, an error passed as an argument as requests does), each once, outermost first."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None)
        behind = [current.__cause__, current.__context__, reason, *current.args]
        queue += [item for item in behind if isinstance(item, BaseException)]


def status_words(status: int) -> str:
    """Return an HTTP status with its name and what it means, e.g. ``HTTP 503 Service Unavailable: the
    server is down or overloaded``."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "(unknown status)"
    meaning = STATUS_MEANINGS.get(status) or ("the server failed" if status >= 500 else "")
    return f"HTTP {status} {phrase}" + (f": {meaning}" if meaning else "")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    host = parts.hostname or url
    try:
        port = parts.port
    except ValueError:
        port = None
    origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url
    return origin, host, port


def plain_network_error(exc: BaseException, url: str, *, setting: str, timeout: float) -> Plain | None:
    """Given a failed request to *url* (configured as *setting*, e.g. ``hub.endpoint``) that waited at most
    *timeout* seconds, return the failure in plain words with what to do, or None when it was not a
    network failure (an HTTP answer, a refused token: the caller's own words fit those better)."""
    origin, host, port = _origin(url)
    for cause in causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = cause.verify_message or cause.reason or str(cause)
            return Plain(
                f"certificate not trusted ({why}) at {origin}",
                f"{host}'s certificate is not signed by an authority this machine trusts: if it is right "
                "(your own, or a proxy's), add its CA to the system's trust store (update-ca-certificates) "
                f"or point SSL_CERT_FILE / REQUESTS_CA_BUNDLE at it; otherwise fix {setting}",
            )
        if isinstance(cause, ssl.SSLError):
            return Plain(
                f"TLS handshake with {origin} failed ({cause.reason or cause})",
                f"check that {host} speaks HTTPS on that port (http:// or https:// in {setting})",
            )
        if isinstance(cause, socket.gaierror):
            if cause.errno in _NOT_FOUND:
                return Plain(
                    f"DNS name not found: {host}",
                    f"check the host name in {setting}; if it is right, check this machine's DNS "
                    "(/etc/resolv.conf)",
                )
            return Plain(
                f"DNS lookup of {host} failed ({cause.strerror or cause})",
                "check this machine's DNS servers (/etc/resolv.conf) and its network",
            )
        if isinstance(cause, ConnectionRefusedError):
            where = f"{host} port {port}" if port else host
            return Plain(
                f"connection refused at {origin}",
                f"nothing accepts connections on {where}: check {setting} (host and port) and that the "
                "service runs there; a firewall may also refuse",
            )
        if isinstance(cause, TimeoutError):
            return Plain(
                f"timed out after {timeout:g} s waiting for {origin}",
                f"{host} did not answer: check the network path to it (a firewall that drops packets, a "
                "proxy), or give doctor a longer --timeout",
            )
        if isinstance(cause, ConnectionResetError):
            return Plain(
                f"{origin} reset the connection",
                "a firewall or proxy on the way may cut it; check the network path, or the scheme in "
                f"{setting} (http:// or https://)",
            )
        if isinstance(cause, OSError) and cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return Plain(
                f"no route to {host} ({cause.strerror})",
                "this machine's network cannot reach that host: check its routes, VPN or proxy",
            )
    return None
