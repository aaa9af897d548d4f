"""The environment benchmarks run relayd in: bytecode caching on, as in any installed copy."""

from __future__ import annotations

import os
from pathlib import Path


def bench_env(directory: Path, checkout: Path | None = None) -> dict[str, str]:
    """Return this process's environment with bytecode caching on, the cache under *directory*; with
    *checkout*, the relayd (and relayd-sandbox) of that source tree is imported instead of this one.

    A shell with PYTHONDONTWRITEBYTECODE=1 would otherwise make relayd (installed editable here, so
    without the .pyc files pip writes at install) compile every module on every run: 0.2-0.3 CPU-seconds
    no installed copy spends. The cache goes under *directory*, not into the source tree; a benchmark
    warms it with one untimed run.
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(directory / "pycache")
    if checkout is not None:
        env["PYTHONPATH"] = f"{checkout}:{checkout / 'sandbox'}"
    return env
