"""A real forwarding proxy for tests (Debian's tinyproxy, one per test on 127.0.0.1), and a TLS front that
serves a plain sandbox server over https with a throwaway certificate, so that clients' CONNECT
tunnels are tested too.

tinyproxy logs each request it carries (``GET http://host:port/path HTTP/1.1`` for plain http, the
absolute form a client sends it; ``CONNECT host:port HTTP/1.1`` for a tunnel) and adds
``Via: 1.1 relayd-test-proxy`` to every request it forwards, so a fake's request log shows which
requests came through it. Its fixtures (``no_proxy_variables``, ``tinyproxy``, ``locked_proxy``) are
registered in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd_sandbox._http import free_port
from relayd_sandbox.systools import require

TINYPROXY = "/usr/bin/tinyproxy"
VIA_NAME = "relayd-test-proxy"
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
_REQUEST = re.compile(r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/")


class Tinyproxy:
    """tinyproxy on a free loopback port, logging every request to ``log_path``; with *user* and
    *password* it demands them (407 otherwise)."""

    def __init__(self, root: Path, *, user: str = "", password: str = "") -> None:
        self.root = root
        self.user = user
        self.password = password
        self.port = free_port()
        self.log_path = root / "tinyproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The proxy's URL, with its credentials when it demands some."""
        auth = f"{self.user}:{self.password}@" if self.user else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    def start(self) -> Tinyproxy:
        require(TINYPROXY, "tinyproxy")
        self.root.mkdir(parents=True, exist_ok=True)
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 120",
            f'LogFile "{self.log_path}"',
            "LogLevel Info",
            "MaxClients 64",
            "Allow 127.0.0.1",
            f'ViaProxyName "{VIA_NAME}"',
        ]
        if self.user:
            lines.append(f"BasicAuth {self.user} {self.password}")
        config = self.root / "tinyproxy.conf"
        config.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen(
            [TINYPROXY, "-d", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tinyproxy exited at start: {self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            time.sleep(0.05)
        raise RuntimeError("tinyproxy did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def requests(self) -> list[tuple[str, str]]:
        """Return (method, target) of every request the proxy carried, in order."""
        return _REQUEST.findall(self.log())

    def carried(self, fragment: str, method: str | None = None) -> list[str]:
        """Return the targets of the requests carried whose target contains *fragment*."""
        return [t for m, t in self.requests() if fragment in t and method in (None, m)]


#: The credentials ``locked_proxy`` demands.
LOCKED_USER = "relayd"
LOCKED_PASSWORD = "pr0xy-" + secrets.token_hex(6)


@pytest.fixture
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset every proxy variable for this test (it sets the ones it means)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    """A tinyproxy for this test that carries anything from 127.0.0.1."""
    proxy = Tinyproxy(tmp_path / "tinyproxy").start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def locked_proxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    """A tinyproxy for this test that answers 407 without LOCKED_USER and LOCKED_PASSWORD; its
    ``url`` carries them."""
    proxy = Tinyproxy(tmp_path / "locked-proxy", user=LOCKED_USER, password=LOCKED_PASSWORD).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def via_proxy(headers: dict[str, str]) -> bool:
    """Whether a request with *headers* (as a fake logged them) came through the test proxy."""
    return any(k.lower() == "via" and VIA_NAME in v for k, v in headers.items())


def make_certificate(root: Path) -> tuple[Path, Path]:
    """Return (certificate, key) of a throwaway self-signed certificate for 127.0.0.1, made with
    openssl; a client trusts it with SSL_CERT_FILE=<certificate>."""
    require("/usr/bin/openssl", "openssl")
    root.mkdir(parents=True, exist_ok=True)
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        [
            "/usr/bin/openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class TlsFront:
    """Serves a plain HTTP server at 127.0.0.1:*backend_port* over TLS on its own port: each TLS
    connection is decrypted and its bytes pumped to a new connection to the backend and back."""

    def __init__(self, backend_port: int, cert: Path, key: Path) -> None:
        self.backend_port = backend_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def https(self, url: str) -> str:
        """Return *url* (of the backend) as the same path and query on this front."""
        path = url.split("://", 1)[1].split("/", 1)[1] if "/" in url.split("://", 1)[1] else ""
        return f"https://127.0.0.1:{self.port}/{path}"

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            secure = self.context.wrap_socket(client, server_side=True)
        except (OSError, ssl.SSLError):
            client.close()
            return
        backend = socket.create_connection(("127.0.0.1", self.backend_port))
        threading.Thread(target=_pump, args=(backend, secure), daemon=True).start()
        _pump(secure, backend)

    def stop(self) -> None:
        self._stopped.set()
        self.listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
