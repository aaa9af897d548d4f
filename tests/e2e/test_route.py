"""The whole default route under the real daemon on the loopback sandbox (fake Hub, fake drive, VM over
SSH, git + LFS): overlap of hops, staging released, webhooks, metrics, twenty kill -9s, a full disk."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from relayd.catalogue.schema import DONE, RUNNING
from relayd_sandbox._http import free_port
from relayd_sandbox.drive import FakeDrive
from relayd_sandbox.gitlfs import lfs_pointer
from relayd_sandbox.route import REPO, RouteSandbox
from tests.support.routewatch import Catalogue, wait_for

MiB = 1024 * 1024


def serving(box: RouteSandbox) -> int:
    """How many times a daemon of this sandbox has started serving."""
    return box.log_path.read_text().count(" serving ") if box.log_path.exists() else 0


@pytest.fixture
def box(tmp_path: Path) -> Iterator[RouteSandbox]:
    sandbox = RouteSandbox(tmp_path / "route", shards=3, shard_size=2 * MiB, ssh=True, piece_size="512 KiB")
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


class Receiver(BaseHTTPRequestHandler):
    bodies: list[dict[str, object]] = []

    def do_POST(self) -> None:
        Receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_route_overlaps_hops_releases_staging_notifies_and_exports_metrics(box: RouteSandbox) -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    Receiver.bodies = []
    metrics_port = free_port()
    box.write_config(extra=f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"')
    assert box.hub is not None and box.drive is not None
    box.hub.bandwidth_cap = 4 * MiB  # slow enough for hops to overlap visibly
    daemon = box.start_daemon()
    try:
        hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        added = box.relayctl("add", REPO, "--every", "10s", "--webhook", hook)
        assert added.returncode == 0, added.stderr
        catalogue = Catalogue(box)
        wait_for(lambda: catalogue.snapshot_done(box.head), 180, "the snapshot", box.log_path)
        rows, extra = box.verify()
        assert all(row.ok for row in rows), rows
        assert not extra
        transfers = catalogue.transfers()
        downloads = [t for t in transfers if t.hop == "download" and t.started_at and t.finished_at]
        later = [t for t in transfers if t.hop != "download" and t.started_at and t.finished_at]
        assert any(
            d.started_at < o.finished_at and o.started_at < d.finished_at  # type: ignore[operator]
            for d in downloads
            for o in later
        ), "some file moved on a later hop while another was still downloading"
        assert not [p for p in (box.root / "staging" / "blobs").rglob("*") if p.is_file()], "staging released"
        wait_for(lambda: any(b.get("event") == "snapshot_done" for b in Receiver.bodies), 30, "the webhook")
        done = next(b for b in Receiver.bodies if b["event"] == "snapshot_done")
        assert done["repo"] == REPO and done["commit"] == box.head
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'relayd_transfers{hop="lfs_push",state="done"}' in metrics
        assert "relayd_drive_token_expiry_timestamp_seconds" in metrics
        status = json.loads(box.relayctl("status", "--json").stdout)
        assert status["repos"][0]["snapshot"]["state"] == "done"
        assert box.ms_token not in box.log_path.read_text()
        assert box.hub_token not in box.log_path.read_text()
    finally:
        box.stop_daemon(daemon)
        receiver.shutdown()


def one_at_a_time(root: Path, shards: int) -> RouteSandbox:
    """Start a route of 4 MiB shards that moves one file, over one connection, at a time."""
    box = RouteSandbox(
        root, shards=shards, shard_size=4 * MiB, ssh=False, piece_size="256 KiB", connections=1, concurrency=1
    )
    box.start()
    return box


def test_twenty_kill_9s_over_the_whole_route_lose_nothing(tmp_path: Path) -> None:
    # One file and one connection at a time with download and vm_pull throttled, so that progress is
    # gradual; the hops that move whole units (a drive part, an LFS object) stay fast, so a restart
    # finishes an interrupted unit before the next kill.
    box = one_at_a_time(tmp_path / "route", shards=4)
    try:
        assert box.hub is not None and box.drive is not None
        box.hub.bandwidth_cap = 1 * MiB
        box.drive.settings.download_bandwidth = 1 * MiB
        added = box.relayctl("add", REPO, "--every", "10s")
        assert added.returncode == 0, added.stderr
        catalogue = Catalogue(box)
        rng = random.Random(20261126)
        # Twenty random moments spread over the whole route: one in each twentieth of its progress.
        moments = [(index + rng.random()) / 21 for index in range(20)]
        kills: list[tuple[float, set[str]]] = []
        cut: set[tuple[int, int]] = set()  # the pieces the previous kill interrupted
        for moment in moments:
            if catalogue.snapshot_done(box.head):
                break
            daemon = box.start_daemon()
            wait_for(lambda: serving(box) > len(kills), 60, "the start", box.log_path)
            time.sleep(1.0)  # at least one second of work between kills
            deadline = time.monotonic() + 60
            # The moment: when the route's progress reaches it, and once the pieces the previous kill
            # cut have been moved again (a kill costs at most the pieces in flight; this checks that,
            # rather than what two kills in a row inside one retried piece would cost).
            while time.monotonic() < deadline and (
                catalogue.progress(box.head) < moment or cut & catalogue.in_flight()
            ):
                time.sleep(0.05)
            running = {t.hop for t in catalogue.transfers() if t.state == RUNNING}
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(30)
            kills.append((catalogue.progress(box.head), running))
            cut = catalogue.in_flight()
        daemon = box.start_daemon()
        try:
            wait_for(
                lambda: catalogue.snapshot_done(box.head), 240, "the snapshot after the crashes", box.log_path
            )
        finally:
            box.stop_daemon(daemon)
        assert len(kills) == 20, f"the route finished after only {len(kills)} kills: {kills}"
        hit = set().union(*(running for _, running in kills))
        assert {"download", "vm_pull"} <= hit and len(hit) >= 3, kills
        assert kills[0][0] < 0.2 and kills[-1][0] > 0.8, f"the kills did not spread over the route: {kills}"
        rows, extra = box.verify()
        assert all(row.ok for row in rows), rows
        assert not extra
        hops = {t.id: t.hop for t in catalogue.transfers()}
        resent = [(hops[p.transfer_id], p.idx, p.sends) for p in catalogue.pieces() if p.sends > 2]
        assert not resent, f"pieces moved more than twice: {resent}; kills: {kills}"
        assert not [t for t in catalogue.transfers() if t.state == RUNNING]
        assert all(t.state == DONE for t in catalogue.transfers())
    finally:
        box.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_a_full_staging_disk_blocks_then_resumes_when_space_comes_back(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(staging)], check=True)
    box = RouteSandbox(tmp_path / "route", shards=2, shard_size=3 * MiB, ssh=False, piece_size="256 KiB")
    try:
        box.start()
        box.write_config(extra="")
        # A download-only route keeps its staged copies (a verified mirror), so the disk stays full.
        text = box.config_path.read_text().replace(f'dir = "{box.root / "staging"}"', f'dir = "{staging}"')
        box.config_path.write_text(text)
        assert box.relayctl("add", REPO, "--route", "download", "--every", "10s").returncode == 0
        daemon = box.start_daemon()
        catalogue = Catalogue(box)
        try:
            wait_for(
                lambda: any(t.state == "blocked" and t.error_class == "disk" for t in catalogue.transfers()),
                120,
                "a transfer blocked by the full disk",
                box.log_path,
            )
            status = box.relayctl("status", REPO).stdout
            assert "no space left" in status and "free space" in status
            done_before = {(p.transfer_id, p.idx) for p in catalogue.pieces() if p.done}
            subprocess.run(["mount", "-o", "remount,size=64m", str(staging)], check=True)
            wait_for(
                lambda: catalogue.snapshot_done(box.head), 120, "the resume after freeing space", box.log_path
            )
        finally:
            box.stop_daemon(daemon)
        done_after = {(p.transfer_id, p.idx) for p in catalogue.pieces() if p.done}
        assert done_before <= done_after, "pieces durable before the disk filled stayed done"
        assert max(piece.sends for piece in catalogue.pieces()) <= 2
        hub = box.hub_files()
        staged = {
            path: (staging / "blobs" / digest[:2] / digest).exists() for path, digest in hub.items() if digest
        }
        assert all(staged.values()), staged
    finally:
        box.stop()
        subprocess.run(["umount", "-l", str(staging)], check=False)


def test_bytes_moved_equal_what_the_servers_received_across_kill_9s(tmp_path: Path) -> None:
    """bytes_moved of every hop equals the bytes the fake servers received (the Hub's CDN: sent),
    re-sends included, after kill -9s: exactly for every send that completed (an LFS object stored
    just before a kill included), within the cut part for a send a kill interrupted and that was
    made again."""
    box = one_at_a_time(tmp_path / "route", shards=3)
    try:
        hub, drive, git = box.hub, box.drive, box.git
        assert hub is not None and drive is not None and git is not None
        hub.bandwidth_cap = 2 * MiB
        drive.settings.download_bandwidth = 2 * MiB
        # The first LFS object is stored, then its verify is answered 429 "retry in 30 s": the
        # daemon is killed while it waits, before it recorded the object as sent.
        git.fail_next("verify", 429, retry_after=30)
        assert box.relayctl("add", REPO, "--every", "10s").returncode == 0
        catalogue = Catalogue(box)
        cuts: list[dict[tuple[int, int], int]] = []

        def kill(daemon: subprocess.Popen[bytes]) -> None:
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(30)
            cuts.append(catalogue.unfinished())

        daemon = box.start_daemon()
        wait_for(lambda: git.counters().puts_stored >= 1, 120, "the first LFS object", box.log_path)
        time.sleep(0.5)
        kill(daemon)
        git.clear_failures()
        rng = random.Random(20261127)
        for _kill in range(4):
            if catalogue.snapshot_done(box.head):
                break
            daemon = box.start_daemon()
            wait_for(lambda: serving(box) > len(cuts), 60, "the start", box.log_path)
            time.sleep(1.0 + 2.0 * rng.random())
            kill(daemon)
        daemon = box.start_daemon()
        try:
            wait_for(
                lambda: catalogue.snapshot_done(box.head), 180, "the snapshot after the kills", box.log_path
            )
        finally:
            box.stop_daemon(daemon)
        assert len(cuts) >= 3, cuts
        rows, extra = box.verify()
        assert all(row.ok for row in rows) and not extra, rows

        hops = {t.id: t.hop for t in catalogue.transfers()}
        final = {(p.transfer_id, p.idx): (p.sends, p.length) for p in catalogue.pieces()}
        (stored,) = [key for key in cuts[0] if hops[key[0]] == "lfs_push"]
        assert final[stored][0] == cuts[0][stored] == 1, "the stored object was not sent again"
        # What a kill may leave uncounted: a send it cut that was made again (its unsaved part), and
        # on the hops the VM agent runs, the next send the agent began before the daemon heard of it
        # (made again, or finished by the agent and then found held by the server, never counted).
        slack = dict.fromkeys(("download", "pan_upload", "vm_pull", "lfs_push"), 0)
        for cut in cuts:
            unheard: set[int] = set()
            for (transfer, idx), sends in sorted(cut.items()):
                hop = hops[transfer]
                sent_again = final[(transfer, idx)][0] > sends
                if sends and sent_again:
                    slack[hop] += final[(transfer, idx)][1]
                elif not sends and hop in ("vm_pull", "lfs_push") and transfer not in unheard:
                    unheard.add(transfer)
                    slack[hop] += final[(transfer, idx)][1]
        received = {
            "download": hub.bytes_served(),
            "pan_upload": drive.stats().put_bytes,
            "vm_pull": drive.stats().download_bytes,
            "lfs_push": git.counters().put_bytes,
        }
        for hop, count in received.items():
            moved = catalogue.bytes_moved(hop)
            assert 0 <= count - moved <= slack[hop], (hop, count, moved, slack[hop], cuts)
        assert received["lfs_push"] >= 3 * 4 * MiB
    finally:
        box.stop()


def delete_on_drive(drive: FakeDrive, file_id: str, drive_id: str) -> None:
    """Delete a file through the drive's API, as a person in the drive's app would."""
    request = urllib.request.Request(
        f"{drive.api_url}/v2/file/delete",
        data=json.dumps({"drive_id": drive_id, "file_id": file_id}).encode(),
        headers={"Authorization": f"Bearer {drive.issue_access_token()}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 204


def test_content_relayed_for_one_repo_is_taken_from_the_drive_for_another(tmp_path: Path) -> None:
    """A second repo sharing a shard with a relayed one, after staging released it: the Hub's CDN
    serves it no second time (the drive copy is reused, and shown so), and the repo ends verified at
    its destination. A third, after the drive copy was deleted, downloads it again."""
    box = RouteSandbox(tmp_path / "route", shards=2, shard_size=1 * MiB, ssh=False, piece_size="256 KiB")
    box.start()
    try:
        hub, drive, git = box.hub, box.drive, box.git
        assert hub is not None and drive is not None and git is not None
        shard = hub.file(REPO, "model-00001-of-00002.safetensors", box.head)
        data = hub.blob_path(shard.sha256).read_bytes()
        daemon = box.start_daemon()
        catalogue = Catalogue(box)
        try:
            assert box.relayctl("add", REPO, "--every", "10s").returncode == 0
            wait_for(lambda: catalogue.snapshot_done(box.head), 120, "the first repo", box.log_path)
            assert not [p for p in (box.root / "staging" / "blobs").rglob("*") if p.is_file()]
            assert hub.bytes_served(shard.sha256) == len(data)

            for name in ("other", "third"):
                if name == "third":
                    copy = drive.lookup(f"/relayd/{REPO}/{shard.path}", drive_id=drive.user.resource_drive_id)
                    assert copy is not None
                    delete_on_drive(drive, copy.file_id, copy.drive_id)
                git.new_repo("demo", name)
                commit = hub.create_repo(
                    f"demo/{name}", files={"weights.safetensors": data, "README.md": b"#\n"}
                )
                assert box.relayctl("add", f"demo/{name}", "--every", "10s").returncode == 0
                wait_for(
                    lambda commit=commit: catalogue.snapshot_done(commit), 120, f"demo/{name}", box.log_path
                )
                assert git.read_object("demo", name, shard.sha256) == data
                assert git.show_file("demo", name, "weights.safetensors") == lfs_pointer(
                    shard.sha256, len(data)
                )
                whereis = json.loads(
                    box.relayctl("whereis", f"demo/{name}", "weights.safetensors", "--json").stdout
                )
                (located,) = whereis["files"]
                download = next(h for h in located["hops"] if h["hop"] == "download")
                if name == "other":
                    # Not fetched again: download and pan_upload were satisfied by the drive copy.
                    assert hub.bytes_served(shard.sha256) == len(data)
                    assert download["location"]["reason"] == f"reused drive copy of {shard.sha256}"
                    assert located["drive"]["path"] == f"/relayd/{REPO}/{shard.path}"
                    status = json.loads(box.relayctl("status", f"demo/{name}", "--json").stdout)
                    (weights,) = [f for f in status["files"] if f["path"] == "weights.safetensors"]
                    assert [h["skipped"] for h in weights["hops"]][:2] == [True, True]
                else:
                    # The drive copy was deleted: fetched from the Hub again, uploaded to its own folder.
                    assert hub.bytes_served(shard.sha256) == 2 * len(data)
                    assert "reused" not in download["location"]
                    assert located["drive"]["path"] == f"/relayd/demo/{name}/weights.safetensors"
                    assert "is gone (the drive answers not found)" in box.log_path.read_text()
        finally:
            box.stop_daemon(daemon)
    finally:
        box.stop()
