"""The download hop against the fake Hub, with the real huggingface_hub client and the real engine:
pieces over several connections, every injected failure, CloudFront's refusals, signed URLs bound to
one range, the Hub's rate limits, verification, quarantine, reuse of staged content, a full disk,
Xet-only files, and a tree that changes under a pinned commit."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import relayd.hub_limits
from relayd.catalogue.schema import BLOCKED, DONE, Piece
from relayd.hops.base import plan_ranges
from relayd.hops.download import piece_length
from relayd.hops.download_run import Run
from relayd_sandbox._http import LoggedRequest
from relayd_sandbox.hub import FakeHub, FaultRule, Generated, make_model_repo
from tests.support.hubrelay import TOKEN, HubRelay, files_outside, sha256_of

MiB = 1024 * 1024
WEIGHTS = "model.safetensors"


@pytest.fixture(autouse=True)
def fresh_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a test teaches relayd of the Hub's rate limits (clocks included) stays with that test."""
    monkeypatch.setattr(relayd.hub_limits, "_BUDGETS", {})


def one_file_repo(hub: FakeHub, name: str = "alice/one", size: int = 2 * MiB, seed: int = 1) -> str:
    """Create a repo with one LFS file of *size* bytes; return its sha256."""
    hub.create_repo(name, files={WEIGHTS: Generated(size, seed=seed)})
    return hub.file(name, WEIGHTS).sha256


def cdn_requests(hub: FakeHub, sha256: str) -> list[str]:
    return [entry.method for entry in hub.cdn_log.snapshot() if sha256 in entry.path]


def resolves(hub: FakeHub, path: str = WEIGHTS) -> list[LoggedRequest]:
    """The requests relayd sent to ``/resolve`` for *path*; none of them may carry a Range."""
    found = [entry for entry in hub.hub_log.snapshot() if "/resolve/" in entry.path and path in entry.path]
    assert all(entry.header("Range") is None for entry in found), "a Range was sent to /resolve"
    return found


def test_piece_length_keeps_every_connection_busy() -> None:
    assert piece_length(2 * 1024 * MiB, 64 * MiB, 16) == 64 * MiB
    assert piece_length(100 * MiB, 64 * MiB, 8) == 13 * MiB
    assert piece_length(3 * MiB, 64 * MiB, 8) == MiB
    assert piece_length(100, 256 * 1024, 4) == 256 * 1024
    assert piece_length(0, 64 * MiB, 8) >= 1


def test_relays_a_private_repo_verified_without_credentials_on_the_cdn(relay: HubRelay, hub: FakeHub) -> None:
    make_model_repo(hub, "alice/tiny", shards=2, shard_size=3 * MiB, private=True)
    hub.cdn_reject_authorization = True
    relay.add_repo("alice/tiny")

    transfers = relay.relay()

    files = hub.files("alice/tiny")
    assert len(transfers) == len(files)
    assert {t.state for t in transfers} == {DONE}
    for path, entry in files.items():
        transfer = relay.transfer(path)
        staged = relay.staging_dir / transfer.handles["staged"]
        assert staged == relay.staged(entry.sha256)
        content = staged.read_bytes()
        assert hashlib.sha256(content).hexdigest() == entry.sha256
        assert transfer.handles["commit"] == hub.head("alice/tiny")
        assert transfer.handles["etag"] == (entry.sha256 if entry.lfs else entry.blob_id)
    # sha1 is computed on the way, for the drive's rapid upload.
    from relayd.catalogue.schema import Blob

    with relay.store.read() as session:
        for blob in session.query(Blob):
            assert blob.sha256 is not None
            assert blob.sha1 == hashlib.sha1(relay.staged(blob.sha256).read_bytes()).hexdigest()
    # Several ranged GETs per shard, none of them with the token.
    shard = files["model-00001-of-00002.safetensors"]
    ranged = [e for e in hub.cdn_log.snapshot() if shard.sha256 in e.path]
    assert len(ranged) == 12 and all(e.status == 206 for e in ranged)
    assert len({e.header("Range") for e in ranged}) == 12
    assert all(e.header("Authorization") is None for e in hub.cdn_log.snapshot())
    assert all(e.header("Authorization") == f"Bearer {TOKEN}" for e in hub.hub_log.snapshot())
    assert not list((relay.staging_dir / "partial").iterdir())
    assert hub.bytes_served() == sum(entry.size for entry in files.values())


