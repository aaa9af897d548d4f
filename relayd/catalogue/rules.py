"""The catalogue's pure "what comes next" rules: decisions that need no database.

Given what the hops declare (``HopRules``), a route and the states of a file's transfers, these say
which hop's transfer comes next, whether a verified drive copy can stand for the route's first hops
(and what the reusing file records), whether a staged copy is still needed, which hop (if any) commits
a finished snapshot, whether a done transfer moved nothing (and why), and what a person should check
when failures keep coming. The store (the catalogue's writer) and the read-only queries apply them;
they are here, apart from SQL, so each can be tested directly (tests/catalogue/test_rules.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relayd.catalogue.states import DONE
from relayd.errors import ErrorClass

#: The kind of location (``Hop.produces``) whose verified copies later files of the same content reuse.
DRIVE = "drive"
#: The handles of a drive copy that a file reusing it gets.
DRIVE_HANDLES = ("file_id", "drive_id", "path", "content_hash")
#: How the reason recorded by a file that reused a drive copy begins.
REUSED_DRIVE_COPY = "reused drive copy of"


@dataclass(frozen=True)
class HopRules:
    """What the store must know about hops, from what they declare (``relayd.assembly.hop_rules``):
    which fill and which read the staged copy, which finish a snapshot, and the kinds of location each
    reads and leaves its copy in."""

    reads_staging: frozenset[str] = frozenset()
    finishes_snapshot: frozenset[str] = frozenset()
    # hop → hops that, when earlier in the route, mean it does not read the staged copy there.
    staging_unneeded_after: Mapping[str, frozenset[str]] = field(default_factory=dict)
    writes_staging: frozenset[str] = frozenset()
    produces: Mapping[str, str] = field(default_factory=dict)
    consumes: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def reuses_drive_copy(self, route: Sequence[str]) -> bool:
        """Return whether a verified drive copy of a file's content can stand for *route*'s first two
        hops: they fill staging and then the drive, and the third reads the drive."""
        return (
            len(route) > 2
            and route[0] in self.writes_staging
            and self.produces.get(route[1]) == DRIVE
            and DRIVE in self.consumes.get(route[2], frozenset())
        )

    def drive_hops(self) -> list[str]:
        """Return the hops whose copies are on the drive (those a later file may reuse)."""
        return [hop for hop, kind in self.produces.items() if kind == DRIVE]

    def keeps_staged_copy(self, route: Sequence[str]) -> bool:
        """Return whether *route* ends in staging (a mirror route: the staged copy is the destination)."""
        return bool(route) and route[-1] in self.writes_staging

    def needs_staged_copy(self, route: Sequence[str], states: Mapping[str, str]) -> bool:
        """Return whether a hop of *route* not done yet (by *states*, hop → its transfer's state) will
        still fill or read the file's staged copy. A hop that reads staging does not when one of its
        ``staging_unneeded_after`` hops comes before it in the route."""
        readers = self.reads_staging | self.writes_staging
        for step, hop in enumerate(route):
            if self.staging_unneeded_after.get(hop, frozenset()).intersection(route[:step]):
                continue
            if hop in readers and states.get(hop) != DONE:
                return True
        return False

    def reads_staged_copy(self, route: Sequence[str], step: int) -> bool:
        """Return whether the hop at *step* of *route* reads each file's staged copy there (it reads
        staging, and none of its ``staging_unneeded_after`` hops comes before it)."""
        hop = route[step]
        unneeded = self.staging_unneeded_after.get(hop, frozenset())
        return hop in self.reads_staging and not unneeded.intersection(route[:step])

    def snapshot_finisher(self, route: Sequence[str]) -> str | None:
        """Return the hop that commits a whole snapshot once every file has reached the end of *route*
        (its last hop, when it finishes snapshots), or None: then reaching the end finishes it."""
        return route[-1] if route and route[-1] in self.finishes_snapshot else None


def next_step(route: Sequence[str], states: Mapping[str, str]) -> int | None:
    """Return the position in *route* of the file's next transfer to create: the first hop whose
    transfer is not done (*states*: hop → its transfer's state). None when that hop's transfer exists
    (still in flight: a file has at most one transfer that is not done) or every hop is done."""
    for step, hop in enumerate(route):
        state = states.get(hop)
        if state == DONE:
            continue
        return step if state is None else None
    return None


def drive_copy_handles(
    route: Sequence[str], sha256: str, copy: Mapping[str, Any]
) -> tuple[str, dict[str, dict[str, Any]]]:
    """Return the reason and the handles (by hop) a file records when the verified drive *copy* of its
    content (*sha256*), made for another file, stands for *route*'s first two hops (to staging, to the
    drive): both are marked reused, and the drive hop gets the copy's drive handles."""
    to_staging, to_drive = route[:2]
    reason = f"{REUSED_DRIVE_COPY} {sha256}"
    reused = {"reused": True, "reason": reason}
    drive = {key: copy.get(key) for key in DRIVE_HANDLES}
    return reason, {to_staging: reused, to_drive: {**drive, **reused}}


