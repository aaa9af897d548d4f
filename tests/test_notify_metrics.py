"""Webhook notifications (outbox, delivery, retries) and the Prometheus metrics endpoint."""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import update

from relayd.catalogue import migrate
from relayd.catalogue.schema import BLOCKED, Notification
from relayd.catalogue.store import FileSpec, RepoSpec, Store, utcnow
from relayd.config import NotifyConfig
from relayd.metrics import MetricsServer, render
from relayd.notify import Notifier
from relayd.sandbox._http import free_port


class Receiver:
    """A loopback webhook receiver that records JSON bodies; it can be down."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bodies: list[dict[str, object]] = []
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box = Receiver(free_port())
    yield box
    box.down()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    return store


def blocked_transfer(store: Store, webhook: str | None) -> None:
    options = {"webhooks": [webhook]} if webhook else {}
    repo, _ = store.add_repo(RepoSpec(name="acme/m", every=60, route=("local_copy",), options=options))
    store.record_snapshot(repo.id, "a" * 40, [FileSpec("w.bin", 3, True, hashlib.sha256(b"abc").hexdigest())])
    transfer = store.claim("local_copy", "me", lease=60)
    assert transfer is not None
    store.defer(
        transfer.id, "me", state=BLOCKED, error="token refused", error_class="auth", hint="set a new token"
    )


def test_a_blocked_transfer_is_delivered_to_the_repo_webhook(store: Store, receiver: Receiver) -> None:
    receiver.up()
    blocked_transfer(store, receiver.url)
    notifier = Notifier(store, NotifyConfig(webhooks=(), timeout=5, retries=3))
    assert notifier.deliver_due() == 1
    (body,) = receiver.bodies
    assert body["event"] == "blocked"
    assert body["repo"] == "acme/m"
    assert body["path"] == "w.bin"
    assert body["hint"] == "set a new token"
    assert notifier.deliver_due() == 0  # delivered once


def test_a_receiver_that_is_down_gets_the_notification_later(store: Store, receiver: Receiver) -> None:
    blocked_transfer(store, receiver.url)
    notifier = Notifier(store, NotifyConfig(webhooks=(), timeout=2, retries=3))
    assert notifier.deliver_due() == 0
    with store.read() as session:
        (pending,) = session.query(Notification).all()
    assert pending.attempts == 1 and pending.delivered_at is None and pending.last_error
    receiver.up()
    with store._write() as session:
        session.execute(update(Notification).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    assert notifier.deliver_due() == 1
    assert receiver.bodies[0]["event"] == "blocked"


def test_delivery_gives_up_after_the_configured_retries(store: Store, receiver: Receiver) -> None:
    blocked_transfer(store, receiver.url)
    notifier = Notifier(store, NotifyConfig(webhooks=(), timeout=1, retries=1))
    for _ in range(3):
        with store._write() as session:
            session.execute(update(Notification).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        notifier.deliver_due()
    with store.read() as session:
        (gave_up,) = session.query(Notification).all()
    assert gave_up.delivered_at is not None and gave_up.attempts == 2


def test_no_webhook_means_no_outbox_rows(store: Store) -> None:
    blocked_transfer(store, None)
    with store.read() as session:
        assert session.query(Notification).count() == 0


def test_global_webhooks_and_snapshot_done(store: Store, receiver: Receiver) -> None:
    receiver.up()
    store.webhooks = (receiver.url,)
    repo, _ = store.add_repo(RepoSpec(name="acme/m", every=60, route=("local_copy",)))
    store.record_snapshot(repo.id, "b" * 40, [FileSpec("w.bin", 3, True, hashlib.sha256(b"abc").hexdigest())])
    transfer = store.claim("local_copy", "me", lease=60)
    assert transfer is not None
    store.complete(transfer.id, "me", {"path": "/x"})
    Notifier(store, NotifyConfig(webhooks=(receiver.url,), timeout=5, retries=3)).deliver_due()
    (body,) = receiver.bodies
    assert body["event"] == "snapshot_done"
    assert body["commit"] == "b" * 40
    assert body["files"] == 1


def test_metrics_render_counts_from_the_catalogue(store: Store) -> None:
    blocked_transfer(store, None)
    store.publish("drive.token", {"expires_at": "2030-01-01T00:00:00+00:00"})
    text = render(store)
    assert 'relayd_transfers{hop="local_copy",state="blocked"} 1.0' in text
    assert 'relayd_transfer_errors{error_class="auth",hop="local_copy"} 1.0' in text
    assert "relayd_drive_token_expiry_timestamp_seconds 1893456000.0" in text
    assert "# TYPE relayd_hop_bytes_moved_total counter" in text


def test_the_metrics_endpoint_serves_on_loopback_only(store: Store) -> None:
    server = MetricsServer(store, "127.0.0.1:0")
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            assert response.status == 200
            assert "relayd_up 1" in response.read().decode()
    finally:
        server.stop()
    with pytest.raises(ValueError, match="loopback"):
        MetricsServer(store, "0.0.0.0:9108")
