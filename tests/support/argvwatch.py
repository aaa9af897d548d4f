"""Watching every process's command line while a test runs, to prove a secret never reaches argv."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType


class ArgvWatch:
    """While the block runs, a thread reads each process's command line from /proc every few
    milliseconds: ``seen`` keeps those that carry one of *markers* (so a test can show it looked at
    the right processes), ``leaks`` those that carry *secret*."""

    def __init__(self, markers: tuple[bytes, ...], secret: bytes, interval: float = 0.005) -> None:
        self.markers = markers
        self.secret = secret
        self.interval = interval
        self.seen: list[str] = []
        self.leaks: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, daemon=True)

    def __enter__(self) -> ArgvWatch:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _scan(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    argv = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if any(marker in argv for marker in self.markers):
                    self.seen.append(argv.decode(errors="replace"))
                if self.secret in argv:
                    self.leaks.append(argv.decode(errors="replace"))
            time.sleep(self.interval)
