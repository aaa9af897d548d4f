"""The throughput the page plots: bytes per hop in time buckets, bounded, fed by the store (clock given)."""

from __future__ import annotations

from datetime import UTC, datetime

from relayd.web.throughput import WINDOWS, Throughput
from tests.support.webbox import WebBox


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


START = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def window(document: dict, name: str) -> dict:
    return next(item for item in document["windows"] if item["name"] == name)


def test_bytes_land_in_buckets_as_rates_and_the_bucket_in_progress_is_left_out() -> None:
    clock = Clock(START)
    throughput = Throughput(clock)
    throughput.add("download", 10_000)  # bucket 12:00:00-12:00:10
    clock.now += 3
    throughput.add("download", 20_000)
    throughput.add("pan_upload", 5_000)
    clock.now += 10  # 12:00:13: the first bucket is complete, the second in progress
    throughput.add("download", 999)
    document = throughput.document()
    hour = window(document, "hour")
    assert hour["step_seconds"] == 10
    assert len(hour["hops"]["download"]) == 360
    assert hour["hops"]["download"][-1] == 3000.0  # 30,000 bytes over 10 s
    assert hour["hops"]["pan_upload"][-1] == 500.0
    assert hour["end"] == "2026-12-01T12:00:10Z"
    assert sum(hour["hops"]["download"][:-1]) == 0
    assert document["moved"] == {"download": 30_999, "pan_upload": 5_000}
    day = window(document, "day")
    assert day["step_seconds"] == 300 and len(day["hops"]["download"]) == 288
    assert sum(day["hops"]["download"]) == 0  # its 5-minute bucket is still in progress


def test_memory_stays_bounded_and_old_buckets_leave_the_window() -> None:
    clock = Clock(START)
    throughput = Throughput(clock)
    for _ in range(2000):  # 2000 buckets of 10 s: more than the hour and the day keep
        throughput.add("vm_pull", 1000)
        clock.now += 10
    for series, spec in zip(throughput._series, WINDOWS, strict=True):
        assert len(series.buckets) <= spec.buckets
    hour = window(throughput.document(), "hour")
    assert hour["hops"]["vm_pull"] == [100.0] * 360
    clock.now += 7200  # two quiet hours later the hour shows nothing
    assert sum(window(throughput.document(), "hour")["hops"]["vm_pull"]) == 0


def test_a_clock_stepped_back_adds_to_the_newest_bucket() -> None:
    clock = Clock(START + 100)
    throughput = Throughput(clock)
    throughput.add("download", 100)
    clock.now -= 50
    throughput.add("download", 100)
    assert throughput.document()["moved"]["download"] == 200
    assert len(throughput._series[0].buckets) == 1


def test_it_counts_what_the_store_counts_and_still_tells_the_metrics(box: WebBox) -> None:
    told: list[tuple[str, int]] = []
    box.store.on_moved = lambda hop, count: told.append((hop, count))
    throughput = Throughput()
    throughput.watch(box.store)
    box.add_repo("org/a", {"a.bin": 4096})
    transfer = box.claim("local_copy")
    box.store.progress(transfer, moved=1500, rate=1500.0)
    assert told == [("local_copy", 1500)]
    assert throughput.document()["moved"] == {"local_copy": 1500}
