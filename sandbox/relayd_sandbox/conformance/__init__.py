"""The conformance kit: one suite that every hop and every drive backend of relayd passes, against
the sandbox's real servers on 127.0.0.1 (in the manner of rclone's fstests, run over every backend).

What it checks, for each case (a hop, and the drive backend under it when the hop uses the drive):

* plan, move and verify are idempotent: two plans agree; a move made again after its records were
  lost leaves a copy that verifies; a second verify (a crash between verify and done) names the same
  copy and moves no payload byte;
* a SIGKILL at a piece (right after the first record of a durable piece, and right after the last
  one before verify) resumes without sending a durable piece again: by the catalogue's count of
  sends, and by the bytes the real server took in;
* ``Cancelled`` (a daemon draining: stop claiming, set the cancel event) leaves the transfer
  pending with its durable pieces, and the next run finishes it without sending them again;
* a copy damaged on its way to the destination is detected (an ``IntegrityMismatch``) and sent
  again; one damaged every time ends blocked (``integrity``) and is never done, nor left as the copy
  at the destination;
* handles round-trip: every handles dict a hop saves comes back unchanged from the catalogue, and so
  does its outcome's.

Use it from a test module::

    import pytest
    from relayd_sandbox.conformance import HopConformance, cases, open_bench

    @pytest.fixture(params=cases(["my_hop"]), ids=str)
    def bench(request, tmp_path):
        with open_bench(request.param, request.getfixturevalue, tmp_path / "bench") as opened:
            yield opened

    class TestMyHop(HopConformance):
        pass

and register the hop's harness (a ``HopHarness``; a drive backend's is a ``DriveHarness``) as
``relayd_sandbox.conformance.registry`` says. sandbox/README.md has the details.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relayd_sandbox.conformance.bench import Bench, Completion
    from relayd_sandbox.conformance.harness import REPO, DriveHarness, HopHarness
    from relayd_sandbox.conformance.registry import Case, cases
    from relayd_sandbox.conformance.suite import HopConformance, open_bench

# Imported on first use, so that the child process the suite kills (``child.py``) loads neither pytest
# nor the harnesses.
_EXPORTS = {
    "REPO": "harness",
    "Bench": "bench",
    "Case": "registry",
    "Completion": "bench",
    "DriveHarness": "harness",
    "HopConformance": "suite",
    "HopHarness": "harness",
    "cases": "registry",
    "open_bench": "suite",
}

__all__ = [
    "REPO",
    "Bench",
    "Case",
    "Completion",
    "DriveHarness",
    "HopConformance",
    "HopHarness",
    "cases",
    "open_bench",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
