"""Error texts come from peers (servers, the VM, child processes): the catalogue keeps them bounded and
without terminal escape sequences, and relayctl prints them clean even when an older relayd stored them
raw."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from relayd.catalogue.schema import BLOCKED, Repo, Transfer
from relayd.catalogue.store import FileSpec, RepoSpec, Store
from relayd.text import TEXT_LIMIT, TRUNCATED, safe_text

if TYPE_CHECKING:
    from tests.support.relayctl import Relayctl

# Clear the screen, set the window title, a hyperlink, a cursor move, an 8-bit CSI, a carriage return
# that would overwrite the line, and a right-to-left override.
HOSTILE = (
    "refused\x1b[2J\x1b]0;pwned\x07 \x1b]8;;http://evil.example/\x1b\\here\x1b]8;;\x1b\\"
    "\x1b[10;1H\x9b31m\rspoofed \u202edesrever"
)


def test_safe_text_removes_escape_sequences_and_control_characters() -> None:
    assert safe_text(HOSTILE) == "refused here31mspoofed desrever"
    assert safe_text("line one\nline\ttwo\x00\x7f") == "line one\nline two"


def test_safe_text_bounds_a_megabyte() -> None:
    text = safe_text("x" * 1_000_000)
    assert len(text) == TEXT_LIMIT
    assert text.endswith(TRUNCATED)
    assert safe_text("short") == "short"


def blocked(store: Store, error: str, hint: str) -> int:
    repo, _ = store.add_repo(RepoSpec(name="acme/m", every=60, route=("local_copy",)))
    store.record_snapshot(repo.id, "a" * 40, [FileSpec("w.bin", 3, True, hashlib.sha256(b"abc").hexdigest())])
    transfer = store.claim("local_copy", "me", lease=60)
    assert transfer is not None
    store.defer(transfer.id, "me", state=BLOCKED, error=error, error_class="server", hint=hint)
    return transfer.id


def test_the_catalogue_stores_error_texts_bounded_and_clean(relayctl: Relayctl) -> None:
    store = relayctl.store
    transfer_id = blocked(store, HOSTILE + "y" * 1_000_000, "\x1b[31mretry\x1b[0m")
    store.record_poll_state(
        store.repos()[0].id, state="blocked", error="\x1b]0;title\x07gated", hint="h" * 50_000
    )
    with store.read() as session:
        row = session.get(Transfer, transfer_id)
        assert row is not None
        repo = session.scalar(select(Repo))
        assert repo is not None
        assert row.last_error is not None and row.last_error.startswith("refused here31mspoofed desrever")
        assert len(row.last_error) == TEXT_LIMIT and row.last_error.endswith(TRUNCATED)
        assert row.hint == "retry"
        assert repo.poll_error == "gated"
        assert repo.poll_hint is not None and len(repo.poll_hint) == TEXT_LIMIT


def test_relayctl_prints_a_raw_stored_error_without_its_escape_sequences(relayctl: Relayctl) -> None:
    store = relayctl.store
    transfer_id = blocked(store, "placeholder", "placeholder")
    with store._write() as session:  # as an older relayd would have stored it
        session.execute(
            update(Transfer).where(Transfer.id == transfer_id).values(last_error=HOSTILE, hint=HOSTILE)
        )
        session.execute(update(Repo).values(poll_state="blocked", poll_error=HOSTILE, poll_hint=HOSTILE))
    for args in (("status",), ("status", "acme/m"), ("whereis", "acme/m")):
        result = relayctl(*args)
        assert result.exit_code == 0, result.output
        assert "refused here31mspoofed desrever" in result.output, args
        for raw in ("\x1b", "\x9b", "\r", "\u202e", "\x07"):
            assert raw not in result.output, (args, raw)
