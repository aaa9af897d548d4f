"""Webhook deliveries (relayd/notify.py) against local receivers: through the environment's proxy (a real
tinyproxy) unless NO_PROXY names the receiver; a redirect is a failed delivery and is not followed; a
huge answer is not read whole; a failure is logged and stored with the receiver's host only, never the
URL (its path is often the secret)."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from relayd.catalogue import migrate
from relayd.catalogue.schema import BLOCKED, Notification
from relayd.catalogue.store import FileSpec, RepoSpec, Store
from relayd.config import NotifyConfig
from relayd.notify import ANSWER_LIMIT, DeliveryFailed, Notifier, post_json
from relayd_sandbox._http import LoopbackServer
from tests.support.proxybox import Tinyproxy, via_proxy

pytestmark = pytest.mark.usefixtures("no_proxy_variables")

HUGE = 1 << 30  # what the hostile receiver announces


class Receiver(LoopbackServer):
    """A webhook receiver whose answer a test chooses: 204, a redirect, a 500 or a huge body."""

    def __init__(self) -> None:
        self.answer = "ok"
        self.redirect_to = ""
        self.posts: list[tuple[str, dict[str, str], Any]] = []
        self.sent = 0
        self.done = threading.Event()
        super().__init__(_Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Receiver

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        receiver = self.server
        receiver.posts.append((self.path, dict(self.headers.items()), body))
        if receiver.answer == "redirect":
            self.send_response(302)
            self.send_header("Location", receiver.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif receiver.answer == "error":
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif receiver.answer == "huge":
            self.send_response(200)
            self.send_header("Content-Length", str(HUGE))
            self.end_headers()
            chunk = b"x" * 65536
            try:
                while receiver.sent < HUGE:
                    self.wfile.write(chunk)
                    receiver.sent += len(chunk)
            except OSError:
                pass  # the client hung up, as it should
            finally:
                receiver.done.set()
        else:
            self.send_response(204)
            self.end_headers()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def secret_url(receiver: Receiver) -> str:
    """A webhook URL whose path and query carry a token, as chat services' do."""
    return f"{receiver.base_url}/hooks/T0/{secrets.token_hex(12)}?token={secrets.token_hex(8)}"


def test_a_delivery_goes_through_the_environments_proxy(
    receiver: Receiver, tinyproxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", tinyproxy.url)
    url = secret_url(receiver)

    post_json(url, {"event": "snapshot_done"}, timeout=10)

    [(path, headers, body)] = receiver.posts
    assert body == {"event": "snapshot_done"} and via_proxy(headers)
    assert url.split("/hooks/")[1] in path
    assert tinyproxy.carried(url, "POST") == [url]


def test_no_proxy_sends_a_delivery_straight(
    receiver: Receiver, tinyproxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", tinyproxy.url)
    monkeypatch.setenv("no_proxy", "127.0.0.1")

    post_json(secret_url(receiver), {"event": "snapshot_done"}, timeout=10)

    assert len(receiver.posts) == 1 and not via_proxy(receiver.posts[0][1])
    assert tinyproxy.requests() == []


def test_a_redirect_is_a_failed_delivery_and_is_not_followed(receiver: Receiver) -> None:
    elsewhere = Receiver()
    elsewhere.start()
    try:
        receiver.answer = "redirect"
        receiver.redirect_to = secret_url(elsewhere)
        url = secret_url(receiver)
        with pytest.raises(DeliveryFailed) as caught:
            post_json(url, {"event": "blocked"}, timeout=10)
        assert elsewhere.posts == []
    finally:
        elsewhere.stop()
    message = str(caught.value)
    assert "302" in message and "redirect" in message
    assert receiver.base_url in message
    assert "/hooks/" not in message and "token=" not in message


def test_a_huge_answer_is_not_read_whole(receiver: Receiver) -> None:
    receiver.answer = "huge"

    post_json(secret_url(receiver), {"event": "snapshot_done"}, timeout=10)

    assert receiver.done.wait(30)
    # The client read ANSWER_LIMIT bytes and hung up; what else left the server sat in socket buffers.
    assert ANSWER_LIMIT <= receiver.sent < 64 * 1024 * 1024 < HUGE


def test_a_failed_delivery_is_logged_and_stored_with_the_host_only(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    url = secret_url(receiver)
    repo, _ = store.add_repo(
        RepoSpec(name="acme/m", every=60, route=("local_copy",), options={"webhooks": [url]})
    )
    store.record_snapshot(repo.id, "a" * 40, [FileSpec("w.bin", 3, True, hashlib.sha256(b"abc").hexdigest())])
    transfer = store.claim("local_copy", "me", lease=60)
    assert transfer is not None
    store.defer(transfer.id, "me", state=BLOCKED, error="disk full", error_class="disk", hint="free space")
    receiver.answer = "error"

    with caplog.at_level(logging.DEBUG):
        assert Notifier(store, NotifyConfig(webhooks=(), timeout=5, retries=0)).deliver_due() == 0

    assert receiver.posts
    token_path = url.split("/hooks/")[1].split("?")[0]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"webhook {receiver.base_url}: giving up" in logged and "500" in logged
    assert token_path not in logged
    with store.read() as session:
        [row] = session.query(Notification).all()
        assert row.last_error and receiver.base_url in row.last_error and token_path not in row.last_error
    store.close()
