"""relayd's own run of the conformance kit (relayd_sandbox.conformance): every registered hop, and
every drive backend under the hops that use the drive, against the sandbox's servers on 127.0.0.1.
A hop or backend registered without a harness fails here, saying how to add one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd.drive import BACKENDS
from relayd.hops import DEFAULT_ROUTE, hop_names
from relayd_sandbox.conformance import Bench, Case, HopConformance, cases, open_bench

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=cases(), ids=str)
def bench(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bench]:
    case: Case = request.param
    with open_bench(case, request.getfixturevalue, tmp_path / "bench") as opened:
        yield opened


class TestEveryHop(HopConformance):
    """The kit's tests, for each case."""


def test_every_registered_hop_and_backend_is_a_case() -> None:
    found = {(case.hop, case.backend) for case in cases()}
    assert {hop for hop, _ in found} == set(hop_names()) >= set(DEFAULT_ROUTE)
    assert {backend for _, backend in found if backend} == set(BACKENDS)
    assert ("pan_upload", "aligo") in found and ("download", None) in found
