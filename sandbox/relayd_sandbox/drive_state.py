"""The machinery every part of the fake drive shares: one lock, the settings, the fake's clock (which a
test may move forward), the secret its URLs are signed with, the counters, and the failures injected
for the next requests on a path.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from relayd_sandbox.drive_records import DriveSettings, Injection


class DriveState:
    """The shared machinery of one fake drive service; the layers above it (accounts, files, uploads,
    downloads) keep their own state and answer their own API calls."""

    def __init__(self, root: Path, settings: DriveSettings, clock: Callable[[], float]) -> None:
        self.root = root
        self.settings = settings
        self._clock = clock
        self._skew = 0.0
        self.lock = threading.RLock()
        self.data_base_url = ""
        self._secret = secrets.token_bytes(32)
        for sub in ("blobs", "uploads", "tmp", "corrupt"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._url_seq = 0  # one sequence for the part-upload and download URLs, so floors expire them
        self._injections: list[Injection] = []
        self._counts: Counter[str] = Counter()

    def now(self) -> float:
        """Return the fake's time: the injected clock plus any advance_clock()."""
        return self._clock() + self._skew

    def advance_clock(self, seconds: float) -> None:
        """Move the fake's time forward, so tokens, URLs and upload ids expire without sleeping."""
        with self.lock:
            self._skew += seconds

    def _sign(self, kind: str, params: dict[str, str]) -> str:
        message = kind + "\n" + "&".join(f"{k}={params[k]}" for k in sorted(params))
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()

    def inject(self, injection: Injection) -> None:
        with self.lock:
            self._injections.append(injection)

    def take_injection(self, path: str) -> Injection | None:
        """Return (and use up one count of) the first injection that matches *path*, if any."""
        with self.lock:
            for injection in self._injections:
                if injection.matches(path):
                    injection.remaining -= 1
                    if injection.remaining <= 0:
                        self._injections.remove(injection)
                    return injection
        return None

    def count(self, name: str, amount: int = 1) -> None:
        with self.lock:
            self._counts[name] += amount
