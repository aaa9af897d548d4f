"""The Hub's rate limits as the fake counts them: three buckets, fixed windows, one count per caller.

The Hub counts every request to its origin in one of three buckets (https://huggingface.co/docs/hub/rate-limits,
hub-docs PR #1958): ``api`` (``/api/…``), ``resolvers`` (every URL with a ``/resolve/`` segment, and the
``/api/resolve-cache/…`` URLs they redirect regular files to: the docs' "Resolve a file" endpoint) and
``pages`` (the web pages). Quotas hold per 5-minute fixed window, per IP address for anonymous callers
and per account otherwise. Every answer names its bucket and what is left of it in ``RateLimit`` and
``RateLimit-Policy`` (IETF draft 9). The docs do not say where a window starts; the fake starts one at
a caller's first request in a bucket (clients read ``t=`` either way).
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Bucket = Literal["api", "resolvers", "pages"]
Plan = Literal["anonymous", "free", "pro"]
WINDOW = 300

#: Requests per 5-minute window, as published in September 2025 (anonymous ones per IP address).
DEFAULT_QUOTAS: dict[Plan, dict[Bucket, int]] = {
    "anonymous": {"api": 500, "resolvers": 3000, "pages": 100},
    "free": {"api": 1000, "resolvers": 5000, "pages": 200},
    "pro": {"api": 2500, "resolvers": 12000, "pages": 400},
}


@dataclass(frozen=True)
class Count:
    """One request counted: whether it was within the quota, and what is left of its bucket."""

    bucket: Bucket
    allowed: bool
    remaining: int
    reset_in: int
    quota: int
    window: int

    def headers(self) -> dict[str, str]:
        """Return the ``RateLimit`` and ``RateLimit-Policy`` headers the Hub sends with every answer."""
        return {
            "RateLimit": f'"{self.bucket}";r={self.remaining};t={self.reset_in}',
            "RateLimit-Policy": f'"fixed window";"{self.bucket}";q={self.quota};w={self.window}',
        }


class RateLimiter:
    """Counts requests per (caller, bucket) in fixed windows. ``quotas[plan][bucket]`` and ``window``
    (seconds) may be changed at any time, e.g. to make a test run out after a few calls."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.quotas: dict[Plan, dict[Bucket, int]] = copy.deepcopy(DEFAULT_QUOTAS)
        self.window = WINDOW
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, Bucket], tuple[float, int]] = {}

    def count(self, caller: str, plan: Plan, bucket: Bucket) -> Count:
        """Count one request of *caller* in *bucket*; past the quota it is not allowed (a 429)."""
        quota = self.quotas[plan][bucket]
        now = self._clock()
        with self._lock:
            start, used = self._windows.get((caller, bucket), (now, 0))
            if now >= start + self.window:
                start, used = now, 0
            allowed = used < quota
            if allowed:
                used += 1
            self._windows[(caller, bucket)] = (start, used)
        reset_in = max(1, math.ceil(start + self.window - now))
        return Count(bucket, allowed, max(0, quota - used), reset_in, quota, self.window)

    def clear(self) -> None:
        """Forget every window (every caller starts afresh)."""
        with self._lock:
            self._windows.clear()
