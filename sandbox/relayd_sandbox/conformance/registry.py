"""Which harness runs which hop and drive backend, and the cases the suite runs.

Registering is one line: a built-in hop or backend adds its harness to ``HOP_HARNESSES`` or
``DRIVE_HARNESSES`` below; a third-party package declares it in its own pyproject.toml::

    [project.entry-points."relayd_sandbox.conformance.hops"]
    my_hop = "my_package.testing:MyHopHarness"

The cases come from relayd's own registries: every registered hop (``relayd.hops.hop_names``: the
built-in ones and the ``relayd.hops.v2`` entry points), once per drive backend
(``relayd.drive.BACKENDS``) when the hop uses the drive (``"drive"`` in its ``services``). A hop or
backend without a harness is a case all the same, and it fails saying how to register one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

HOP_GROUP = "relayd_sandbox.conformance.hops"
DRIVE_GROUP = "relayd_sandbox.conformance.drives"

HOP_HARNESSES: dict[str, str] = {
    "local_copy": "relayd_sandbox.conformance.hops:LocalCopyHarness",
    "download": "relayd_sandbox.conformance.hops:DownloadHarness",
    "pan_upload": "relayd_sandbox.conformance.drive_hops:PanUploadHarness",
    "vm_pull": "relayd_sandbox.conformance.drive_hops:VmPullHarness",
    "lfs_push": "relayd_sandbox.conformance.hops:LfsPushHarness",
    "ms_upload": "relayd_sandbox.conformance.hops:MsUploadHarness",
}

DRIVE_HARNESSES: dict[str, str] = {
    "aligo": "relayd_sandbox.conformance.drives:AligoDriveHarness",
    "open": "relayd_sandbox.conformance.drives:OpenDriveHarness",
}


@cache
def _plugins(group: str) -> dict[str, str]:
    from importlib.metadata import entry_points

    return {entry.name: entry.value for entry in entry_points(group=group)}


def hop_harness(hop: str) -> str | None:
    """Return the ``"module:Class"`` of *hop*'s harness, None when none is registered."""
    return HOP_HARNESSES.get(hop) or _plugins(HOP_GROUP).get(hop)


def drive_harness(backend: str) -> str | None:
    """Return the ``"module:Class"`` of the drive *backend*'s harness, None when none is registered."""
    return DRIVE_HARNESSES.get(backend) or _plugins(DRIVE_GROUP).get(backend)


@dataclass(frozen=True)
class Case:
    """One run of the suite: a hop, and the drive backend under it when it uses the drive."""

    hop: str
    backend: str | None = None

    def __str__(self) -> str:
        return f"{self.hop}[{self.backend}]" if self.backend else self.hop


def cases(hops: list[str] | None = None) -> list[Case]:
    """Return the cases for *hops* (default: every registered hop)."""
    from relayd.drive import BACKENDS
    from relayd.hops import hop_names, load_hop_class

    found: list[Case] = []
    for hop in hops if hops is not None else hop_names():
        if "drive" in load_hop_class(hop).services:
            found += [Case(hop, backend) for backend in BACKENDS]
        else:
            found.append(Case(hop))
    return found
