"""Start-up builds the clients of the hops some route uses, and only those: a download-only run never
imports the drive's client (aligo), while a route through the drive still reports a broken drive at
start, before any transfer of it runs (issue 19)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace
from typing import cast

from relayd.catalogue.schema import DONE
from relayd.catalogue.store import RepoSpec
from relayd.config import Config
from relayd.hops.base import Hop
from relayd.sites import prepare_used
from relayd_sandbox.hub import FakeHub, Generated
from tests.support.hubrelay import HubRelay, sha256_of

WEIGHTS = "model.safetensors"
# `relayd run --once` as the command line runs it, saying at exit whether aligo was imported; with
# "block" as its second argument, importing aligo fails as if it were not installed.
PROBE = """
import atexit, sys
class NoAligo:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "aligo":
            raise ModuleNotFoundError("No module named 'aligo'", name="aligo")
if sys.argv[2:] == ["block"]:
    sys.meta_path.insert(0, NoAligo())
atexit.register(lambda: print("aligo imported:", sys.modules.get("aligo") is not None, file=sys.stderr))
from relayd.daemon import main
sys.argv = ["relayd", "run", "--once", "-c", sys.argv[1]]
main()
"""


def run_once(relay: HubRelay, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(relay.config_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_a_download_only_run_downloads_without_importing_the_drive_client(
    relay: HubRelay, hub: FakeHub
) -> None:
    hub.create_repo("alice/small", files={WEIGHTS: Generated(3 * 1024 * 1024, seed=3)})
    relay.add_repo("alice/small", include=(WEIGHTS,))

    result = run_once(relay)

    (transfer,) = relay.transfers()
    assert transfer.state == DONE, transfer.last_error
    sha256 = hub.file("alice/small", WEIGHTS).sha256
    assert sha256_of(relay.staged(sha256)) == sha256
    assert "aligo imported: False" in result.stderr
    assert "drive" not in result.stderr.replace("aligo imported", "")


def test_a_route_through_the_drive_builds_it_at_start_and_reports_a_broken_one(
    relay: HubRelay, hub: FakeHub
) -> None:
    hub.create_repo("alice/small", files={WEIGHTS: Generated(1024, seed=4)})
    relay.store.add_repo(RepoSpec(name="alice/small", every=3600, route=("download", "pan_upload")))
    relay.store.set_paused("alice/small", True)  # nothing of it runs: whatever is reported, start-up did

    working = run_once(relay)
    assert "aligo imported: True" in working.stderr
    assert "not ready" not in working.stderr

    broken = run_once(relay, "block")
    assert "WARNING" in broken.stderr and "the drive is not ready yet" in broken.stderr
    assert "aligo" in broken.stderr.split("the drive is not ready yet", 1)[1].splitlines()[0]
    assert relay.transfers() == []


class Counted:
    """A stand-in hop that counts its prepare() calls."""

    def __init__(self) -> None:
        self.prepared = 0

    def prepare(self) -> None:
        self.prepared += 1


def test_each_used_hop_is_prepared_once_and_unrouted_hops_never() -> None:
    hops = {name: Counted() for name in ("download", "pan_upload", "vm_pull")}
    every = cast(Config, SimpleNamespace(daemon=SimpleNamespace(hops=None)))
    served = cast("dict[str, Hop]", hops)

    prepare_used(every, served, [("download",), ("download", "pan_upload")])
    prepare_used(every, served, [("download", "pan_upload"), ("local_copy",)])  # a later reconcile

    assert {name: hop.prepared for name, hop in hops.items()} == {
        "download": 1,
        "pan_upload": 1,
        "vm_pull": 0,
    }

    site = cast(Config, SimpleNamespace(daemon=SimpleNamespace(hops=("vm_pull",))))
    prepare_used(site, served, [("download",)])  # daemon.hops names what this site uses, routes or not
    assert hops["vm_pull"].prepared == 1
