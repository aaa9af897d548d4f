"""Who may read the page and the API, and who may steer relayd through it.

* **Control** (add, pause, resume, retry, remove) needs the token (``web.token_*``), always. A request a
  browser sends from another site cannot pass: its ``Origin`` must be relayd's own, and it must be
  JSON (``Content-Type: application/json``), which a form cannot send and a cross-site script cannot
  send without asking first (a CORS preflight relayd never grants).
* **Reading** needs the token too, except on a loopback address (``web.read_without_token``, on by
  default) and only when the ``Host`` header names this machine's loopback and no proxy header
  (``X-Forwarded-For`` …) is present: a page elsewhere that points its own name at 127.0.0.1 (DNS
  rebinding), or a proxy that passes on its public name or says whom it forwards, gets no anonymous
  answer.

The token is accepted as ``Authorization: Bearer TOKEN`` (relayctl --url, scripts) or as the password
of HTTP Basic authentication (a browser asks for it; any user name), and compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from email.message import Message
from urllib.parse import urlsplit

from relayd.config import WebConfig, is_loopback
from relayd.errors import ConfigError

#: A token shorter than this is refused when the server starts.
MIN_TOKEN_LENGTH = 16
REALM = 'Basic realm="relayd", charset="UTF-8"'
JSON_TYPE = "application/json"
#: Headers a proxy adds: a request that carries one came from elsewhere, whatever its Host says.
FORWARDED = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-IP")


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: its HTTP status, the message, and headers to send with it."""

    status: int
    message: str
    challenge: bool = False


def resolve_token(config: WebConfig) -> str | None:
    """Return the configured token (None when there is none). Raise ConfigError when it is configured
    but empty or too short, or when ``web.listen`` is not a loopback address and there is no token."""
    token = config.token.resolve() if config.token.configured else None
    host = config.listen.rpartition(":")[0]
    if config.token.configured and not token:
        raise ConfigError(f"web.token is {config.token.describe()}, which is empty or unset")
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"web.token ({config.token.describe()}) has {len(token)} characters; use at least "
            f"{MIN_TOKEN_LENGTH}, for example `openssl rand -hex 24`"
        )
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"web.listen {config.listen!r} is not a loopback address and web.token_* is not set"
        )
    return token


def presented_token(headers: Message) -> str | None:
    """Return the token a request carries (Bearer, or a Basic password), or None."""
    kind, _, value = (headers.get("Authorization") or "").strip().partition(" ")
    if kind.lower() == "bearer":
        return value.strip() or None
    if kind.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def _host_of(netloc: str) -> str:
    """Return the host of a ``Host`` header or URL authority, without the port."""
    return urlsplit(f"//{netloc}").hostname or ""


def _authority(netloc: str, scheme: str) -> tuple[str, int | None]:
    """Return (host, port) of *netloc*, the port defaulted from *scheme*; port None if malformed."""
    parts = urlsplit(f"//{netloc}")
    try:
        port = parts.port
    except ValueError:
        return parts.hostname or "", None
    return parts.hostname or "", port or (443 if scheme == "https" else 80)


class Access:
    """The rules above for one configured server."""

    def __init__(self, config: WebConfig, token: str | None) -> None:
        self.token = token
        host = config.listen.rpartition(":")[0]
        self.anonymous_reads = config.read_without_token and is_loopback(host)

    def _token_check(self, headers: Message) -> Refusal | bool:
        """Return True for the right token, False for none, a Refusal for a wrong one."""
        given = presented_token(headers)
        if given is None:
            return False
        if self.token is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            return True
        return Refusal(401, "wrong token", challenge=True)

    def may_read(self, headers: Message) -> Refusal | None:
        """Return None when the request may read, else why not."""
        checked = self._token_check(headers)
        if isinstance(checked, Refusal):
            return checked
        if checked:
            return None
        forwarded = any(headers.get(name) for name in FORWARDED)
        if self.anonymous_reads and not forwarded and is_loopback(_host_of(headers.get("Host") or "")):
            return None
        if self.token is None:
            return Refusal(
                403,
                "reading without a token is answered only to requests for a loopback address "
                "(http://127.0.0.1:PORT/ or http://localhost:PORT/); set web.token_* to read from elsewhere",
            )
        return Refusal(401, "this needs the token (web.token_*)", challenge=True)

    def may_write(self, headers: Message) -> Refusal | None:
        """Return None when the request may steer relayd, else why not."""
        if self.token is None:
            return Refusal(
                403,
                "control through the web API is off: set web.token_env, web.token_file or "
                "web.token_credential on the daemon, then send the token",
            )
        checked = self._token_check(headers)
        if isinstance(checked, Refusal):
            return checked
        if not checked:
            return Refusal(401, "this needs the token (web.token_*)", challenge=True)
        origin = headers.get("Origin")
        if origin is not None and not _same_origin(origin, headers.get("Host") or ""):
            return Refusal(403, f"refused a request from the page of another site ({origin[:100]})")
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != JSON_TYPE:
            return Refusal(415, f"control requests must be {JSON_TYPE}")
        return None


def _same_origin(origin: str, host: str) -> bool:
    """Return whether *origin* (scheme://host[:port]) names the server the ``Host`` header names."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not host:
        return False
    wanted = _authority(host, parts.scheme)
    return wanted[1] is not None and _authority(parts.netloc, parts.scheme) == wanted
