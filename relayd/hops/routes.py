"""Whether a route can work, from what its hops declare: each hop's input must be produced before it.

A route's first hop reads from its ``source`` (the Hub, a local folder); every later hop reads each file
from a kind of location (``consumes``: staging, the drive, the VM, …) that a hop before it leaves a
verified copy in (``produces``). A route that breaks this rule would poll and then block forever, so
``relayctl add`` refuses it, naming the hop that lacks its input and a route that works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relayd.hops.base import Hop

HopClasses = Mapping[str, "type[Hop]"]


@dataclass(frozen=True)
class Gap:
    """Where a route breaks: the hop at *position* has nothing to read."""

    position: int
    hop: str
    reason: str


def _kinds(kinds: frozenset[str]) -> str:
    return " or ".join(sorted(kinds))


def find_gap(route: Sequence[str], classes: HopClasses) -> Gap | None:
    """Return the first hop of *route* whose input no earlier hop produces (nor a source, for the
    first), with why in words; None when every hop has its input."""
    produced: dict[str, str] = {}  # kind → the hop before that produces it
    for position, name in enumerate(route):
        hop = classes[name]
        if position == 0 and hop.source is None:
            makers = _producers(hop.consumes, classes)
            return Gap(
                position,
                name,
                f"{name} cannot come first: it reads each file from {_kinds(hop.consumes)}, which only a hop "
                f"before it fills ({makers})",
            )
        if position > 0 and not hop.consumes:
            return Gap(
                position, name, f"{name} reads from its source only, so it must be the route's first hop"
            )
        if position > 0 and not hop.consumes & produced.keys():
            before = ", ".join(route[:position])
            return Gap(
                position,
                name,
                f"{name} reads each file from {_kinds(hop.consumes)}, and no hop before it ({before}) puts "
                f"it there ({_producers(hop.consumes, classes)})",
            )
        if hop.produces:
            produced.setdefault(hop.produces, name)
    return None


def _producers(kinds: frozenset[str], classes: HopClasses) -> str:
    found = [
        f"{kind} is filled by {name}"
        for kind in sorted(kinds)
        for name, hop in classes.items()
        if hop.produces == kind
    ]
    return "; ".join(found) or "no installed hop fills it"


def working_routes(classes: HopClasses) -> list[tuple[str, ...]]:
    """Return every route of distinct installed hops that works, shortest first."""
    found: list[tuple[str, ...]] = []

    def extend(route: tuple[str, ...], have: frozenset[str]) -> None:
        found.append(route)
        for name, hop in sorted(classes.items()):
            if name not in route and hop.consumes & have:
                extend((*route, name), have | {hop.produces} if hop.produces else have)

    for name, hop in sorted(classes.items()):
        if hop.source is not None:
            extend((name,), frozenset({hop.produces}) if hop.produces else frozenset())
    return sorted(found, key=len)


def suggest(route: Sequence[str], classes: HopClasses) -> tuple[str, ...] | None:
    """Return the shortest working route with every hop of *route*, keeping their order where it can;
    None when there is none."""
    wanted = list(route)

    def inversions(candidate: tuple[str, ...]) -> int:
        order = [candidate.index(name) for name in wanted]
        return sum(1 for i, a in enumerate(order) for b in order[i + 1 :] if a > b)

    fits = [candidate for candidate in working_routes(classes) if set(wanted) <= set(candidate)]
    if not fits:
        return None
    return min(fits, key=lambda candidate: (len(candidate), inversions(candidate), candidate))
