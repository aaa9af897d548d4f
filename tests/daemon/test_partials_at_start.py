"""relayd as a real process sweeps abandoned partial downloads at start, after it has put the transfers
a killed daemon left running back to pending: those partials stay, for the resume."""

from __future__ import annotations

import hashlib

from relayd.catalogue.schema import DONE, PENDING
from relayd.catalogue.store import FileSpec, RepoSpec
from relayd.staging import partial_name
from tests.support.daemonbox import DaemonSandbox


def test_start_removes_the_partials_of_done_and_gone_transfers_and_keeps_an_orphans(
    sandbox: DaemonSandbox,
) -> None:
    sandbox.make_repo("acme/done", {"a.bin": 300_000})
    assert sandbox.start("--once").wait(60) == 0, sandbox.log()
    done = sandbox.transfers()[0]
    assert done.state == DONE
    # A transfer another daemon held when it was killed (its lease still running): on SQLite the
    # starting daemon puts it back to pending, so its partial is one this daemon resumes.
    repo, _ = sandbox.store.add_repo(RepoSpec(name="acme/held", every=3600, route=("local_copy",)))
    sandbox.store.record_snapshot(
        repo.id, "c" * 40, [FileSpec("b.bin", 10, True, hashlib.sha256(b"b").hexdigest())]
    )
    held = sandbox.store.claim("local_copy", "killed-host:1:aa", lease=3600)
    assert held is not None and held.repo_id == repo.id
    assert sandbox.store.set_paused("acme/held", True)  # so that --once leaves it alone
    partial = sandbox.root / "staging" / "partial"
    files = {
        name: partial / partial_name(transfer_id)
        for name, transfer_id in (("done", done.id), ("held", held.id), ("gone", 10**6))
    }
    for path in files.values():
        path.write_bytes(b"x" * 100_000)
    notes = partial / "notes.txt"
    notes.write_text("not relayd's")

    assert sandbox.start("--once").wait(60) == 0, sandbox.log()

    assert not files["done"].exists() and not files["gone"].exists()
    assert files["held"].exists() and notes.exists()
    assert {t.id: t.state for t in sandbox.transfers()}[held.id] == PENDING
    log = sandbox.log()
    assert (
        f"transfer {done.id}: removed its partial download {files['done'].name}, its transfer is done" in log
    )
    assert f"transfer {10**6}: removed its partial download" in log and "no longer exists" in log
    assert f"transfer {held.id}: removed" not in log