# -- what a done transfer did not move ---------------------------------------------------------------

#: The handle markers (``true``) of a done transfer that moved nothing.
SKIP_MARKERS = ("skipped", "rapid", "reused")
#: Why a hop moved no payload for a file it is done with, as its handles record it.
RAPID_UPLOAD = "rapid_upload"  # the drive had the content (秒传): pan_upload's ``"rapid": true``
SERVER_HAD_IT = "server_had_it"  # the LFS server already stored the object: lfs_push's ``"skipped": true``
STAGED_ALREADY = "staged_already"  # download found the content staged for another file
DRIVE_COPY_REUSED = "drive_copy_reused"  # a verified drive copy of the content made for another file
DESTINATION_HAD_IT = "destination_had_it"  # the route's last hop held it when the snapshot was recorded
UNCHANGED = "unchanged"  # an earlier snapshot had the same path and content: nothing to move again
#: What a hop before the route's end records for a file the end already held ("ask the end first").
ASKED_END = {"skipped": True, "asked_end": True, "reason": "the destination had it"}


def skipped(state: str, handles: Any) -> bool:
    """Return True when a done transfer's handles (a mapping or its JSON text) say nothing had to be
    moved."""
    if state != DONE or not handles:
        return False
    if isinstance(handles, str):
        try:
            handles = json.loads(handles)
        except ValueError:
            return False
    return isinstance(handles, dict) and any(handles.get(key) is True for key in SKIP_MARKERS)


def avoided_reason(handles: Mapping[str, Any]) -> str | None:
    """Return why a done transfer with these handles moved no payload, or None if it moved it."""
    if handles.get("asked_end") is True:
        return DESTINATION_HAD_IT
    if handles.get("rapid") is True:
        return RAPID_UPLOAD
    if handles.get("reused") is True:
        reason = str(handles.get("reason", ""))
        return DRIVE_COPY_REUSED if reason.startswith(REUSED_DRIVE_COPY) else STAGED_ALREADY
    if handles.get("skipped") is True:
        return SERVER_HAD_IT
    return None


# -- what to check when failures keep coming ---------------------------------------------------------

#: What to check when a transfer or a poll keeps failing, by error class (shown under "stuck" and sent
#: with the "stuck" notification). Classes a hop raises only with NeedsPerson block instead, and come
#: with their own hint.
STUCK_HINTS = {
    ErrorClass.NETWORK: (
        "this host's network, DNS and proxy, and the service's endpoint in the config (`relayctl "
        "doctor` tries every service)"
    ),
    ErrorClass.TIMEOUT: (
        "the network path to the service, and its status page: it answers too slowly or not at "
        "all (`relayctl doctor`)"
    ),
    ErrorClass.STALL: ("the link and any proxy in between: connections keep stalling mid-transfer"),
    ErrorClass.SERVER: (
        "the service's status page: it keeps answering with server errors; relayd carries on by "
        "itself once it recovers"
    ),
    ErrorClass.RATE_LIMIT: (
        "the hop's connections and concurrency (lower them) or the token's rate limit: the "
        "service keeps rate-limiting relayd"
    ),
    ErrorClass.INTEGRITY: (
        "the link (a proxy that rewrites bodies?) and the destination's disk: copies keep "
        "arriving with the wrong hash"
    ),
    ErrorClass.IO: (
        "the disk and the permissions of the path in the error: a local file operation keeps failing"
    ),
    ErrorClass.INTERNAL: (
        "the traceback in the daemon log (`journalctl -u relayd`), and report it: an unexpected "
        "error inside relayd"
    ),
}
DEFAULT_STUCK_HINT = (
    "the last error and the daemon log (`journalctl -u relayd`); `relayctl doctor` checks every service"
)


def stuck_hint(error_class: str | None) -> str:
    """Return what to check when failures of *error_class* keep coming."""
    return STUCK_HINTS.get(ErrorClass.parse(error_class), DEFAULT_STUCK_HINT)
