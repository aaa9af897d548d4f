"""Entry point: ``python3 -m relayd_agent`` (from the shipped zip) or ``python -m relayd.vm.agent``."""

from __future__ import annotations

import importlib
import sys

from .core import serve

# Operation modules register themselves in core.OPS when imported.
for _module in ("basic", "pull", "lfs"):
    try:
        importlib.import_module("." + _module, __package__)
    except ImportError as _exc:
        if getattr(_exc, "name", "") != (__package__ or "") + "." + _module:
            raise

if __name__ == "__main__":
    sys.exit(serve())
