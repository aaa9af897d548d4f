"""Webhook notifications: a thread that delivers the catalogue's outbox as JSON POSTs, with retries.

Events (``snapshot_done``; ``blocked``: a transfer or poll needs a person; ``stuck``: one has kept
failing for longer than retry.surface_after while it retries, sent once per streak) are queued in the
same transaction that records them, so a crash loses none; a receiver that is down gets them later,
with exponential backoff, until ``notify.retries`` attempts have failed.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from datetime import timedelta

from relayd import __version__
from relayd.catalogue.store import Store, utcnow
from relayd.config import NotifyConfig

log = logging.getLogger(__name__)


def post_json(url: str, body: dict[str, object], timeout: float) -> None:
    """POST *body* as JSON to *url*; raise OSError (URLError, HTTPError) on failure."""
    # The URL comes from the operator's config (notify.webhooks or relayctl add --webhook).
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": f"relayd/{__version__}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


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
            except Exception:
                log.exception("delivering notifications failed; trying again shortly")

    def deliver_due(self) -> int:
        """Try every due notification once; return how many were delivered."""
        delivered = 0
        for notification in self.store.due_notifications():
            url = str(notification.payload.get("url", ""))
            body = notification.payload.get("body", {})
            try:
                post_json(url, body, self.config.timeout)
            except (OSError, ValueError) as exc:
                attempts = notification.attempts + 1
                if attempts > self.config.retries:
                    log.error("webhook %s: giving up after %d attempts: %s", url, attempts, exc)
                    self.store.notification_result(notification.id, delivered=False, error=str(exc))
                else:
                    delay = min(3600.0, 2.0**attempts)
                    log.warning("webhook %s failed (%s); retrying in %.0fs", url, exc, delay)
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
