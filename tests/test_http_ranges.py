"""relayd.http_ranges against a small loopback server that misbehaves on purpose: every answer that is
not exactly the range asked for is refused with the error that says what to do next, credentials go
only to the origin they belong to, and keep-alive connections are reused (and renewed when stale).
Each test runs over plain HTTP and over HTTPS (a throwaway CA)."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from relayd.http_ranges import (
    BadContentRange,
    ConnectionLost,
    LocationRefused,
    RangeClient,
    RangeIgnored,
    RangeNotSatisfiable,
    RateLimited,
    ServerError,
    ShortBody,
    Stalled,
    parse_content_range,
)
from relayd.vm.agent.proxy import client_context
from relayd_sandbox._http import LoopbackServer
from relayd_sandbox.tls import ThrowawayCA

DATA = bytes(range(256)) * 64  # 16 KiB


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization"), self.client_address[1]))
        first, last = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
        body = DATA[first : last + 1]
        path = self.path.split("?", 1)[0]
        if path == "/whole":
            self._send(200, DATA)
        elif path == "/wrong-range":
            self._send(206, body, {"Content-Range": f"bytes {first + 1}-{last + 1}/{len(DATA)}"})
        elif path == "/wrong-total":
            self._send(206, body, {"Content-Range": f"bytes {first}-{last}/{len(DATA) + 1}"})
        elif path == "/wrong-length":
            self._send(
                206, body, {"Content-Range": f"bytes {first}-{last}/{len(DATA)}"}, length=len(body) - 1
            )
        elif path == "/short":
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(DATA)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:100])
            self.close_connection = True
        elif path == "/stall":
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(DATA)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:10])
            self.wfile.flush()
            time.sleep(1.5)
            self.close_connection = True
        elif path == "/416":
            self._send(416, b"", {"Content-Range": f"bytes */{len(DATA)}"})
        elif path == "/429-date":
            self._send(429, b"slow down", {"Retry-After": formatdate(time.time() + 30, usegmt=True)})
        elif path == "/429-ratelimit":
            self._send(429, b"", {"RateLimit": '"resolvers";r=0;t=17', "Retry-After": "99"})
        elif path == "/403":
            body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
            self._send(403, body)
        elif path == "/503":
            self._send(503, b"busy")
        elif path.startswith("/hop"):
            self._send(302, b"", {"Location": self.server.next_location})
        else:
            self._send(206, body, {"Content-Range": f"bytes {first}-{last}/{len(DATA)}"})

    def _send(
        self, status: int, body: bytes, headers: dict[str, str] | None = None, length: int | None = None
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)


class Server(LoopbackServer):
    def __init__(self, ca: ThrowawayCA | None = None) -> None:
        super().__init__(Handler, tls=ca.server_context if ca is not None else None)
        self.ca = ca
        self.seen: list[tuple[str, str | None, int]] = []
        self.next_location = ""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hang up on purpose here


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    return ThrowawayCA.create(Path(tmp_path_factory.mktemp("ca")))


@pytest.fixture(params=["http", "https"])
def servers(request: pytest.FixtureRequest, ca: ThrowawayCA) -> Iterator[tuple[Server, Server]]:
    first, second = (Server(ca if request.param == "https" else None) for _ in range(2))
    first.start()
    second.start()
    yield first, second
    first.stop()
    second.stop()


def context_for(origin: Server) -> ssl.SSLContext | None:
    """Return a context that trusts *origin*'s CA (None for plain HTTP)."""
    return client_context(str(origin.ca.ca_cert)) if origin.ca is not None else None


def client_for(origin: Server, *, stall: float = 5.0) -> RangeClient:
    base = origin.base_url

    def authorize(url: str) -> dict[str, str]:
        return {"Authorization": "Bearer secret"} if url.startswith(base + "/") else {}

    return RangeClient(
        connect_timeout=5,
        stall_timeout=stall,
        buffer_size=4096,
        authorize=authorize,
        ssl_context=context_for(origin),
    )


def fetch(client: RangeClient, url: str, start: int = 0, end: int = len(DATA)) -> bytes:
    out = bytearray(end - start)

    def write(offset: int, data: memoryview) -> None:
        out[offset - start : offset - start + len(data)] = data

    assert client.fetch(url, start, end, len(DATA), write) == end - start
    return bytes(out)