FAULTS: dict[str, Callable[[FakeHub, str], FaultRule]] = {
    "truncated body": lambda hub, sha: hub.faults.truncate(100_000, times=3, match=sha),
    "ignored range": lambda hub, sha: hub.faults.ignore_range(times=3, match=sha),
    "416": lambda hub, sha: hub.faults.stale_range(times=2, match=sha),
    "429 burst": lambda hub, sha: hub.faults.rate_limit(where="cdn", times=4, reset_in=1, match=sha),
    "reset mid-body": lambda hub, sha: hub.faults.reset(50_000, times=3, match=sha),
    "reset before answer": lambda hub, sha: hub.faults.reset(times=3, match=sha),
    "5xx from the cdn": lambda hub, sha: hub.faults.server_error(503, where="cdn", times=3, match=sha),
    "stall": lambda hub, sha: hub.faults.stall(after=10_000, times=2, match=sha),
    "expired url": lambda hub, sha: hub.faults.expire(times=2, match=sha),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_recovers_from_each_injected_failure(relay: HubRelay, hub: FakeHub, fault: str) -> None:
    sha256 = one_file_repo(hub)
    rule = FAULTS[fault](hub, sha256)
    relay.add_repo("alice/one")

    transfers = relay.relay()

    assert rule.hits >= 1
    assert {t.state for t in transfers} == {DONE}, [t.last_error for t in transfers]
    assert sha256_of(relay.staged(sha256)) == sha256
    transfer = relay.transfer(WEIGHTS)
    assert transfer.attempts == 1, "recovered inside the hop, without parking the transfer"
    if fault == "expired url":
        heads = [e for e in hub.hub_log.snapshot() if e.method == "HEAD" and WEIGHTS in e.path]
        assert len(heads) >= 2, "a fresh signed location was fetched"
    if fault != "ignored range":  # a 200 pushes what fits in the socket buffers before relayd hangs up
        assert hub.bytes_served(sha256) <= 2 * MiB + rule.hits * 256 * 1024


def test_signed_urls_expiring_mid_download_are_renewed(relay: HubRelay, hub: FakeHub) -> None:
    sha256 = one_file_repo(hub, size=4 * MiB)
    hub.url_ttl = 0.5  # CloudFront's Expires is whole seconds: each location lives 0.5 to 1.5 s
    hub.bandwidth_cap = MiB // 2  # four connections: about two seconds, so every location expires
    relay.add_repo("alice/one")

    transfers = relay.relay()

    assert {t.state for t in transfers} == {DONE}, [t.last_error for t in transfers]
    assert sha256_of(relay.staged(sha256)) == sha256
    refused = [e for e in hub.cdn_log.snapshot() if e.status == 403]
    heads = [e for e in hub.hub_log.snapshot() if e.method == "HEAD" and WEIGHTS in e.path]
    assert refused and len(heads) >= 2


@pytest.mark.parametrize("reason", ["expired", "missing-key", "unknown-key"])
def test_cloudfront_refusals_mid_download_renew_the_location_and_resume(
    relay: HubRelay, hub: FakeHub, reason: str
) -> None:
    sha256 = one_file_repo(hub, size=4 * MiB)
    hub.bandwidth_cap = MiB  # four connections, 256 KiB pieces: about a second
    relay.add_repo("alice/one", include=(WEIGHTS,))
    injected: list[FaultRule] = []

    def refuse_once_bytes_flow() -> None:
        deadline = time.monotonic() + 10
        while hub.bytes_served(sha256) < MiB and time.monotonic() < deadline:
            time.sleep(0.005)
        injected.append(hub.faults.expire(reason=reason, times=2, match=sha256))  # type: ignore[arg-type]

    watcher = threading.Thread(target=refuse_once_bytes_flow, daemon=True)
    watcher.start()
    (transfer,) = relay.relay()
    watcher.join()

    assert injected[0].hits >= 1
    assert transfer.state == DONE and transfer.attempts == 1, transfer.last_error
    assert sha256_of(relay.staged(sha256)) == sha256
    refusals = [e for e in hub.cdn_log.snapshot() if e.status == 403]
    assert len(refusals) == injected[0].hits
    assert len(resolves(hub)) >= 2, "a fresh signed location was fetched"
    assert hub.bytes_served(sha256) == 4 * MiB, "resumed: no byte was fetched twice"


def test_urls_bound_to_one_range_still_finish_with_one_location_per_request(
    relay: HubRelay, hub: FakeHub
) -> None:
    sha256 = one_file_repo(hub, size=4 * MiB)
    second = one_file_repo(hub, "alice/two", size=MiB, seed=2)
    rule = hub.faults.range_bound()
    hub.bandwidth_cap = 4 * MiB  # slow enough that requests on a fresh URL overlap
    relay.add_repo("alice/one", include=(WEIGHTS,))

    (transfer,) = relay.relay()

    assert transfer.state == DONE and transfer.attempts == 1, transfer.last_error
    assert sha256_of(relay.staged(sha256)) == sha256
    pieces = len(relay.pieces(transfer.id))
    refused = [e for e in hub.cdn_log.snapshot() if e.status == 403]
    assert rule.hits > 0 and refused, "the CDN did refuse a second range on one URL"
    # One fresh location per piece after the switch, and a few for requests already in flight.
    connections = 4
    assert pieces <= len(resolves(hub)) <= 1 + pieces + connections
    assert hub.bytes_served(sha256) == 4 * MiB

    # The daemon remembers that this CDN's URLs serve one range each: the next file is not refused.
    hub.reset_counters()
    relay.add_repo("alice/two", include=(WEIGHTS,))
    relay.relay()
    assert relay.transfer(WEIGHTS, repo="alice/two").state == DONE
    assert [e.status for e in hub.cdn_log.snapshot() if second in e.path] == [206] * len(
        relay.pieces(relay.transfer(WEIGHTS, repo="alice/two").id)
    )
    resolves(hub)


def test_metadata_and_hub_gets_are_paced_across_windows_without_a_429(relay: HubRelay, hub: FakeHub) -> None:
    sha256 = one_file_repo(hub)
    hub.rate_limits.quotas["free"]["resolvers"] = 4
    hub.rate_limits.window = 2  # seconds, so the test waits for a window or two
    relay.add_repo("alice/one")

    transfers = relay.relay()

    assert {t.state for t in transfers} == {DONE}, [t.last_error for t in transfers]
    assert sha256_of(relay.staged(sha256)) == sha256
    answers = [e for e in hub.hub_log.snapshot() if "/resolve" in e.path]
    # The poll's HEAD, the regular file's HEAD, its redirect and its GET, the weights' HEAD: more than
    # one window allows, and not one of them refused.
    assert len(answers) >= 5
    assert all(e.status != 429 for e in hub.hub_log.snapshot())


def test_a_corrupted_download_is_quarantined_and_fetched_again(relay: HubRelay, hub: FakeHub) -> None:
    sha256 = one_file_repo(hub)
    rule = hub.faults.flip_bytes(at=MiB + 5, times=1, match=sha256)
    relay.add_repo("alice/one")

    transfers = relay.relay()

    assert rule.hits == 1
    assert {t.state for t in transfers} == {DONE}
    assert sha256_of(relay.staged(sha256)) == sha256
    quarantined = list((relay.staging_dir / "quarantine").iterdir())
    assert len(quarantined) == 1 and sha256_of(quarantined[0]) != sha256
    assert hub.bytes_served(sha256) == 2 * 2 * MiB


def test_a_second_mismatch_blocks_with_both_hashes(relay: HubRelay, hub: FakeHub) -> None:
    """A CDN that keeps flipping a byte: the file is downloaded exactly twice, then blocked with the
    expected sha256, the one measured, and where it was measured."""
    sha256 = one_file_repo(hub)
    hub.faults.flip_bytes(at=7, times=None, match=sha256)
    relay.add_repo("alice/one", include=(WEIGHTS,))

    (transfer,) = relay.relay()

    assert transfer.state == BLOCKED
    assert transfer.error_class == "integrity"
    error = transfer.last_error or ""
    assert error.startswith("sha256 mismatch measured on the staging disk after download, twice in a row")
    expected, got = re.findall(r"expected ([0-9a-f]{64}), got ([0-9a-f]{64})", error)[0]
    assert expected == sha256 and got != sha256
    assert "relayctl retry" in (transfer.hint or "")
    assert not relay.staged(sha256).exists()
    assert len(list((relay.staging_dir / "quarantine").iterdir())) == 2
    assert hub.bytes_served(sha256) == 2 * 2 * MiB  # sent exactly twice, never a third time
    assert {p.sends for p in relay.pieces(transfer.id)} == {2}
    assert "integrity_mismatches" not in transfer.handles  # a person's retry starts a new streak


def test_a_corrupted_small_file_fails_its_git_blob_check(relay: HubRelay, hub: FakeHub) -> None:
    hub.create_repo("alice/small", files={"config.json": b'{"hidden_size": 64}\n' * 10})
    entry = hub.file("alice/small", "config.json")
    hub.faults.flip_bytes(where="resolve", times=1, match="config.json")
    relay.add_repo("alice/small", include=("config.json",))

    (transfer,) = relay.relay()

    assert transfer.state == DONE
    assert relay.staged(entry.sha256).read_bytes() == b'{"hidden_size": 64}\n' * 10
    assert len(list((relay.staging_dir / "quarantine").iterdir())) == 1


def test_content_already_staged_is_not_downloaded_again(relay: HubRelay, hub: FakeHub) -> None:
    sha256 = one_file_repo(hub, "alice/one")
    hub.create_repo("bob/copy", files={"renamed.safetensors": Generated(2 * MiB, seed=1)})
    relay.add_repo("alice/one")
    relay.relay()
    served = hub.bytes_served()

    relay.add_repo("bob/copy")
    relay.relay()

    copy = relay.transfer("renamed.safetensors", repo="bob/copy")
    assert copy.state == DONE and copy.handles["reused"] is True
    assert copy.handles["staged"] == relay.transfer(WEIGHTS).handles["staged"]
    assert hub.bytes_served() == served, "no byte moved: the same content was already staged"
    assert relay.transfer(".gitattributes", repo="bob/copy").handles["reused"] is True
    assert sha256_of(relay.staged(sha256)) == sha256


def test_a_full_disk_blocks_and_loses_no_durable_piece(
    relay: HubRelay, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha256 = one_file_repo(hub, size=4 * MiB)
    relay.add_repo("alice/one", include=(WEIGHTS,))
    relay.write_config(connections=2)
    real_pwrite = os.pwrite
    calls = {"n": 0}
    lock = threading.Lock()

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        with lock:
            calls["n"] += 1
            full = calls["n"] > 6
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    (transfer,) = relay.relay()
    assert transfer.state == BLOCKED and transfer.error_class == "disk"
    assert "free space" in (transfer.hint or "")
    kept = [p for p in relay.pieces(transfer.id) if p.done]
    assert kept, "durable pieces stay recorded"

    monkeypatch.setattr(os, "pwrite", real_pwrite)
    served = hub.bytes_served(sha256)
    relay.store.retry()
    (transfer,) = relay.run()

    assert transfer.state == DONE
    assert sha256_of(relay.staged(sha256)) == sha256
    refetched = hub.bytes_served(sha256) - served
    assert refetched == 4 * MiB - sum(p.length for p in kept)


def test_xet_only_files_are_refused_with_a_clear_message(relay: HubRelay, hub: FakeHub) -> None:
    sha256 = one_file_repo(hub)
    hub.xet_only.add(sha256)
    relay.add_repo("alice/one", include=(WEIGHTS,))

    (transfer,) = relay.relay()

    assert transfer.state == BLOCKED and transfer.error_class == "xet"
    assert "only through Xet" in (transfer.last_error or "")
    assert "exclude" in (transfer.hint or "")


def test_xet_advertised_files_still_come_over_http(relay: HubRelay, hub: FakeHub) -> None:
    sha256 = one_file_repo(hub)
    hub.advertise_xet = True
    relay.add_repo("alice/one", include=(WEIGHTS,))

    (transfer,) = relay.relay()

    assert transfer.state == DONE
    assert sha256_of(relay.staged(sha256)) == sha256
    assert not any("xet-read-token" in e.path for e in hub.hub_log.snapshot())


def test_a_tree_that_changes_under_the_pinned_commit_is_refused(relay: HubRelay, hub: FakeHub) -> None:
    one_file_repo(hub)
    relay.add_repo("alice/one", include=(WEIGHTS,))
    relay.poll()
    # Upstream now serves other content under the same commit.
    hub.rewrite_commit("alice/one", hub.head("alice/one"), {WEIGHTS: Generated(2 * MiB, seed=99)})

    (transfer,) = relay.run()

    assert transfer.state == BLOCKED and transfer.error_class == "changed"
    assert "contradicts the tree of the pinned commit" in (transfer.last_error or "")
    assert hub.bytes_served() == 0
    assert not list((relay.staging_dir / "blobs").rglob("*"))


def test_hostile_paths_are_refused_and_nothing_is_written_outside_staging(
    relay: HubRelay, hub: FakeHub, tmp_path: Path
) -> None:
    paths = ("../../escape.bin", "/tmp/absolute.bin", "dir\\back.bin", "x/../../up.bin", "nul\0.bin")
    for number, path in enumerate(paths):
        name = f"alice/evil{number}"
        hub.create_repo(name)
        hub.commit(name, {path: b"pwned" * 1000}, allow_unsafe_paths=True)
        relay.add_repo(name)

        (result,) = relay.poll(name)

        assert result.error and repr(path) in result.error
        repo = relay.repo(name)
        assert repo.poll_state == "blocked" and repr(path) in (repo.poll_error or "")
    assert relay.run() == []
    assert hub.bytes_served() == 0
    # Only the catalogue, the config and relayd's own directories exist outside the hub's storage.
    outside = files_outside(tmp_path, (tmp_path / "hub", relay.staging_dir, relay.root / "state"))
    assert sorted(outside) == sorted(path for path in relay.root.iterdir() if path.is_file())
    assert {path.name.split(".")[0] for path in outside} == {"relayd", "catalogue"}
    assert not list(relay.staging_dir.rglob("*.bin"))
    assert not Path("/tmp/absolute.bin").exists()


def test_gated_repo_blocks_anonymous_then_works_once_approved(relay: HubRelay, hub: FakeHub) -> None:
    hub.create_repo("meta/gated", gated="manual", files={WEIGHTS: Generated(MiB, seed=3)})
    relay.write_config(token=None)
    relay.add_repo("meta/gated")

    relay.poll()

    repo = relay.repo("meta/gated")
    assert repo.poll_state == "blocked"
    assert "gated" in (repo.poll_error or "")
    assert f"accept the licence at {hub.endpoint}/meta/gated, then set the token" in (repo.poll_hint or "")
    assert relay.transfers() == []

    hub.add_token("hf_bob", user="bob")
    hub.approve("meta/gated", "hf_bob")
    relay.write_config(token="hf_bob")
    relay.build()
    relay.store.retry("meta/gated")
    transfers = relay.relay()

    assert {t.state for t in transfers} == {DONE}
    assert (
        sha256_of(relay.staged(hub.file("meta/gated", WEIGHTS).sha256))
        == hub.file("meta/gated", WEIGHTS).sha256
    )


def test_a_repo_gated_after_its_poll_blocks_the_download(relay: HubRelay, hub: FakeHub) -> None:
    one_file_repo(hub)
    hub.add_token("hf_bob", user="bob")
    relay.write_config(token="hf_bob")
    relay.add_repo("alice/one", include=(WEIGHTS,))
    relay.poll()
    hub.update_repo("alice/one", gated="auto")

    (transfer,) = relay.run()

    assert transfer.state == BLOCKED and transfer.error_class == "gated"
    assert f"accept the licence at {hub.endpoint}/alice/one" in (transfer.hint or "")
    assert "hf_bob" not in (transfer.last_error or "") + (transfer.hint or "")


def test_a_429_on_the_metadata_waits_for_the_reset(relay: HubRelay, hub: FakeHub) -> None:
    one_file_repo(hub)
    relay.add_repo("alice/one", include=(WEIGHTS,))
    relay.poll()
    rule = hub.faults.rate_limit(where="resolve", times=1, reset_in=1, match=WEIGHTS)
    assert relay.engine is not None
    relay.engine.run_until_idle(timeout=10)

    (transfer,) = relay.transfers()
    assert rule.hits == 1
    assert transfer.state == "waiting" and transfer.error_class == "rate_limit"
    assert "429" in (transfer.last_error or "")
    assert transfer.next_attempt_at is not None and transfer.updated_at is not None
    assert (transfer.next_attempt_at - transfer.updated_at).total_seconds() >= 0.9

    (transfer,) = relay.run()
    assert transfer.state == DONE


def test_a_new_commit_that_changes_one_file_downloads_only_that_file(relay: HubRelay, hub: FakeHub) -> None:
    make_model_repo(hub, "alice/tiny", shards=3, shard_size=MiB)
    relay.add_repo("alice/tiny")
    first = relay.relay()
    served = hub.bytes_served()

    hub.commit("alice/tiny", {"model-00002-of-00003.safetensors": Generated(MiB, seed=42)})
    relay.relay()

    changed = hub.file("alice/tiny", "model-00002-of-00003.safetensors")
    transfers = relay.transfers()
    assert len(transfers) == len(first) + 1
    assert transfers[-1].state == DONE and transfers[-1].handles["etag"] == changed.sha256
    assert hub.bytes_served() - served == MiB
    assert sha256_of(relay.staged(changed.sha256)) == changed.sha256


def test_pieces_recorded_only_when_durable(relay: HubRelay, hub: FakeHub) -> None:
    sha256 = one_file_repo(hub, size=3 * MiB)
    relay.add_repo("alice/one", include=(WEIGHTS,))
    relay.relay()

    transfer = relay.transfer(WEIGHTS)
    pieces: list[Piece] = relay.pieces(transfer.id)
    assert len(pieces) == 12 and all(p.done and p.sends == 1 for p in pieces)
    assert sum(p.length for p in pieces) == 3 * MiB
    assert sha256_of(relay.staged(sha256)) == sha256


def test_a_transfer_running_when_the_head_moves_fetches_its_own_commit(relay: HubRelay, hub: FakeHub) -> None:
    old = one_file_repo(hub)
    relay.add_repo("alice/one", include=(WEIGHTS,))
    relay.poll()
    # A worker claimed the transfer and died: it stays running (its lease expired) when the head moves.
    assert relay.store.claim("download", "dead-worker", -1.0) is not None
    hub.commit("alice/one", {WEIGHTS: Generated(2 * MiB, seed=2)})
    new = hub.file("alice/one", WEIGHTS).sha256
    relay.poll()

    transfers = relay.run()

    assert [t.state for t in transfers] == [DONE, DONE], [t.last_error for t in transfers]
    assert sha256_of(relay.staged(old)) == old
    assert sha256_of(relay.staged(new)) == new


@pytest.mark.parametrize(
    ("token", "ok", "detail"),
    [
        (TOKEN, True, "valid for alice"),
        ("hf_revoked", False, "refused the token"),
        (None, True, "public repos"),
    ],
)
def test_doctor_checks_the_token(relay: HubRelay, token: str | None, ok: bool, detail: str) -> None:
    """The Hub's checks, which doctor runs for the download hop (it uses the Hub), judge the token."""
    from relayd.cli.doctor import run_checks
    from relayd.health import CheckScope
    from relayd.hops.download import DownloadHop
    from relayd.hub_checks import hub_checks
    from relayd.services import Services

    relay.write_config(token=token)
    config = relay.config()
    assert DownloadHop.services == ("hub",)
    scope = CheckScope(10.0, Services(), config.daemon.state_dir)
    checks = [check for check in hub_checks(config.hub, scope) if check.name in ("hub endpoint", "hub token")]

    rows = {row.name: row for row in run_checks(checks, 10.0)}

    assert (rows["hub token"].status == "ok") is ok and detail in rows["hub token"].detail
    assert "hf_revoked" not in rows["hub token"].detail + rows["hub token"].hint


def test_dataset_files_download(relay: HubRelay, hub: FakeHub) -> None:
    hub.create_repo("alice/data", repo_type="dataset", files={"train.parquet": Generated(3 * MiB, seed=8)})
    relay.add_repo("alice/data", repo_type="dataset")

    transfers = relay.relay()

    assert {t.state for t in transfers} == {DONE}
    sha256 = hub.file("alice/data", "train.parquet", repo_type="dataset").sha256
    assert sha256_of(relay.staged(sha256)) == sha256
    assert any(e.path.startswith("/datasets/alice/data/resolve/") for e in hub.hub_log.snapshot())


def test_an_unreadable_token_file_blocks_with_a_hint(relay: HubRelay, hub: FakeHub) -> None:
    one_file_repo(hub)
    relay.write_config(token=None, extra="")
    text = relay.config_path.read_text().replace(
        'token_env = "RELAYD_TEST_NO_SUCH_TOKEN"', f'token_file = "{relay.root / "missing-token"}"'
    )
    relay.config_path.write_text(text)
    relay.add_repo("alice/one")

    relay.poll()

    repo = relay.repo("alice/one")
    assert repo.poll_state == "blocked" and "cannot be read" in (repo.poll_error or "")
    assert "hub.token_file" in (repo.poll_hint or "")


def _schedule(size: int, piece: int, connections: int) -> Run:
    pieces = plan_ranges(size, piece)
    return Run(None, -1, Path("/nonexistent"), size, pieces, connections)  # type: ignore[arg-type]


def test_connections_write_the_file_one_at_a_time(
    relay: HubRelay, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel writes one file's pages under one lock (ext4's, xfs's): connections that pwrite at
    once spin on it, which cost about 0.5 CPU-s per GiB on 16 connections. The run takes turns."""
    sha256 = one_file_repo(hub, size=12 * MiB)
    hub.bandwidth_cap = 8 * MiB  # four connections, several spans each, all of them receiving at once
    writing: dict[int, int] = {}  # file descriptor → connections in pwrite now
    most: dict[int, int] = {}
    calls: dict[int, int] = {}
    count = threading.Lock()
    pwrite = os.pwrite

    def watched_pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        with count:
            writing[fd] = writing.get(fd, 0) + 1
            calls[fd] = calls.get(fd, 0) + 1
            most[fd] = max(most.get(fd, 0), writing[fd])
        try:
            time.sleep(0.002)  # long enough for another connection to try
            return pwrite(fd, data, offset)
        finally:
            with count:
                writing[fd] -= 1

    monkeypatch.setattr(os, "pwrite", watched_pwrite)
    relay.add_repo("alice/one")

    assert {t.state for t in relay.relay()} == {DONE}

    assert max(calls.values()) >= 48 and set(most.values()) == {1}
    assert sha256_of(relay.staged(sha256)) == sha256


def test_spans_are_handed_out_in_file_order_growing_then_shrinking() -> None:
    run = _schedule(512 * MiB, 64 * MiB, 4)
    spans = []
    while (taken := run.take()) is not None:
        span, _starts = taken
        spans.append((run.block_start[span.first], run.end(span)))
        for block in range(span.first, span.last):  # pretend the span arrived and its piece is durable
            run.written[block] = run.block_len[block]
        run.missing_blocks[span.piece] -= span.last - span.first
        if run.missing_blocks[span.piece] == 0:
            run.state[span.piece] = "done"
            run.open_pieces -= 1
    assert spans[0] == (0, 4 * MiB)
    assert all(end == next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    assert spans[-1][1] == 512 * MiB
    lengths = [end - start for start, end in spans]
    assert lengths[:4] == [4 * MiB] * 4 and 32 * MiB <= max(lengths) <= 64 * MiB and lengths[-1] == 4 * MiB
    assert all(start // (64 * MiB) == (end - 1) // (64 * MiB) for start, end in spans), "within a piece"
    assert run.frontier() == 512 * MiB


def test_no_more_pieces_are_open_than_connections() -> None:
    run = _schedule(256 * MiB, 16 * MiB, 2)
    opened = set()
    for _ in range(40):  # take spans without ever finishing them
        timer = threading.Timer(0.7, run.stop.set)
        timer.start()
        taken = run.take()
        timer.cancel()
        if taken is None:
            break
        opened.add(taken[0].piece)
    assert opened == {0, 1}


def test_the_token_never_reaches_the_logs_or_the_catalogue(
    relay: HubRelay, hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    make_model_repo(hub, "alice/private", shards=1, shard_size=MiB, private=True)
    hub.create_repo("meta/gated", gated="manual", files={WEIGHTS: Generated(MiB, seed=3)})
    hub.faults.expire(times=1)
    hub.faults.truncate(1000, times=1)
    relay.add_repo("alice/private")
    relay.add_repo("meta/gated")

    relay.relay()

    assert TOKEN not in caplog.text
    dump = "\n".join(sqlite3.connect(relay.db).iterdump())
    assert TOKEN not in dump
    assert "gated" in (relay.repo("meta/gated").poll_error or "")
