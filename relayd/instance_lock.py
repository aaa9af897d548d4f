"""The one-daemon-per-catalogue lock: a SQLite catalogue is served by one daemon at a time (a shared
server database is built for several, with leased claims). `relayctl status` takes the same lock
shared for an instant to learn whether a daemon runs (relayd.catalogue.queries.daemon)."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from relayd.catalogue.db import sqlite_path
from relayd.catalogue.queries import instance_lock_path
from relayd.config import Config
from relayd.errors import InstanceLocked

LOCK_TRIES = 10


@contextmanager
def instance_lock(config: Config) -> Iterator[Path | None]:
    """Hold the one-daemon-per-catalogue lock (SQLite catalogues only; a shared server database is
    built for several daemons). Raise InstanceLocked naming the holder."""
    database = sqlite_path(config.catalogue.url)
    if database is None:
        yield None
        return
    lock_path = instance_lock_path(database)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = lock_path.open("a+")
    try:
        _take_lock(handle)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise InstanceLocked(
            f"another relayd (pid {holder}) is already running for {database} (lock file {lock_path}); "
            "stop it first, or give this one its own catalogue"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    try:
        yield lock_path
    finally:
        handle.close()


def _take_lock(handle: IO[str]) -> None:
    """Take the instance lock, trying a few times within half a second: `relayctl status` holds it
    shared for an instant to see whether a daemon runs. Raise BlockingIOError if another holds it."""
    for _ in range(LOCK_TRIES - 1):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            time.sleep(0.5 / LOCK_TRIES)
        else:
            return
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
