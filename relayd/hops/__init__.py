"""The hop registry: built-in and third-party hops, all loaded from the ``relayd.hops.v2`` entry-point
group (the version is bumped when the contract in relayd.hops.base breaks, so stale plugins are never
loaded: v2 hands hops plain records and asks them for their checks). Hop classes are imported only
when they are needed: what the rest of relayd knows about a hop is what its class declares
(relayd.hops.base.Hop), never its name."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from functools import cache
from typing import TYPE_CHECKING

from relayd.errors import ConfigError, RelayError

if TYPE_CHECKING:
    from relayd.hops.base import Hop

ENTRY_POINT_GROUP = "relayd.hops.v2"

#: The route of a repo added without one: Hugging Face → staging → the drive → the VM → ModelScope.
DEFAULT_ROUTE = ("download", "pan_upload", "vm_pull", "lfs_push")

# The built-in hops, so that a checkout without installed metadata still finds them.
BUILTIN: dict[str, str] = {
    "local_copy": "relayd.hops.local_copy:LocalCopyHop",
    "download": "relayd.hops.download:DownloadHop",
    "pan_upload": "relayd.hops.pan_upload:PanUploadHop",
    "vm_pull": "relayd.hops.vm_pull:VmPullHop",
    "lfs_push": "relayd.hops.lfs_push:LfsPushHop",
    "ms_upload": "relayd.hops.ms_upload:MsUploadHop",
}


@cache
def registry() -> dict[str, str]:
    """Return hop name → "module:Class" for every registered hop."""
    from importlib.metadata import entry_points  # scanning the installed packages takes a while

    found = dict(BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry.value)
    return found


def hop_names() -> list[str]:
    return sorted(registry())


def load_hop_class(name: str) -> type[Hop]:
    """Import and return the hop class registered as *name*. Raise ConfigError with a hint."""
    target = BUILTIN.get(name) or registry().get(name)  # a built-in hop needs no look at the plugins
    if target is None:
        raise ConfigError(f"unknown hop {name!r}; known hops: {', '.join(hop_names())}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"hop {name!r} cannot be loaded ({exc}); install the package that provides it"
        ) from exc
    hop_class: type[Hop] = getattr(module, class_name)
    return hop_class


def loadable(names: Iterable[str]) -> dict[str, type[Hop]]:
    """Return the class of each hop of *names* that is installed and loads; skip the others (a broken
    or missing plugin cannot be described, so whoever asks falls back to its name)."""
    classes: dict[str, type[Hop]] = {}
    for name in names:
        try:
            classes[name] = load_hop_class(name)
        except RelayError:
            continue
    return classes
