"""Claiming one file's transfer in a seeded catalogue, the way a hop worker would."""

from __future__ import annotations

from relayd.catalogue.store import Store

OWNER = "test-worker"


def claim(store: Store, hop: str, path: str | None) -> int:
    """Given a hop and a file's *path* (None: the snapshot's own transfer), claim that transfer for
    `OWNER`, releasing the others met on the way, and return its id."""
    skipped: list[int] = []
    while True:
        transfer = store.claim(hop, OWNER, 600, exclude=skipped)
        assert transfer is not None, f"no runnable {hop} transfer for {path}"
        job = store.load_job(transfer.id)
        found = None if job.file is None else job.file.path
        if found == path:
            return transfer.id
        store.release(transfer.id, OWNER)
        skipped.append(transfer.id)
