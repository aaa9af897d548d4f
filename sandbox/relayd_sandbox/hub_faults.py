"""Failure injection for the fake Hub: rules that make the next N matching requests misbehave.

Each rule names where it applies (``"api"``: Hub API routes, ``"resolve"``: ``/resolve`` and the
resolve-cache bytes, ``"cdn"``: the CDN origin), how many requests it hits (``times=None`` keeps it
until cancelled), and optionally a substring the (percent-decoded) request target must contain, such
as a file name or a sha256. Tests get the rule back to read ``hits`` or to ``cancel()`` / ``release()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

Where = Literal["api", "resolve", "cdn"]
_WHERE: frozenset[str] = frozenset({"api", "resolve", "cdn"})
#: How CloudFront refuses a signed URL: expired (or its signature is wrong), no Key-Pair-Id, an unknown one.
Refusal = Literal["expired", "missing-key", "unknown-key"]
REFUSALS: frozenset[str] = frozenset({"expired", "missing-key", "unknown-key"})


class FaultKind(Enum):
    """What a rule does to the request it hits."""

    RESET = "reset"  # close with a TCP RST: before the status line, or after `after` body bytes
    RATE_LIMIT = "rate_limit"  # 429: the Hub's (RateLimit headers, its message), or a bare one on the CDN
    SERVER_ERROR = "server_error"  # a 5xx status
    EXPIRE = "expire"  # the CDN refuses the signed URL as CloudFront does (403 and its XML), see `reason`
    RANGE_BOUND = "range_bound"  # a signed URL serves only the first range asked of it (403 after)
    STALE_RANGE = "stale_range"  # 416 to a ranged request, whatever the range
    IGNORE_RANGE = "ignore_range"  # 200 with the whole body to a ranged request
    TRUNCATE = "truncate"  # full Content-Length announced, `after` body bytes sent, then a clean close
    FLIP = "flip"  # one byte of the body inverted (same size, wrong content)
    STALL = "stall"  # headers (and `after` body bytes) sent, then nothing until released or `seconds`


@dataclass(eq=False)
class FaultRule:
    """One injected failure; thread-safe counters are kept by the owning ``Faults``."""

    kind: FaultKind
    where: frozenset[str]
    times: int | None
    match: str | None = None
    after: int | None = None
    status: int = 500
    at: int | None = None
    seconds: float | None = None
    reason: Refusal = "expired"
    reset_in: int = 1
    quota: int = 500
    window: int = 300
    hits: int = 0
    cancelled: bool = False
    _release: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def active(self) -> bool:
        return not self.cancelled and (self.times is None or self.hits < self.times)

    def cancel(self) -> None:
        """Stop the rule from hitting further requests, and release any stalled one."""
        self.cancelled = True
        self._release.set()

    def release(self) -> None:
        """Let requests stalled by this rule go on."""
        self._release.set()

    def wait_released(self) -> None:
        """Block a stalled request until release(), cancel() or `seconds` elapse."""
        self._release.wait(self.seconds)


class Faults:
    """The set of active fault rules of one fake server, consulted on every request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []

    # -- adding rules -------------------------------------------------------------------------------

    def reset(
        self,
        after: int | None = None,
        *,
        where: Where | Iterable[Where] = "cdn",
        times: int | None = 1,
        match: str | None = None,
    ) -> FaultRule:
        """Reset the connection (TCP RST) before any response when *after* is None, else after
        *after* body bytes."""
        return self._add(FaultRule(FaultKind.RESET, _places(where), times, match, after=after))

    def rate_limit(
        self,
        *,
        where: Where | Iterable[Where] = "api",
        times: int | None = 1,
        match: str | None = None,
        reset_in: int = 1,
        quota: int = 500,
        window: int = 300,
    ) -> FaultRule:
        """Answer 429: on the Hub with ``RateLimit: "<bucket>";r=0;t=<reset_in>``, the policy (*quota*,
        *window*), Retry-After and the Hub's message; on the CDN with Retry-After alone."""
        return self._add(
            FaultRule(
                FaultKind.RATE_LIMIT,
                _places(where),
                times,
                match,
                reset_in=reset_in,
                quota=quota,
                window=window,
            )
        )

    def server_error(
        self,
        status: int = 500,
        *,
        where: Where | Iterable[Where] = "api",
        times: int | None = 1,
        match: str | None = None,
    ) -> FaultRule:
        """Answer *status* (a 5xx) instead of serving the request."""
        return self._add(FaultRule(FaultKind.SERVER_ERROR, _places(where), times, match, status=status))

    def expire(
        self, *, reason: Refusal = "expired", times: int | None = 1, match: str | None = None
    ) -> FaultRule:
        """Make the CDN refuse the next signed URLs as CloudFront refuses one for *reason* (403 with
        its XML), whatever the URL says."""
        if reason not in REFUSALS:
            raise ValueError(f"reason must be among {sorted(REFUSALS)}, got {reason!r}")
        return self._add(FaultRule(FaultKind.EXPIRE, _places("cdn"), times, match, reason=reason))

    def range_bound(self, *, match: str | None = None) -> FaultRule:
        """Until cancelled, bind each signed URL to the first range it is used with (or to the range
        of the ``/resolve`` request that signed it): any other range, or none, gets 403
        "Auth failed: invalid range". ``hits`` counts the requests checked."""
        return self._add(FaultRule(FaultKind.RANGE_BOUND, _places(("cdn", "resolve")), None, match))

    def stale_range(
        self, *, where: Where | Iterable[Where] = "cdn", times: int | None = 1, match: str | None = None
    ) -> FaultRule:
        """Answer 416 (``Content-Range: bytes */<size>``) to the next ranged requests."""
        return self._add(FaultRule(FaultKind.STALE_RANGE, _places(where), times, match))

    def ignore_range(
        self, *, where: Where | Iterable[Where] = "cdn", times: int | None = 1, match: str | None = None
    ) -> FaultRule:
        """Answer the next ranged requests with 200 and the whole body."""
        return self._add(FaultRule(FaultKind.IGNORE_RANGE, _places(where), times, match))

    def truncate(
        self,
        after: int = 0,
        *,
        where: Where | Iterable[Where] = "cdn",
        times: int | None = 1,
        match: str | None = None,
    ) -> FaultRule:
        """Announce the full Content-Length, send *after* body bytes, then close the connection."""
        return self._add(FaultRule(FaultKind.TRUNCATE, _places(where), times, match, after=after))

    def flip_bytes(
        self,
        at: int | None = None,
        *,
        where: Where | Iterable[Where] = "cdn",
        times: int | None = 1,
        match: str | None = None,
    ) -> FaultRule:
        """Invert the byte at file offset *at* (default: the first byte served) in the next bodies
        that contain it; the size stays right, the content does not."""
        return self._add(FaultRule(FaultKind.FLIP, _places(where), times, match, at=at))

    def stall(
        self,
        seconds: float | None = None,
        *,
        after: int = 0,
        where: Where | Iterable[Where] = "cdn",
        times: int | None = 1,
        match: str | None = None,
    ) -> FaultRule:
        """Send headers and *after* body bytes, then nothing until ``release()`` or *seconds* pass;
        then the body goes on."""
        return self._add(
            FaultRule(FaultKind.STALL, _places(where), times, match, after=after, seconds=seconds)
        )

    # -- housekeeping -------------------------------------------------------------------------------

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def clear(self) -> None:
        """Cancel every rule and release every stalled request."""
        with self._lock:
            rules, self._rules = self._rules, []
        for rule in rules:
            rule.cancel()

    def release_stalls(self) -> None:
        for rule in self.rules():
            if rule.kind is FaultKind.STALL:
                rule.release()

    # -- used by the servers ------------------------------------------------------------------------

    def take(
        self,
        kind: FaultKind,
        where: str,
        target: str,
        accept: Callable[[FaultRule], bool] | None = None,
    ) -> FaultRule | None:
        """Return the first active rule of *kind* that matches this request, counting the hit."""
        with self._lock:
            for rule in self._rules:
                if (
                    rule.kind is kind
                    and rule.active
                    and where in rule.where
                    and (rule.match is None or rule.match in target)
                    and (accept is None or accept(rule))
                ):
                    rule.hits += 1
                    return rule
        return None

    def _add(self, rule: FaultRule) -> FaultRule:
        if rule.times is not None and rule.times < 1:
            raise ValueError("times must be positive, or None for 'until cancelled'")
        with self._lock:
            self._rules.append(rule)
        return rule


def _places(where: Where | Iterable[Where]) -> frozenset[str]:
    places = frozenset([where] if isinstance(where, str) else where)
    if not places or not places <= _WHERE:
        raise ValueError(f"where must be among {sorted(_WHERE)}, got {sorted(places)}")
    return places
