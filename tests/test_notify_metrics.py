"""Webhook notifications (outbox, delivery, retries) and the Prometheus metrics endpoint."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from relayd.catalogue import migrate
from relayd.catalogue.schema import BLOCKED, Notification
from relayd.catalogue.store import FileSpec, RepoSpec, Store, utcnow
from relayd.config import NotifyConfig
from relayd.metrics import Metrics, MetricsServer
from relayd.notify import Notifier
from relayd_sandbox._http import free_port


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


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) → value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.render()[0].decode())
        for sample in family.samples
    }


def moved(metrics: Metrics, hop: str) -> float:
    return samples(metrics)[("relayd_hop_bytes_moved_total", (("hop", hop),))]


def test_metrics_gauges_describe_the_catalogue(store: Store) -> None:
    blocked_transfer(store, None)
    store.publish("drive.token", {"expires_at": "2030-01-01T00:00:00+00:00"})
    text = Metrics(store).render()[0].decode()
    assert 'relayd_transfers{hop="local_copy",state="blocked"} 1.0' in text
    assert 'relayd_transfer_errors{error_class="auth",hop="local_copy"} 1.0' in text
    assert "relayd_drive_token_expiry_timestamp_seconds 1.893456e+09" in text
    assert "# TYPE relayd_hop_bytes_moved_total counter" in text


def test_bytes_hops_did_not_move_are_a_gauge_by_hop_and_reason(store: Store) -> None:
    transfer = claimed(store, "org/held", b"x" * 4096)
    store.complete(transfer, "me", {"oid": "x", "skipped": True})
    got = samples(Metrics(store))
    assert got[("relayd_bytes_avoided", (("hop", "local_copy"), ("reason", "server_had_it")))] == 4096


def claimed(store: Store, name: str, content: bytes) -> int:
    repo, _ = store.add_repo(RepoSpec(name=name, every=60, route=("local_copy",)))
    store.record_snapshot(
        repo.id, "c" * 40, [FileSpec("w.bin", len(content), True, hashlib.sha256(content).hexdigest())]
    )
    transfer = store.claim("local_copy", "me", lease=60)
    assert transfer is not None
    return transfer.id


def test_bytes_moved_count_as_they_move_and_never_fall(store: Store) -> None:
    metrics = Metrics(store)
    metrics.watch(store, ["local_copy", "download"])
    assert moved(metrics, "download") == 0.0  # every loaded hop is there from the start
    first = claimed(store, "acme/one", b"first")
    store.progress(first, moved=1000, rate=None)
    store.progress(first, moved=24, rate=None)
    assert moved(metrics, "local_copy") == 1024.0
    assert store.remove_repo("acme/one")  # its transfers and their bytes_moved are gone from the catalogue
    assert moved(metrics, "local_copy") == 1024.0
    second = claimed(store, "acme/two", b"second")
    store.progress(second, moved=500, rate=None)
    assert moved(metrics, "local_copy") == 1524.0


def test_retries_and_blocks_count_as_they_happen(store: Store) -> None:
    metrics = Metrics(store)
    metrics.watch(store, ["local_copy"])
    transfer = claimed(store, "acme/one", b"x")
    store.defer(
        transfer, "me", state="waiting", error="reset", error_class="network", next_attempt_at=utcnow()
    )
    again = store.claim("local_copy", "me", lease=60)
    assert again is not None
    store.defer(again.id, "me", state="blocked", error="refused", error_class="auth", hint="set a token")
    store.defer(again.id, "someone else", state="waiting", error="late", error_class="network")  # not ours
    found = samples(metrics)
    assert (
        found[("relayd_transfer_retries_total", (("error_class", "network"), ("hop", "local_copy")))] == 1.0
    )
    assert found[("relayd_transfer_blocks_total", (("error_class", "auth"), ("hop", "local_copy")))] == 1.0


def test_process_metrics_are_exported(store: Store) -> None:
    names = {name for name, _ in samples(Metrics(store))}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"} <= names
    assert "process_start_time_seconds" in names


def test_the_metrics_endpoint_serves_on_loopback_only(store: Store) -> None:
    metrics = Metrics(store)
    server = MetricsServer(metrics, "127.0.0.1:0")
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert "relayd_up 1.0" in response.read().decode()
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=5)
        assert caught.value.code == 404
    finally:
        server.stop()
    with pytest.raises(ValueError, match="loopback"):
        MetricsServer(metrics, "0.0.0.0:9108")


# -- the Grafana dashboard ----------------------------------------------------------------------------

DASHBOARD = Path(__file__).resolve().parent.parent / "contrib" / "grafana-relayd.json"
_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Return the metric names a PromQL expression selects (not its functions, keywords or labels)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # label matchers, ranges
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end() :].lstrip()
        if rest.startswith("(") or match.group().lower() in _PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def test_promql_metric_names() -> None:
    assert promql_metric_names(
        'sum by (hop) (rate(relayd_x_total{job=~"$job",a="b(c)"}[5m])) or vector(0)'
    ) == {"relayd_x_total"}
    assert promql_metric_names("time() - process_start_time_seconds") == {"process_start_time_seconds"}


def test_the_grafana_dashboard_uses_only_series_relayd_exports(store: Store) -> None:
    metrics = Metrics(store)
    metrics.watch(store, ["local_copy"])
    blocked_transfer(store, None)  # a block counted, and the catalogue's gauges
    metrics.deferred("local_copy", "waiting", "network")  # a retry counted
    store.publish("drive.token", {"expires_at": "2030-01-01T00:00:00+00:00"})
    store.publish("staging", {"used": 1, "free": 2, "max_bytes": 3, "min_free": 4})
    exported = {name for name, _ in samples(metrics)}
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert panels and all(panel["targets"] for panel in panels)
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    exprs += [
        re.sub(r"label_values\(([^,]+),.*", r"\1", variable["definition"])
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    ]
    used: set[str] = set()
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, expr
        assert names <= exported, (expr, names - exported)
        used |= names
    # Every relayd family shows somewhere.
    families = {name for name in exported if name.startswith("relayd_") and not name.endswith("_created")}
    assert families <= used, families - used
