"""Webhook notifications: a thread that delivers the catalogue's outbox as JSON POSTs, with retries.

Events (``snapshot_done``; ``blocked``: a transfer or poll needs a person; ``stuck``: one has kept
failing for longer than retry.surface_after while it retries, sent once per streak) are queued in the
same transaction that records them, so a crash loses none; a receiver that is down gets them later,
with exponential backoff, until ``notify.retries`` attempts have failed.

A webhook URL is a secret (chat services put the token in its path): it is registered with the log
scrubber, and messages and stored errors name only its host. Deliveries go through the environment's
proxy (``HTTPS_PROXY``, ``NO_PROXY``, …; relayd/vm/agent/proxy.py), never follow a redirect (a 3xx
is a failed delivery: the body is not sent on to wherever it points), and read at most
``ANSWER_LIMIT`` bytes of the receiver's answer.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
from datetime import timedelta
from urllib.parse import urlsplit

from relayd import __version__
from relayd.catalogue.store import Store, utcnow
from relayd.config import NotifyConfig
from relayd.logs import SCRUBBER, log_failure, url_host
from relayd.vm.agent.proxy import ProxyError, route_for

log = logging.getLogger(__name__)

#: Bytes of a receiver's answer read at most (relayd does not use it; a hostile one cannot grow memory).
ANSWER_LIMIT = 64 * 1024


class DeliveryFailed(OSError):
    """A webhook delivery failed; the message names the receiver's host only."""


def post_json(url: str, body: dict[str, object], timeout: float) -> None:
    """POST *body* as JSON to *url* (through the environment's proxy unless NO_PROXY names the host).

    Raise DeliveryFailed when the receiver cannot be reached or answers anything but 2xx, a redirect
    included; its message names the host, never the URL.
    """
    # The URL comes from the operator's config (notify.webhooks or relayctl add --webhook).
    where = url_host(url)
    try:
        route = route_for(url)
    except ProxyError as exc:
        raise DeliveryFailed(f"{where}: {exc}") from None
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = route.connection(timeout)
    try:
        connection.request(
            "POST",
            target,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "User-Agent": f"relayd/{__version__}"},
        )
        response = connection.getresponse()
        response.read(ANSWER_LIMIT)
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryFailed(f"{route.describe()}: {type(exc).__name__}: {exc}") from None
    finally:
        connection.close()
    status = response.status
    if 300 <= status < 400:
        raise DeliveryFailed(
            f"{where} answered {status} (a redirect, not followed: set the webhook to the URL it points to)"
        )
    if not 200 <= status < 300:
        raise DeliveryFailed(f"{where} answered {status} {response.reason}")


class Notifier:
    """Delivers due notifications about once a second until stopped."""

    def __init__(self, store: Store, config: NotifyConfig, *, interval: float = 1.0) -> None:
        self.store = store
        self.config = config
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="relayd-notify", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.config.timeout + 2)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.deliver_due()
            except Exception as exc:  # noqa: BLE001 - retried; log_failure logs it
                log_failure(log, "delivering notifications failed; trying again shortly", exc)

    def deliver_due(self) -> int:
        """Try every due notification once; return how many were delivered."""
        delivered = 0
        for notification in self.store.due_notifications():
            url = str(notification.payload.get("url", ""))
            body = notification.payload.get("body", {})
            SCRUBBER.add(url)
            try:
                post_json(url, body, self.config.timeout)
            except OSError as exc:
                attempts = notification.attempts + 1
                where = url_host(url)
                if attempts > self.config.retries:
                    log.error("webhook %s: giving up after %d attempts: %s", where, attempts, exc)
                    self.store.notification_result(notification.id, delivered=False, error=str(exc))
                else:
                    delay = min(3600.0, 2.0**attempts)
                    log.warning("webhook %s failed (%s); retrying in %.0fs", where, exc, delay)
                    self.store.notification_result(
                        notification.id,
                        delivered=False,
                        error=str(exc),
                        retry_at=utcnow() + timedelta(seconds=delay),
                    )
                continue
            self.store.notification_result(notification.id, delivered=True)
            delivered += 1
        return delivered
