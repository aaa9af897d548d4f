"""The sandbox's shared HTTP plumbing (relayd_sandbox/_http.py)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from relayd_sandbox._http import send_range


def test_a_file_range_reaches_a_client_that_reads_slower_than_it_is_sent(tmp_path: Path) -> None:
    """A server socket with a timeout is non-blocking underneath: a client that pauses fills its
    buffers, and the range must still arrive whole once it reads again (not fail half-way)."""
    data = os.urandom(4 * 1024 * 1024)
    source = tmp_path / "blob"
    source.write_bytes(data)
    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    server.settimeout(10)  # as BaseHTTPRequestHandler.timeout sets it
    sent: list[int] = []
    errors: list[BaseException] = []

    def send() -> None:
        with source.open("rb") as handle:
            offset = 0
            try:
                while offset < len(data):
                    count = send_range(server, handle.fileno(), offset, len(data) - offset)
                    offset += count
            except OSError as exc:  # what the sender met, to show in the assertion
                errors.append(exc)
            sent.append(offset)
            server.close()

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.5)  # the client pauses: the server's socket buffer fills
    received = bytearray()
    while chunk := client.recv(1024 * 1024):
        received += chunk
    sender.join(10)
    client.close()
    assert not errors, errors
    assert sent == [len(data)]
    assert bytes(received) == data
