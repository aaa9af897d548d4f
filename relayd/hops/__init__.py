"""The hop registry: built-in and third-party hops, all loaded from the ``relayd.hops.v1`` entry-point
group (the version is bumped when the contract in relayd.hops.base breaks, so stale plugins are never
loaded). Hop classes are imported only when a daemon builds them."""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from relayd.errors import ConfigError

if TYPE_CHECKING:
    from relayd.hops.base import Hop

ENTRY_POINT_GROUP = "relayd.hops.v1"

# The built-in hops, so that a checkout without installed metadata still finds them.
BUILTIN: dict[str, str] = {
    "local_copy": "relayd.hops.local_copy:LocalCopyHop",
    "download": "relayd.hops.download:DownloadHop",
    "pan_upload": "relayd.hops.pan_upload:PanUploadHop",
    "vm_pull": "relayd.hops.vm_pull:VmPullHop",
    "lfs_push": "relayd.hops.lfs_push:LfsPushHop",
}


@cache
def registry() -> dict[str, str]:
    """Return hop name → "module:Class" for every registered hop."""
    found = dict(BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry.value)
    return found


def hop_names() -> list[str]:
    return sorted(registry())


def load_hop_class(name: str) -> type[Hop]:
    """Import and return the hop class registered as *name*. Raise ConfigError with a hint."""
    target = registry().get(name)
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
