"""Entry point: ``python3 -m relayd_agent`` (from the shipped zip) or ``python -m relayd.vm.agent``."""

from __future__ import annotations

import importlib
import sys

from .core import serve

# Python 3.8's zipimport leaves __package__ unset (the shipped zip); the spec always knows it.
_package = str(__package__ or __name__.rpartition(".")[0])

# Operation modules register themselves in core.OPS when imported.
for _module in ("basic", "pull", "place", "lfs_upload", "publish", "ms_api"):
    try:
        importlib.import_module("." + _module, _package)
    except ImportError as _exc:
        if getattr(_exc, "name", "") != _package + "." + _module:
            raise

if __name__ == "__main__":
    sys.exit(serve())
