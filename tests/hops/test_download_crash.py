"""kill -9 of the real daemon in the middle of a download, then a restart: only the pieces that were in
flight are fetched again, and the file is verified by its sha256."""

from __future__ import annotations

import os
import re
import signal

import pytest

from relayd.catalogue.schema import DONE
from relayd_sandbox.hub import FakeHub, Generated
from tests.support.hubrelay import HubRelay, sha256_of

MiB = 1024 * 1024
SIZE = 96 * MiB
PIECE = 4 * MiB
CONNECTIONS = 4
WEIGHTS = "model-00001-of-00001.safetensors"

pytestmark = pytest.mark.slow


def test_kill_9_mid_download_then_restart_refetches_at_most_the_pieces_in_flight(
    relay: HubRelay, hub: FakeHub
) -> None:
    hub.create_repo("alice/big", files={WEIGHTS: Generated(SIZE, seed=11)})
    sha256 = hub.file("alice/big", WEIGHTS).sha256
    relay.write_config(connections=CONNECTIONS, concurrency=1, piece_size=f"{PIECE // MiB} MiB")
    relay.add_repo("alice/big", include=(WEIGHTS,))
    hub.bandwidth_cap = 5 * MiB  # per connection: the download takes about five seconds

    daemon = relay.start()
    relay.wait_for(
        lambda: bool(relay.transfers()) and relay.transfers()[0].bytes_done >= 6 * PIECE,
        timeout=60,
        what="six durable pieces",
    )
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(10)

    (transfer,) = relay.transfers()
    assert transfer.state == "running", "killed mid-transfer"
    durable = [p for p in relay.pieces(transfer.id) if p.done]
    assert 6 <= len(durable) < SIZE // PIECE
    served_before = hub.bytes_served(sha256)
    assert served_before < SIZE
    hub.cdn_log.clear()
    hub.bandwidth_cap = None

    again = relay.start("--once")
    assert again.wait(60) == 0, relay.log()[-3000:]

    (transfer,) = relay.transfers()
    assert transfer.state == DONE, transfer.last_error
    assert sha256_of(relay.staged(sha256)) == sha256
    refetched = hub.bytes_served(sha256) - SIZE
    assert 0 <= refetched <= PIECE * CONNECTIONS
    # No durable piece was asked for again.
    for entry in hub.cdn_log.snapshot():
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", entry.header("Range") or "")
        assert match is not None
        first, last = int(match.group(1)), int(match.group(2))
        assert not any(p.offset <= first and last < p.offset + p.length for p in durable)
    assert "Traceback" not in relay.log()
