"""`relayd demo --sites 2` stops at once, with status's words, when work waits for a hop no daemon serves,
rather than waiting until its timeout."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

import relayd.demo_sites
from relayd.catalogue.queries.workers import Unserved
from relayd.demo import DemoOptions, run_route_demo
from relayd.demo_sites import SitesDemo, unserved_stop


def test_the_wait_stops_once_every_daemon_beats_and_a_hop_is_unserved() -> None:
    hint = 'no daemon serves vm_pull: start one with daemon.hops = ["vm_pull"] (docs/sites.md)'
    assert unserved_stop([Unserved("vm_pull")], beating={10, 20}, started=[10, 20]) == hint
    both = unserved_stop([Unserved("vm_pull"), Unserved("lfs_push")], beating={10, 20, 30}, started=[10, 20])
    assert (
        both
        == f'{hint}; no daemon serves lfs_push: start one with daemon.hops = ["lfs_push"] (docs/sites.md)'
    )
    assert unserved_stop([], beating={10, 20}, started=[10, 20]) is None, "everything is served"
    # A daemon the demo started (or started again after the kill) has not beaten yet: it may serve the hop.
    assert unserved_stop([Unserved("vm_pull")], beating={10}, started=[10, 20]) is None
    assert unserved_stop([Unserved("vm_pull")], beating={10, 99}, started=[10, 20]) is None


def test_the_two_site_demo_stops_at_once_on_a_hop_no_site_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vm site serves no vm_pull: the files reach the drive, then the demo stops with the fix."""
    monkeypatch.setitem(relayd.demo_sites.SITES, "vm", ["lfs_push", "ms_upload"])
    options = DemoOptions(
        shards=1,
        shard_size=256 * 1024,
        workdir=tmp_path,
        keep=False,
        timeout=300,
        change=False,
        local=False,
        ssh=False,
        sites=2,
    )
    said: list[str] = []
    started = time.monotonic()
    with pytest.raises(RuntimeError) as stopped:
        run_route_demo(options, tmp_path, said.append, SitesDemo(options, tmp_path))
    assert str(stopped.value) == (
        'no daemon serves vm_pull: start one with daemon.hops = ["vm_pull"] (docs/sites.md)'
    )
    assert time.monotonic() - started < 60, "it waited for its timeout"
    assert any(
        re.match(r"sites: abroad serves download \+ pan_upload, vm serves lfs_push", line) for line in said
    )
