"""What each hop moved over the last hour and the last day, for the page's plot.

The store reports payload bytes as it counts them (``Store.on_moved``: about once a second per running
transfer, and when a piece is recorded). They are added to fixed time buckets, 10 s wide for the hour
and 5 min wide for the day, in ring buffers: memory stays bounded whatever runs, and nothing is done
while nothing moves. The figures are this process's, since it started; they are not in the catalogue
(several daemons sharing one catalogue each plot their own).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relayd.catalogue.store import Store

FORMAT = 1


@dataclass(frozen=True)
class Window:
    """A span of time the plot shows: *buckets* buckets of *step* seconds each."""

    name: str
    step: int
    buckets: int


WINDOWS = (Window("hour", 10, 360), Window("day", 300, 288))


class _Series:
    """The bytes each hop moved in each bucket of one window; the oldest bucket falls off the end."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.buckets: deque[tuple[int, dict[str, int]]] = deque(maxlen=window.buckets)

    def add(self, moment: float, hop: str, count: int) -> None:
        index = int(moment // self.window.step)
        if not self.buckets or index > self.buckets[-1][0]:
            self.buckets.append((index, {}))
        # A clock stepped back adds to the newest bucket rather than rewriting the past.
        counts = self.buckets[-1][1]
        counts[hop] = counts.get(hop, 0) + count

    def rates(self, moment: float, hops: Sequence[str]) -> tuple[int, dict[str, list[float]]]:
        """Return the first bucket's index and each hop's rate (bytes/s) in every complete bucket up to
        *moment*, oldest first (buckets nothing moved in are 0)."""
        step, count = self.window.step, self.window.buckets
        last = int(moment // step) - 1  # the bucket in progress is left out: it would read low
        first = last - count + 1
        rates = {hop: [0.0] * count for hop in hops}
        for index, counts in self.buckets:
            if first <= index <= last:
                for hop, moved in counts.items():
                    rates[hop][index - first] = round(moved / step, 1)
        return first, rates


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Throughput:
    """Bytes moved per hop over time, in memory; thread-safe (workers add, the web server reads)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._series = [_Series(window) for window in WINDOWS]
        self._totals: dict[str, int] = {}
        self.started_at = clock()

    def watch(self, store: Store) -> None:
        """Count the bytes *store* counts from now on, and still tell whoever it told before (metrics)."""
        forward = store.on_moved

        def moved(hop: str, count: int) -> None:
            self.add(hop, count)
            if forward is not None:
                forward(hop, count)

        store.on_moved = moved

    def add(self, hop: str, count: int) -> None:
        """Count *count* payload bytes moved by *hop* now."""
        if count <= 0:
            return
        moment = self._clock()
        with self._lock:
            self._totals[hop] = self._totals.get(hop, 0) + count
            for series in self._series:
                series.add(moment, hop, count)

    def document(self) -> dict[str, Any]:
        """Return the throughput document of the web API (docs/web.md): per window, the start of its
        first bucket, the bucket width and each hop's rate in every bucket; and the bytes each hop moved
        since relayd started."""
        moment = self._clock()
        with self._lock:
            hops = sorted(self._totals)
            windows = []
            for series in self._series:
                first, rates = series.rates(moment, hops)
                window = series.window
                windows.append(
                    {
                        "name": window.name,
                        "step_seconds": window.step,
                        "start": _iso(first * window.step),
                        "end": _iso((first + window.buckets) * window.step),
                        "hops": rates,
                    }
                )
            totals = dict(self._totals)
        return {
            "format": FORMAT,
            "kind": "throughput",
            "generated_at": _iso(moment),
            "since": _iso(self.started_at),
            "moved": totals,
            "windows": windows,
        }
