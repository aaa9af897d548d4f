"""Prometheus metrics (text exposition format), served on a loopback port when ``metrics.listen`` is set.

Counts come from the catalogue at scrape time, so they survive restarts and include every worker
sharing it: bytes moved per hop, transfers by state, retries, current errors by class, snapshots by
state, the staging budget and the drive token's expiry.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

from sqlalchemy import func, select

from relayd.catalogue.schema import Snapshot, Transfer
from relayd.catalogue.store import Store

log = logging.getLogger(__name__)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _line(name: str, value: float, **labels: str) -> str:
    if labels:
        inner = ",".join(f'{key}="{_escape(str(val))}"' for key, val in sorted(labels.items()))
        return f"{name}{{{inner}}} {value}"
    return f"{name} {value}"


def _family(name: str, kind: str, help_text: str, lines: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *lines]


def render(store: Store) -> str:
    """Return every metric as Prometheus text."""
    with store.read() as session:
        moved = session.execute(
            select(Transfer.hop, func.sum(Transfer.bytes_moved)).group_by(Transfer.hop)
        ).all()
        by_state = session.execute(
            select(Transfer.hop, Transfer.state, func.count()).group_by(Transfer.hop, Transfer.state)
        ).all()
        retries = session.execute(
            select(Transfer.hop, func.sum(func.max(Transfer.attempts - 1, 0))).group_by(Transfer.hop)
            if store.engine.dialect.name == "sqlite"
            else select(Transfer.hop, func.sum(func.greatest(Transfer.attempts - 1, 0))).group_by(
                Transfer.hop
            )
        ).all()
        errors = session.execute(
            select(Transfer.hop, Transfer.error_class, func.count())
            .where(Transfer.error_class.is_not(None), Transfer.state != "done")
            .group_by(Transfer.hop, Transfer.error_class)
        ).all()
        snapshots = session.execute(select(Snapshot.state, func.count()).group_by(Snapshot.state)).all()
    facts = store.service_state()
    out: list[str] = []
    out += _family(
        "relayd_hop_bytes_moved_total",
        "counter",
        "Payload bytes moved by each hop, re-sends included.",
        (_line("relayd_hop_bytes_moved_total", float(total or 0), hop=hop) for hop, total in moved),
    )
    out += _family(
        "relayd_transfers",
        "gauge",
        "Transfers by hop and state.",
        (_line("relayd_transfers", float(count), hop=hop, state=state) for hop, state, count in by_state),
    )
    out += _family(
        "relayd_transfer_retries_total",
        "counter",
        "Attempts beyond the first, by hop.",
        (_line("relayd_transfer_retries_total", float(total or 0), hop=hop) for hop, total in retries),
    )
    out += _family(
        "relayd_transfer_errors",
        "gauge",
        "Unfinished transfers whose last attempt failed, by hop and error class.",
        (_line("relayd_transfer_errors", float(n), hop=hop, error_class=cls or "") for hop, cls, n in errors),
    )
    out += _family(
        "relayd_snapshots",
        "gauge",
        "Snapshots by state.",
        (_line("relayd_snapshots", float(count), state=state) for state, count in snapshots),
    )
    staging = facts.get("staging", ({}, None))[0]
    if staging:
        out += _family(
            "relayd_staging_bytes",
            "gauge",
            "Staging disk: bytes held, bytes free, and the limits.",
            (
                _line("relayd_staging_bytes", float(staging.get(key) or 0), kind=key)
                for key in ("used", "free", "max_bytes", "min_free")
            ),
        )
    token = facts.get("drive.token", ({}, None))[0]
    expires = token.get("expires_at") if token else None
    if expires:
        out += _family(
            "relayd_drive_token_expiry_timestamp_seconds",
            "gauge",
            "When the drive's access token expires (Unix time).",
            [
                _line(
                    "relayd_drive_token_expiry_timestamp_seconds", datetime.fromisoformat(expires).timestamp()
                )
            ],
        )
    out += _family("relayd_up", "gauge", "1 while the daemon serves metrics.", [_line("relayd_up", 1)])
    return "\n".join(out) + "\n"


class MetricsServer:
    """Serves GET /metrics on *listen* ("host:port"); a non-loopback address is refused."""

    def __init__(self, store: Store, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        if not ipaddress.ip_address("127.0.0.1" if host == "localhost" else host).is_loopback:
            raise ValueError(f"metrics.listen must be a loopback address, not {host}")
        store_ref = store

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                try:
                    body = render(store_ref).encode()
                except Exception:
                    log.exception("rendering metrics failed")
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
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
