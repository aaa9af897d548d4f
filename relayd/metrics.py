"""Prometheus metrics through prometheus-client, served on a loopback port when ``metrics.listen`` is set.

Two kinds of series, each with the semantics Prometheus expects of it:

* **Counters** count what this process did, as it happens: payload bytes each hop moved, transfers
  parked to retry or blocked. They start at 0 when relayd starts and only ever rise while it runs
  (``rate()`` and ``increase()`` handle the reset of a restart); removing a repo does not take its
  bytes back. Several relayd processes sharing a PostgreSQL catalogue each count their own: sum them.
* **Gauges** describe the catalogue as it is at scrape time, for every process sharing it: transfers
  by hop and state, unfinished transfers by error class, snapshots by state, the payload hops did not
  have to move by hop and reason (the destination had it, rapid upload, staged already), the staging
  budget and the drive token's expiry.

The library's ProcessCollector adds the process's CPU, memory, open files and start time.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

from prometheus_client import (
    CollectorRegistry,
    Counter,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from relayd.catalogue.queries import EngineReader, bytes_avoided
from relayd.catalogue.schema import Snapshot, Transfer
from relayd.catalogue.store import Store

log = logging.getLogger(__name__)


class CatalogueCollector(Collector):
    """The gauges read from the catalogue at each scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        store = self.store
        with store.read() as session:
            by_state = session.execute(
                select(Transfer.hop, Transfer.state, func.count()).group_by(Transfer.hop, Transfer.state)
            ).all()
            errors = session.execute(
                select(Transfer.hop, Transfer.error_class, func.count())
                .where(Transfer.error_class.is_not(None), Transfer.state != "done")
                .group_by(Transfer.hop, Transfer.error_class)
            ).all()
            snapshots = session.execute(select(Snapshot.state, func.count()).group_by(Snapshot.state)).all()
        facts = store.service_state()
        transfers = GaugeMetricFamily(
            "relayd_transfers", "Transfers by hop and state.", labels=["hop", "state"]
        )
        for hop, state, count in by_state:
            transfers.add_metric([hop, state], count)
        yield transfers
        failing = GaugeMetricFamily(
            "relayd_transfer_errors",
            "Unfinished transfers whose last attempt failed, by hop and error class.",
            labels=["hop", "error_class"],
        )
        for hop, error_class, count in errors:
            failing.add_metric([hop, error_class or ""], count)
        yield failing
        by_snapshot = GaugeMetricFamily("relayd_snapshots", "Snapshots by state.", labels=["state"])
        for state, count in snapshots:
            by_snapshot.add_metric([state], count)
        yield by_snapshot
        avoided = GaugeMetricFamily(
            "relayd_bytes_avoided",
            "Payload bytes hops are done with without moving them, by hop and reason.",
            labels=["hop", "reason"],
        )
        for item in bytes_avoided(EngineReader(store.engine)):
            avoided.add_metric([item.hop, item.reason], item.bytes)
        yield avoided
        staging = facts.get("staging", ({}, None))[0]
        if staging:
            budget = GaugeMetricFamily(
                "relayd_staging_bytes",
                "Staging disk: bytes held, bytes free, and the limits.",
                labels=["kind"],
            )
            for kind in ("used", "free", "max_bytes", "min_free"):
                budget.add_metric([kind], float(staging.get(kind) or 0))
            yield budget
        token = facts.get("drive.token", ({}, None))[0]
        expires = token.get("expires_at") if token else None
        if expires:
            yield GaugeMetricFamily(
                "relayd_drive_token_expiry_timestamp_seconds",
                "When the drive's access token expires (Unix time).",
                value=datetime.fromisoformat(expires).timestamp(),
            )
        yield GaugeMetricFamily("relayd_up", "1 while the daemon serves metrics.", value=1)


class Metrics:
    """Every series relayd exports, in a registry of its own: the counters the store feeds as work is
    recorded (see ``watch``), the catalogue's gauges and the process metrics."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.bytes_moved = Counter(
            "relayd_hop_bytes_moved",
            "Payload bytes moved by each hop since relayd started, re-sends included.",
            ["hop"],
            registry=self.registry,
        )
        self.retries = Counter(
            "relayd_transfer_retries",
            "Failed attempts parked to run again (waiting), by hop and error class, since relayd started.",
            ["hop", "error_class"],
            registry=self.registry,
        )
        self.blocks = Counter(
            "relayd_transfer_blocks",
            "Failed attempts parked for a person (blocked), by hop and error class, since relayd started.",
            ["hop", "error_class"],
            registry=self.registry,
        )
        self.registry.register(CatalogueCollector(store))
        ProcessCollector(registry=self.registry)

    def watch(self, store: Store, hops: Iterable[str]) -> None:
        """Count what *store* records from now on; show each of *hops* at 0 until it moves a byte."""
        for hop in hops:
            self.bytes_moved.labels(hop)
        store.on_moved = self.moved
        store.on_deferred = self.deferred

    def moved(self, hop: str, count: int) -> None:
        if count > 0:
            self.bytes_moved.labels(hop).inc(count)

    def deferred(self, hop: str, state: str, error_class: str) -> None:
        counter = self.blocks if state == "blocked" else self.retries
        counter.labels(hop, error_class).inc()

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """Return every series and its content type: the format a scraper's *accept* header asks for
        (OpenMetrics or Prometheus text, as the library negotiates it), else Prometheus text 0.0.4."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class MetricsServer:
    """Serves GET /metrics on *listen* ("host:port"); a non-loopback address is refused."""

    def __init__(self, metrics: Metrics, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        if not ipaddress.ip_address("127.0.0.1" if host == "localhost" else host).is_loopback:
            raise ValueError(f"metrics.listen must be a loopback address, not {host}")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                try:
                    body, content_type = metrics.render(self.headers.get("Accept", ""))
                except Exception:
                    log.exception("rendering metrics failed")
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics request: %s", format % args)

        self.server = ThreadingHTTPServer((host, int(port)), Handler)
        self.server.daemon_threads = True
        self._thread = Thread(target=self.server.serve_forever, name="relayd-metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self.server.server_address[0], self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