def test_a_good_range_arrives_whole_over_one_kept_alive_connection(servers: tuple[Server, Server]) -> None:
    server, _ = servers
    client = client_for(server)
    assert fetch(client, f"{server.base_url}/good", 100, 9000) == DATA[100:9000]
    assert fetch(client, f"{server.base_url}/good", 9000) == DATA[9000:]
    ports = {port for _path, _auth, port in server.seen}
    assert len(ports) == 1
    (connection,) = client._connections.values()
    assert isinstance(connection.sock, ssl.SSLSocket) == (server.ca is not None)
    client.close()


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/whole", RangeIgnored),
        ("/wrong-range", BadContentRange),
        ("/wrong-total", BadContentRange),
        ("/wrong-length", BadContentRange),
        ("/short", ShortBody),
        ("/416", RangeNotSatisfiable),
        ("/403", LocationRefused),
        ("/503", ServerError),
    ],
)
def test_answers_that_are_not_the_range_are_refused(
    servers: tuple[Server, Server], path: str, error: type[Exception]
) -> None:
    server, _ = servers
    with pytest.raises(error):
        fetch(client_for(server), f"{server.base_url}{path}", 1000, 5000)


def test_what_arrived_before_a_failure_is_counted(servers: tuple[Server, Server]) -> None:
    server, _ = servers
    with pytest.raises(ShortBody) as caught:
        fetch(client_for(server), f"{server.base_url}/short", 1000, 5000)
    assert caught.value.received == 100


def test_a_stall_is_detected(servers: tuple[Server, Server]) -> None:
    server, _ = servers
    started = time.monotonic()
    with pytest.raises(Stalled):
        fetch(client_for(server, stall=0.5), f"{server.base_url}/stall", 0, 5000)
    assert time.monotonic() - started < 1.4


def test_429_says_how_long_to_wait(servers: tuple[Server, Server]) -> None:
    server, _ = servers
    with pytest.raises(RateLimited) as by_date:
        fetch(client_for(server), f"{server.base_url}/429-date")
    assert by_date.value.retry_after is not None and 25 < by_date.value.retry_after <= 30
    with pytest.raises(RateLimited) as by_header:
        fetch(client_for(server), f"{server.base_url}/429-ratelimit")
    assert by_header.value.retry_after == 17


def test_refusals_carry_the_body_and_never_the_query(servers: tuple[Server, Server]) -> None:
    server, _ = servers
    with pytest.raises(LocationRefused) as caught:
        fetch(client_for(server), f"{server.base_url}/403?sig=SECRET")
    assert caught.value.status == 403 and "expired" in caught.value.body
    assert "SECRET" not in str(caught.value)


def test_credentials_do_not_follow_a_redirect_to_another_origin(servers: tuple[Server, Server]) -> None:
    hub, cdn = servers
    hub.next_location = f"{cdn.base_url}/good"
    assert fetch(client_for(hub), f"{hub.base_url}/hop") == DATA
    assert [auth for _path, auth, _port in hub.seen] == ["Bearer secret"]
    assert [auth for _path, auth, _port in cdn.seen] == [None]

    hub.next_location = "/good"  # same origin: credentials stay
    assert fetch(client_for(hub), f"{hub.base_url}/hop") == DATA
    assert [auth for _path, auth, _port in hub.seen][-1] == "Bearer secret"


def test_extra_headers_never_smuggle_authorization(servers: tuple[Server, Server]) -> None:
    _, cdn = servers
    client = RangeClient(connect_timeout=5, stall_timeout=5, ssl_context=context_for(cdn))
    client.fetch(
        f"{cdn.base_url}/good", 0, 10, len(DATA), lambda offset, data: None, headers={"authorization": "x"}
    )
    assert cdn.seen[-1][1] is None


def test_a_stale_keep_alive_connection_is_renewed_once(servers: tuple[Server, Server]) -> None:
    server, _ = servers
    client = client_for(server)
    assert fetch(client, f"{server.base_url}/good", 0, 10) == DATA[:10]
    # The server drops the idle connection (as servers do after their keep-alive timeout).
    for connection in client._connections.values():
        assert connection.sock is not None
        connection.sock.shutdown(2)
    assert fetch(client, f"{server.base_url}/good", 10, 20) == DATA[10:20]


def test_a_refused_connection_is_lost() -> None:
    from relayd_sandbox._http import free_port

    client = RangeClient(connect_timeout=2, stall_timeout=2)
    with pytest.raises(ConnectionLost):
        client.fetch(f"http://127.0.0.1:{free_port()}/x", 0, 10, 100, lambda offset, data: None)


def test_stop_ends_a_transfer_between_chunks(servers: tuple[Server, Server]) -> None:
    from relayd.http_ranges import Stopped

    server, _ = servers
    stop = threading.Event()
    stop.set()
    client = client_for(server)
    with pytest.raises(Stopped):
        client.fetch(f"{server.base_url}/good", 0, 10, len(DATA), lambda offset, data: None, stop=stop)


def test_parse_content_range() -> None:
    assert parse_content_range("bytes 0-9/100") == (0, 9, 100)
    assert parse_content_range("bytes 5-9/*") == (5, 9, None)
    assert parse_content_range("bytes */100") is None
    assert parse_content_range(None) is None
