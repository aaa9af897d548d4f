"""What hops moved and what they did not have to: measured throughput, and bytes avoided.

``measured_rates`` times the pieces each hop recorded durable lately (`relayctl drive status`, `relayctl
doctor`); ``bytes_avoided`` counts, by hop and reason (``rules.avoided_reason``), the files hops are done
with without moving their payload (the web page, metrics); ``repo_avoided`` the same for one repo, per
snapshot and in total, with the files a snapshot shares with an earlier one as ``unchanged``
(`relayctl status REPO`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import pairwise
from typing import NamedTuple

from relayd.catalogue.queries.reader import Reader, as_utc, from_json, in_list
from relayd.catalogue.rules import UNCHANGED, avoided_reason
from relayd.catalogue.states import RUNNING


class HopRate(NamedTuple):
    """What a hop moved lately: the bytes of the pieces that landed within the window, the time they
    took (gaps longer than the idle gap, and the first piece of each run, are left out), and the summed
    current rate of its running transfers (bytes/s)."""

    hop: str
    bytes: int
    seconds: float
    pieces: int
    running: float

    @property
    def rate(self) -> float | None:
        """Bytes per second over the measured time; None when too little landed to tell."""
        return self.bytes / self.seconds if self.seconds > 0 else None


def measured_rates(
    reader: Reader,
    hops: Sequence[str],
    *,
    window: float = 3600.0,
    idle_gap: float = 300.0,
    now: datetime | None = None,
) -> list[HopRate]:
    """Return each hop's measured throughput over the last *window* seconds, from the times its pieces
    were recorded durable. Transfers that moved nothing (rapid upload, a copy taken from staging) are
    left out: their pieces are all recorded at one moment."""
    moment = now or datetime.now(UTC)
    rates = []
    for hop in hops:
        recent: list[int] = []
        running = 0.0
        for tid, state, rate, handles, updated in reader.rows(
            "SELECT id, state, rate, handles, updated_at FROM transfers WHERE hop = :hop", {"hop": hop}
        ):
            when = as_utc(updated)
            if state == RUNNING:
                running += float(rate or 0.0)
            moved = not any((from_json(handles) or {}).get(key) for key in ("rapid", "via"))
            if when is not None and (moment - when).total_seconds() <= window and moved:
                recent.append(int(tid))
        landed: list[tuple[datetime, int]] = []
        for start in range(0, len(recent), 500):
            names, params = in_list("t", recent[start : start + 500])
            for length, done_at in reader.rows(
                f"SELECT length, done_at FROM pieces WHERE transfer_id IN ({names}) "  # noqa: S608
                "AND done_at IS NOT NULL",
                params,
            ):
                when = as_utc(done_at)
                if when is not None and (moment - when).total_seconds() <= window:
                    landed.append((when, int(length)))
        landed.sort()
        moved_bytes, seconds = 0, 0.0
        for (before, _), (when, length) in pairwise(landed):
            gap = (when - before).total_seconds()
            if gap <= idle_gap:
                moved_bytes += length
                seconds += gap
        rates.append(HopRate(hop, moved_bytes, seconds, len(landed), running))
    return rates


class Avoided(NamedTuple):
    """Payload a hop did not move, for one reason: how many files, how many bytes."""

    hop: str
    reason: str
    files: int
    bytes: int


def bytes_avoided(reader: Reader) -> list[Avoided]:
    """Return, by hop and reason, the files that hops are done with without moving their payload, and
    their bytes, over the done transfers the catalogue holds (a removed repo's are gone with it).

    Only handles that hold a ``true`` are parsed: the markers are booleans, and most handles have none.
    """
    totals: dict[tuple[str, str], list[int]] = {}
    for hop, handles, size in reader.rows(
        "SELECT t.hop, t.handles, f.size FROM transfers t JOIN files f ON f.id = t.file_id "
        "WHERE t.state = 'done' AND CAST(t.handles AS TEXT) LIKE '%true%'"
    ):
        parsed = from_json(handles)
        reason = avoided_reason(parsed) if isinstance(parsed, dict) else None
        if reason is not None:
            total = totals.setdefault((hop, reason), [0, 0])
            total[0] += 1
            total[1] += int(size or 0)
    return [Avoided(hop, reason, files, size) for (hop, reason), (files, size) in sorted(totals.items())]


class RepoAvoided(NamedTuple):
    """What a repo's hops did not move, by hop and reason: for its current snapshot, and summed over
    every snapshot it recorded."""

    snapshot: list[Avoided]
    total: list[Avoided]

    @staticmethod
    def bytes_of(items: Sequence[Avoided]) -> int:
        return sum(item.bytes for item in items)


def repo_avoided(reader: Reader, repo_id: int, route: Sequence[str], snapshot_id: int | None) -> RepoAvoided:
    """Return the payload the repo's hops did not move, per snapshot (*snapshot_id*'s) and in total, by
    hop and reason: a file new in a snapshot counts what its done transfers record (``avoided_reason``:
    the destination had it, rapid upload, staged already …); a file an earlier snapshot already had
    counts as ``unchanged`` on every hop of the route (nothing moved for it again)."""
    snapshots: dict[int, list[tuple[int, int]]] = {}
    for sid, file_id, size in reader.rows(
        "SELECT s.id, sf.file_id, f.size FROM snapshots s JOIN snapshot_files sf ON sf.snapshot_id = s.id "
        "JOIN files f ON f.id = sf.file_id WHERE s.repo_id = :repo_id ORDER BY s.id",
        {"repo_id": repo_id},
    ):
        snapshots.setdefault(sid, []).append((file_id, int(size or 0)))
    reasons: dict[int, list[tuple[str, str]]] = {}
    for file_id, hop, handles in reader.rows(
        "SELECT t.file_id, t.hop, t.handles FROM transfers t WHERE t.repo_id = :repo_id AND "
        "t.state = 'done' AND CAST(t.handles AS TEXT) LIKE '%true%'",
        {"repo_id": repo_id},
    ):
        parsed = from_json(handles)
        reason = avoided_reason(parsed) if isinstance(parsed, dict) else None
        if reason is not None:
            reasons.setdefault(file_id, []).append((hop, reason))
    seen: set[int] = set()
    total: dict[tuple[str, str], list[int]] = {}
    current: dict[tuple[str, str], list[int]] = {}
    for sid, files in snapshots.items():
        for file_id, size in files:
            pairs = [(hop, UNCHANGED) for hop in route] if file_id in seen else reasons.get(file_id, [])
            for pair in pairs:
                for totals in (total, current) if sid == snapshot_id else (total,):
                    entry = totals.setdefault(pair, [0, 0])
                    entry[0] += 1
                    entry[1] += size
        seen.update(file_id for file_id, _ in files)

    def listed(totals: dict[tuple[str, str], list[int]]) -> list[Avoided]:
        return [Avoided(hop, reason, n, size) for (hop, reason), (n, size) in sorted(totals.items())]

    return RepoAvoided(listed(current), listed(total))
