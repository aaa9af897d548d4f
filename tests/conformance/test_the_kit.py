"""The conformance kit fails hops that break the contract: each broken variant of local_copy
(tests/support/brokenhops.py) fails the one test that checks what it breaks, saying so."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayd_sandbox.conformance import Bench, HopConformance, HopHarness
from tests.support import brokenhops

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize(
    ("harness", "test", "says"),
    [
        (
            brokenhops.CopiesEverythingAgainHarness,
            "test_kill_9_at_a_piece_resumes_without_sending_done_pieces_again",
            "pieces durable before the resume were sent again",
        ),
        (brokenhops.TrustsItsCopyHarness, "test_a_copy_damaged_every_time_is_never_done", "state='done'"),
        (
            brokenhops.RetriesWhenCancelledHarness,
            "test_cancelled_leaves_the_transfer_pending",
            "state='waiting'",
        ),
        (brokenhops.TupleHandlesHarness, "test_handles_round_trip_through_the_catalogue", "'span': [0,"),
    ],
    ids=["resends-durable-pieces", "trusts-its-copy", "retries-when-cancelled", "tuple-handles"],
)
def test_the_kit_fails_a_hop_that_breaks_the_contract(
    harness: type[HopHarness], test: str, says: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    bench = Bench(tmp_path / "bench", harness, request.getfixturevalue)
    try:
        bench.harness.seed(bench.files)
        check = getattr(HopConformance(), test)
        with pytest.raises(AssertionError) as failed:
            check(bench, "first") if "kill" in test else check(bench)
        assert says in str(failed.value)
    finally:
        bench.close()
