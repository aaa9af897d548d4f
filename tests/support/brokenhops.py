"""Hops that break the contract in one way each, with conformance harnesses that run them in place of
local_copy: the conformance kit must fail every one (tests/conformance/test_the_kit.py)."""

from __future__ import annotations

from collections.abc import Sequence

from relayd.errors import Cancelled, ErrorClass, Retryable
from relayd.hops.base import Job, Outcome, PieceSpec
from relayd.hops.local_copy import LocalCopyHop
from relayd_sandbox.conformance.hops import LocalCopyHarness


class CopiesEverythingAgain(LocalCopyHop):
    """Moves every piece each time, the durable ones too."""

    def move(self, job: Job, missing: Sequence[PieceSpec]) -> None:
        super().move(job, job.pieces)


class TrustsItsCopy(LocalCopyHop):
    """Calls its copy verified without measuring it."""

    def verify(self, job: Job) -> Outcome:
        partial = self._partial(job)
        if partial.exists():
            partial.replace(self._target(job))
        return Outcome(handles={"path": str(self._target(job))})


class RetriesWhenCancelled(LocalCopyHop):
    """Turns the daemon's cancel into a retry (a broad ``except`` would do the same)."""

    def move(self, job: Job, missing: Sequence[PieceSpec]) -> None:
        try:
            super().move(job, missing)
        except Cancelled as exc:
            raise Retryable(str(exc), error_class=ErrorClass.NETWORK) from exc


class TupleHandles(LocalCopyHop):
    """Leaves handles that JSON turns into something else (a tuple comes back a list)."""

    def verify(self, job: Job) -> Outcome:
        outcome = super().verify(job)
        return Outcome(handles={**outcome.handles, "span": (0, job.file_or_fail.size)}, sha256=outcome.sha256)


class CopiesEverythingAgainHarness(LocalCopyHarness):
    hop_class = f"{__name__}:CopiesEverythingAgain"


class TrustsItsCopyHarness(LocalCopyHarness):
    hop_class = f"{__name__}:TrustsItsCopy"


class RetriesWhenCancelledHarness(LocalCopyHarness):
    hop_class = f"{__name__}:RetriesWhenCancelled"


class TupleHandlesHarness(LocalCopyHarness):
    hop_class = f"{__name__}:TupleHandles"
