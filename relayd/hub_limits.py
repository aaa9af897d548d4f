"""The Hub's rate limits as relayd sees them: what every answer says is left, and pacing by it.

The Hub counts each caller's requests (per token, or per IP address without one) in three buckets,
``api``, ``resolvers`` and ``pages``, over 5-minute fixed windows, and every answer of its origin says
what is left of the bucket it was counted in: ``RateLimit: "resolvers";r=2987;t=242`` (remaining, seconds
until the window ends) and ``RateLimit-Policy: "fixed window";"resolvers";q=3000;w=300`` (quota, window).
A ``RateBudget`` keeps the latest figures per bucket for one endpoint and caller. Before a call, relayd
spends from it; a call that would eat into the last ``RESERVE`` of a bucket is deferred until the
window resets (a ``Retryable`` whose ``retry_after`` is the reset), so relayd waits instead of running
into a 429. The reserve leaves room for whatever else uses the same token or address (a person's own
``hf download``, ``relayctl doctor``).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from relayd.errors import ErrorClass, Retryable
from relayd.http_ranges import Origin, origin_of
from relayd.units import format_duration

#: The share of each bucket relayd leaves unused (at least one call).
RESERVE = 0.02
#: At this share left or below, ``relayctl doctor`` warns.
LOW = 0.1
# Two answers whose window ends differ by less than this belong to the same window (t is whole seconds).
_SAME_WINDOW = 2.0


@dataclass
class _Bucket:
    remaining: int
    quota: int | None
    window: int | None
    resets_at: float


@dataclass(frozen=True)
class BucketState:
    """What is left of one bucket: *remaining* of *quota* calls until the window ends in *resets_in* s."""

    name: str
    remaining: int
    quota: int | None
    window: int | None
    resets_in: float

    @property
    def low(self) -> bool:
        """Whether a tenth of the quota (at least one call) or less is left."""
        return self.quota is not None and self.remaining <= max(1, math.ceil(self.quota * LOW))


class RateBudget:
    """The latest rate-limit figures the Hub announced to one caller, per bucket. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def observe(
        self, bucket: str, remaining: int, reset_in: float, quota: int | None, window: int | None
    ) -> None:
        """Record what an answer said of *bucket*. Answers of one window may arrive out of order, so
        the lowest remaining count of a window wins; an answer that names another window's end
        replaces what was known."""
        now = self.clock()
        resets_at = now + reset_in
        with self._lock:
            known = self._buckets.get(bucket)
            if known is None or now >= known.resets_at or abs(resets_at - known.resets_at) > _SAME_WINDOW:
                self._buckets[bucket] = _Bucket(remaining, quota, window, resets_at)
                return
            known.remaining = min(known.remaining, remaining)
            known.quota = quota if quota is not None else known.quota
            known.window = window if window is not None else known.window

    def spend(self, bucket: str, calls: int = 1) -> None:
        """Count *calls* about to be made in *bucket*. Raise Retryable (``rate_limit``, retry after the
        window's reset) when they would leave less than the reserve; nothing is counted then."""
        with self._lock:
            known = self._buckets.get(bucket)
            now = self.clock()
            if known is None or now >= known.resets_at:
                return  # nothing known of this window yet: the answer will tell
            reserve = max(1, math.ceil((known.quota or 0) * RESERVE))
            if known.remaining - calls >= reserve:
                known.remaining -= calls
                return
            wait = known.resets_at - now
            left = f"{known.remaining} of {known.quota}" if known.quota is not None else f"{known.remaining}"
        raise Retryable(
            f"paced: the Hub's {bucket!r} rate limit is nearly used up ({left} calls left in this window); "
            f"waiting {format_duration(wait)} for it to reset instead of running into a 429",
            retry_after=math.ceil(wait) + 1,
            error_class=ErrorClass.RATE_LIMIT,
        )

    def state(self) -> list[BucketState]:
        """Return what is known of each bucket whose window has not ended, by name."""
        now = self.clock()
        with self._lock:
            return [
                BucketState(name, known.remaining, known.quota, known.window, known.resets_at - now)
                for name, known in sorted(self._buckets.items())
                if now < known.resets_at
            ]


def caller_key(authorization: str | None) -> str:
    """Return whom the Hub counts a request for: a digest of its ``Authorization`` header (the token
    itself is never kept), or ``anonymous``."""
    if not authorization:
        return "anonymous"
    return hashlib.sha256(authorization.encode()).hexdigest()[:16]


_BUDGETS: dict[tuple[Origin, str], RateBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def budget_for(url: str, authorization: str | None) -> RateBudget:
    """Return this process's budget for the caller *authorization* on the Hub that serves *url*."""
    key = (origin_of(url), caller_key(authorization))
    with _BUDGETS_LOCK:
        budget = _BUDGETS.get(key)
        if budget is None:
            budget = _BUDGETS[key] = RateBudget()
        return budget
