"""Point aligo at a different Aliyun Drive API base (the sandbox's fake drive, or a mirror).

aligo hard-codes its hosts (``API_HOST`` is bound as a default argument at import) and turns
``trust_env`` off, so neither configuration nor proxy variables can move it. What it does share is
one ``requests.Session`` per instance (``ali._session``); an adapter mounted there rewrites each
request's URL before it leaves (reference/aliyun-drive.md §9). Upload and download URLs the
service hands out are used verbatim and need no rewriting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import requests
from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest, Response

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


class RedirectAdapter(HTTPAdapter):
    """An HTTPAdapter that sends requests for the given host prefixes to *base_url* instead.

    ``https://api.aliyundrive.com/v2/file/get?x=1`` becomes ``<base_url>/v2/file/get?x=1``; any
    path under *base_url* (``http://127.0.0.1:8080/drive``) is kept as a prefix. URLs of other
    hosts pass through unchanged.
    """

    def __init__(self, base_url: str, prefixes: Iterable[str] = ALIGO_HOSTS) -> None:
        super().__init__()
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
    session: requests.Session, api_url: str, prefixes: Iterable[str] = ALIGO_HOSTS
) -> RedirectAdapter:
    """Mount a RedirectAdapter on *session* for each prefix, so aligo's calls go to *api_url*.

    Call it right after constructing ``Aligo`` and before its first request (a constructor that
    finds its token file makes none). Return the adapter.
    """
    adapter = RedirectAdapter(api_url, prefixes)
    for prefix in adapter.prefixes:
        session.mount(prefix + "/", adapter)
    return adapter
