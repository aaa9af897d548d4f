"""The sweep of abandoned partial downloads from staging.

The download hop writes each file to ``partial/download-<transfer id>.part`` and renames it into
``blobs/`` once verified. A partial file outlives its use when its transfer is done (by another daemon
that took it over), gone (its repo removed, its file replaced by a new snapshot's) or held by another
daemon under a running lease: left there it would count against ``staging.max_bytes`` for ever. The
engine sweeps such files at its first claim round, every ``SWEEP_INTERVAL`` seconds, and soon after it
loses a transfer. It never removes a partial this daemon may still resume or another may be writing:
one of a transfer it runs, a pending, waiting or blocked one, or one leased by any daemon process of
this machine (this daemon before a kill -9 and a restart, or a daemon sharing this staging directory).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Collection
from pathlib import Path

from relayd.catalogue.states import DONE
from relayd.catalogue.store import Store
from relayd.catalogue.store.records import owner_process
from relayd.logs import log_failure
from relayd.staging import PARTIAL_NAME, Staging
from relayd.units import format_size

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 10.0  # seconds between sweeps: a listing of partial/, and a read only when it holds others


def abandoned_because(state: str | None, holder: str | None, owner: str) -> str | None:
    """Return why the partial file of a transfer in *state* (None: no such transfer), held by *holder*
    under a running lease, is abandoned for this daemon (*owner*); None while this daemon may resume it."""
    if state is None:
        return "its transfer no longer exists"
    if state == DONE:
        return "its transfer is done"
    if holder is None or holder == owner:
        return None
    process = owner_process(holder)
    if process is not None and process[0] == socket.gethostname():
        # A daemon of this machine holds it: this one before a kill -9 and a restart (it resumes the
        # transfer once that lease runs out), or one sharing this staging directory, writing it now.
        return None
    return f"{holder} holds its transfer"


class PartialSweep:
    """Removes the partial downloads under staging that this daemon will not resume."""

    def __init__(self, staging: Staging, store: Store, owner: str) -> None:
        self.staging = staging
        self.store = store
        self.owner = owner
        self._unknown: set[str] = set()  # names in partial/ that are not downloads', logged once

    def sweep(self, busy: Collection[int] = ()) -> int:
        """Remove each abandoned partial file but those of the *busy* transfers (running here); return
        the bytes freed. A failure is logged and tried again at the next sweep, never raised."""
        found = {
            transfer_id: path for transfer_id, path in self._partials().items() if transfer_id not in busy
        }
        if not found:
            return 0
        try:
            leases = self.store.leases(found)
        except Exception as exc:  # noqa: BLE001 - tried again at the next sweep; log_failure logs it
            log_failure(log, "sweeping partial downloads failed; trying again later", exc)
            return 0
        freed = 0
        for transfer_id, path in sorted(found.items()):
            state, holder = leases.get(transfer_id, (None, None))
            reason = abandoned_because(state, holder, self.owner)
            if reason is not None:
                freed += self._remove(transfer_id, path, reason)
        return freed

    def _partials(self) -> dict[int, Path]:
        """Return the partial downloads under staging by transfer id; other files are left alone."""
        directory = self.staging.partial
        try:
            names = os.listdir(directory)
        except OSError as exc:
            log.warning(
                "cannot list %s (%s); partial downloads are swept later: check its permissions",
                directory,
                exc,
            )
            return {}
        found: dict[int, Path] = {}
        for name in names:
            match = PARTIAL_NAME.match(name)
            if match:
                found[int(match.group(1))] = directory / name
            elif name not in self._unknown:
                self._unknown.add(name)
                log.debug("%s is not a partial download; the sweep leaves it alone", directory / name)
        return found

    @staticmethod
    def _remove(transfer_id: int, path: Path, reason: str) -> int:
        """Delete one abandoned partial file; return the bytes it held on disk (0 if it is gone already)."""
        try:
            size = os.lstat(path).st_blocks * 512
            path.unlink()
        except FileNotFoundError:
            return 0  # renamed into blobs or removed meanwhile
        except OSError as exc:
            log.warning(
                "transfer %s: could not remove its abandoned partial download %s (%s); "
                "check the staging directory's permissions, or delete the file by hand",
                transfer_id,
                path,
                exc,
            )
            return 0
        log.info(
            "transfer %s: removed its partial download %s, %s: %s (%d bytes) freed",
            transfer_id,
            path.name,
            reason,
            format_size(size),
            size,
        )
        return size
