"""A worker whose lease ran out records nothing more into the transfer another worker took over (its
plan, pieces, progress, handles): each write raises LeaseLost and changes nothing, on SQLite and on
PostgreSQL. The daemon's store checks its engine's lease (``Store.lease_holder``)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select

from relayd.catalogue import migrate
from relayd.catalogue.schema import Piece, Transfer
from relayd.catalogue.store import FileSpec, LeaseLost, RepoSpec, Store
from relayd.hops.base import PieceSpec

PIECES = [PieceSpec(0, 0, 5, False), PieceSpec(1, 5, 5, False)]


@pytest.fixture
def stores(either_catalogue: str) -> Iterator[tuple[Store, Store]]:
    """Two daemons' stores on one catalogue, each checking its own engine's leases."""
    first, second = Store(either_catalogue), Store(either_catalogue)
    migrate.ensure_schema(first.engine, auto_upgrade=False)
    first.lease_holder, second.lease_holder = "first", "second"
    yield first, second
    first.close()
    second.close()


def snapshot(store: Store, transfer_id: int) -> tuple[object, ...]:
    with store.read() as session:
        transfer = session.get(Transfer, transfer_id)
        assert transfer is not None
        pieces = session.scalars(select(Piece).where(Piece.transfer_id == transfer_id).order_by(Piece.idx))
        return (
            transfer.bytes_done,
            transfer.bytes_moved,
            transfer.rate,
            transfer.handles,
            [(piece.done, piece.sends, piece.moved) for piece in pieces],
        )


def test_a_worker_that_lost_its_lease_records_nothing_more(stores: tuple[Store, Store]) -> None:
    first, second = stores
    repo, _ = first.add_repo(RepoSpec(name="acme/model", every=3600, route=("download",)))
    first.record_snapshot(repo.id, "c" * 40, [FileSpec("a.bin", 10, True, hashlib.sha256(b"a").hexdigest())])
    mine = first.claim("download", "first", lease=1.0)
    assert mine is not None
    first.record_plan(mine.id, PIECES, 10)  # its own lease: recorded
    first.piece_started(mine.id, 0)
    first.piece_done(mine.id, [0], moved=5)
    time.sleep(1.1)
    taken = second.claim("download", "second", lease=60)
    assert taken is not None and taken.id == mine.id
    second.progress(mine.id, moved=3, rate=3.0)  # the new holder records
    assert first.renew_leases("first", [mine.id], 60) == {mine.id}, "lost to another worker"
    assert second.renew_leases("second", [mine.id], 60) == set()
    before = snapshot(second, mine.id)
    late: list[Callable[[], None]] = [
        lambda: first.record_plan(mine.id, PIECES, 10),
        lambda: first.piece_started(mine.id, 1),
        lambda: first.piece_done(mine.id, [1], moved=5),
        lambda: first.reset_pieces(mine.id),
        lambda: first.progress(mine.id, moved=5, rate=9.0),
        lambda: first.save_handles(mine.id, {"upload_id": "late"}),
        lambda: first.complete(mine.id, "first", {}),
    ]
    for write in late:
        with pytest.raises(LeaseLost, match=f"transfer {mine.id} is now held by second"):
            write()
    assert snapshot(second, mine.id) == before
    second.complete(mine.id, "second", {"done": True})
    assert second.renew_leases("second", [mine.id], 60) == set(), "finished: lost to nobody"
    with pytest.raises(LeaseLost, match=f"transfer {mine.id} is now held by nobody"):
        first.piece_done(mine.id, [1])


def test_without_a_lease_holder_writes_are_not_checked(either_catalogue: str) -> None:
    """A hop run by hand (tests, the conformance kit) records into a transfer nobody claimed."""
    store = Store(either_catalogue)
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    repo, _ = store.add_repo(RepoSpec(name="acme/model", every=3600, route=("download",)))
    store.record_snapshot(repo.id, "c" * 40, [FileSpec("a.bin", 10, True, hashlib.sha256(b"a").hexdigest())])
    with store.read() as session:
        transfer_id = session.scalars(select(Transfer.id)).one()
    store.record_plan(transfer_id, PIECES, 10)
    store.piece_done(transfer_id, [0, 1])
    assert snapshot(store, transfer_id)[0] == 10
    store.close()
