"""The catalogue's pure rules (relayd.catalogue.rules), exercised directly: no database, no store."""

from __future__ import annotations

import pytest

from relayd.catalogue.rules import (
    DEFAULT_STUCK_HINT,
    DRIVE,
    DRIVE_COPY_REUSED,
    RAPID_UPLOAD,
    SERVER_HAD_IT,
    STAGED_ALREADY,
    STUCK_HINTS,
    HopRules,
    avoided_reason,
    drive_copy_handles,
    next_step,
    skipped,
    stuck_hint,
)
from relayd.errors import ErrorClass

ROUTE = ("fetch", "to_drive", "from_drive", "publish")
# Hops named for what they do here, not the built-in ones: the rules know hops only by what they declare.
RULES = HopRules(
    reads_staging=frozenset({"to_drive", "publish"}),
    writes_staging=frozenset({"fetch"}),
    finishes_snapshot=frozenset({"publish"}),
    staging_unneeded_after={"publish": frozenset({"from_drive"})},
    produces={"fetch": "staging", "to_drive": DRIVE, "from_drive": "vm"},
    consumes={"to_drive": frozenset({"staging"}), "from_drive": frozenset({DRIVE})},
)


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({}, 0),
        ({"fetch": "done"}, 1),
        ({"fetch": "done", "to_drive": "done", "from_drive": "done"}, 3),
        ({"fetch": "running"}, None),
        ({"fetch": "done", "to_drive": "blocked"}, None),
        ({"fetch": "done", "to_drive": "waiting"}, None),
        (dict.fromkeys(ROUTE, "done"), None),
    ],
)
def test_the_next_transfer_is_the_first_hop_not_done_unless_one_is_in_flight(
    states: dict[str, str], expected: int | None
) -> None:
    assert next_step(ROUTE, states) == expected


def test_a_drive_copy_stands_for_the_first_two_hops_only_when_the_third_reads_the_drive() -> None:
    assert RULES.reuses_drive_copy(ROUTE)
    assert not RULES.reuses_drive_copy(ROUTE[:2])  # nothing reads the drive after it
    assert not RULES.reuses_drive_copy(("fetch", "publish", "from_drive"))  # the second is no drive
    assert not RULES.reuses_drive_copy(("to_drive", "fetch", "from_drive"))  # the first fills no staging
    assert not RULES.reuses_drive_copy(("fetch", "to_drive", "publish"))  # the third reads staging
    assert RULES.drive_hops() == ["to_drive"]


def test_a_reused_drive_copy_records_why_and_the_copy_s_drive_handles() -> None:
    copy = {"file_id": "f1", "drive_id": "d1", "path": "/m/a", "content_hash": "H", "upload_id": "u"}
    reason, handles = drive_copy_handles(ROUTE, "ab" * 32, copy)
    assert reason == f"reused drive copy of {'ab' * 32}"
    assert handles == {
        "fetch": {"reused": True, "reason": reason},
        "to_drive": {
            "file_id": "f1",
            "drive_id": "d1",
            "path": "/m/a",
            "content_hash": "H",
            "reused": True,
            "reason": reason,
        },
    }
    # The reason is what the bytes-avoided rule reads it back by.
    assert avoided_reason(handles["to_drive"]) == DRIVE_COPY_REUSED


def test_the_staged_copy_is_needed_until_every_hop_that_reads_it_is_done() -> None:
    route = ("fetch", "to_drive", "publish")
    assert RULES.needs_staged_copy(route, {})
    assert RULES.needs_staged_copy(route, {"fetch": "done"})
    assert RULES.needs_staged_copy(route, {"fetch": "done", "to_drive": "done", "publish": "waiting"})
    assert not RULES.needs_staged_copy(route, dict.fromkeys(route, "done"))


def test_a_reader_after_a_hop_that_makes_staging_unneeded_does_not_keep_it() -> None:
    states = {"fetch": "done", "to_drive": "done", "from_drive": "pending"}
    # publish reads staging, but not when from_drive comes before it: only fetch and to_drive count.
    assert not RULES.needs_staged_copy(ROUTE, states)
    assert RULES.needs_staged_copy(("fetch", "to_drive", "publish"), states)


def test_a_route_ending_in_staging_keeps_the_staged_copy() -> None:
    assert RULES.keeps_staged_copy(("fetch",))
    assert not RULES.keeps_staged_copy(ROUTE)
    assert not RULES.keeps_staged_copy(())


def test_only_a_last_hop_that_finishes_snapshots_commits_one() -> None:
    assert RULES.snapshot_finisher(ROUTE) == "publish"
    assert RULES.snapshot_finisher(ROUTE[:3]) is None
    assert RULES.snapshot_finisher(()) is None


@pytest.mark.parametrize(
    ("state", "handles", "expected"),
    [
        ("done", {"rapid": True}, True),
        ("done", {"skipped": True}, True),
        ("done", '{"reused": true, "reason": "x"}', True),
        ("done", {"rapid": "true"}, False),  # the markers are booleans
        ("done", {"upload_id": "u"}, False),
        ("done", "not json", False),
        ("done", None, False),
        ("waiting", {"rapid": True}, False),  # only a done transfer skipped its move
    ],
)
def test_a_done_transfer_skipped_its_move_when_its_handles_say_so(
    state: str, handles: object, expected: bool
) -> None:
    assert skipped(state, handles) is expected


@pytest.mark.parametrize(
    ("handles", "expected"),
    [
        ({"rapid": True}, RAPID_UPLOAD),
        ({"skipped": True}, SERVER_HAD_IT),
        ({"reused": True, "reason": "reused drive copy of abc"}, DRIVE_COPY_REUSED),
        ({"reused": True, "reason": "staged for models/x"}, STAGED_ALREADY),
        ({"reused": True}, STAGED_ALREADY),
        ({"file_id": "f"}, None),
    ],
)
def test_why_a_done_transfer_moved_no_payload(handles: dict[str, object], expected: str | None) -> None:
    assert avoided_reason(handles) == expected


def test_a_stuck_hint_names_what_to_check_by_error_class() -> None:
    assert stuck_hint("network") == STUCK_HINTS[ErrorClass.NETWORK]
    assert stuck_hint(ErrorClass.INTERNAL) == STUCK_HINTS[ErrorClass.INTERNAL]
    assert "journalctl" in stuck_hint(ErrorClass.INTERNAL)
    assert stuck_hint(None) == DEFAULT_STUCK_HINT
    assert stuck_hint("no-such-class") == DEFAULT_STUCK_HINT
