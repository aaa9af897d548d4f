"""The log of the relayd daemons a test box starts in subprocesses: read it, and wait for a condition
with its tail in the failure."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


class DaemonLog:
    """Mixin for a test box whose daemons write to ``self.log_path``; ``wait_timeout`` is how long
    ``wait_for`` waits unless told."""

    log_path: Path
    wait_timeout: float = 30

    def log(self) -> str:
        """Return the daemon log so far ("" before a daemon wrote one)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(
        self, condition: Callable[[], bool], timeout: float | None = None, what: str = "condition"
    ) -> None:
        """Poll *condition* until it is true. Raise AssertionError naming *what*, with the log's tail, if
        *timeout* seconds (default ``wait_timeout``) pass first."""
        deadline = time.monotonic() + (self.wait_timeout if timeout is None else timeout)
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; daemon log:\n{self.log()[-4000:]}")
