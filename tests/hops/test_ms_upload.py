"""The ms_upload hop with the real engine, store and agent against the sandbox's ModelScope HTTP API.

The catalogue is seeded through the Store: a snapshot is recorded and the earlier hop's transfers
(download for a route straight from staging, vm_pull for one through the VM) are completed with
handles pointing at files placed in staging or a VM directory; the commit is read back with the real
git and git-lfs from the same server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from relayd.assembly import end_asker, hop_rules
from relayd.catalogue import migrate, queries
from relayd.catalogue.schema import BLOCKED, DONE, PENDING, RUNNING, WAITING, File, Repo, Transfer
from relayd.catalogue.store import FileSpec, RepoSpec, Store, new_owner_id
from relayd.cli.status_view import detail_lines
from relayd.config import parse_config
from relayd.engine import Engine, EngineSettings
from relayd.hops import load_hop_class
from relayd.hops.base import HopContext, Services
from relayd.poll import Poller, Source
from relayd.staging import Staging
from relayd.vm.executor import make_executor
from relayd_sandbox.gitlfs import GitLfsServer
from relayd_sandbox.sshd import SandboxSshd
from relayd_sandbox.systools import require_git_lfs
from tests.support.argvwatch import ArgvWatch
from tests.support.hermetic_git import GitClient, hermetic_git

require_git_lfs()

pytestmark = pytest.mark.timeout(180)

OWNER = "relay"
HF_REPO = "acme/model"
HOP = "ms_upload"
FROM_STAGING = ("download", HOP)
FROM_VM = ("vm_pull", HOP)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class UploadWorld:
    """A catalogue, staging, a VM directory, the ms_upload hop and an engine, against one server."""

    def __init__(self, root: Path, server: GitLfsServer, vm: dict[str, Any] | None = None) -> None:
        self.root = root
        self.server = server
        self.vm_root = root / "vm"
        self.vm_root.mkdir(parents=True)
        self.token_file = root / "ms-token"
        self.token_file.write_text(server.token + "\n")
        self.token_file.chmod(0o600)
        self.store = Store(f"sqlite:///{root / 'catalogue.db'}")
        migrate.ensure_schema(self.store.engine, auto_upgrade=False)
        config = parse_config(
            {
                "daemon": {"state_dir": str(root / "state")},
                "catalogue": {"url": f"sqlite:///{root / 'catalogue.db'}"},
                "staging": {"dir": str(root / "staging"), "max_bytes": "10 GB", "min_free": "0"},
                "retry": {"initial": "0.05s", "maximum": "0.5s"},
                "vm": {**(vm or {"executor": "local"}), "root": str(self.vm_root)},
                "modelscope": {
                    "remote": server.base_url + "/{owner}/{name}.git",
                    "token_file": str(self.token_file),
                },
            },
            root / "relayd.toml",
        )
        self.config = config
        self.staging = Staging(config.staging)
        services = Services({"vm": lambda: make_executor(config.vm)})
        ctx = HopContext(
            self.store, self.staging, config.daemon.state_dir, threading.Event(), new_owner_id(), services
        )
        self.hop = load_hop_class(HOP)(config.section_for(HOP), ctx)
        self.store.rules = hop_rules({HOP: self.hop})
        settings = EngineSettings(workers=4, lease=30, idle_wait=0.05, retry=config.retry, limits={HOP: 2})
        self.engine = Engine(self.store, self.staging, {HOP: self.hop}, ctx, settings)
        self.route: tuple[str, ...] = FROM_STAGING

    def add_repo(
        self, route: tuple[str, ...], name: str = "model", hf_repo: str = HF_REPO, **options: Any
    ) -> None:
        self.route = route
        destinations = {"modelscope_repo": f"{OWNER}/{name}"}
        spec = RepoSpec(name=hf_repo, every=3600, route=route, destinations=destinations, options=options)
        self.store.add_repo(spec, replace=True)

    def snapshot(self, files: dict[str, bytes], commit: str, hf_repo: str = HF_REPO) -> None:
        """Record a snapshot of *files* and complete the hop before ms_upload for each new file."""
        repo = self.store.repo(hf_repo)
        assert repo is not None
        self.store.record_snapshot(repo.id, commit, specs_of(files))
        self.seed(files, commit, hf_repo)

    def poll(self, files: dict[str, bytes], commit: str, hf_repo: str = HF_REPO) -> None:
        """Poll a snapshot of *files* as the daemon does (the route's end asked first), then complete
        the hop before ms_upload for each file that needs it."""
        poller = Poller(
            self.store,
            {"hub": ListedSource(commit, specs_of(files))},
            {"download": "hub"},
            ask_end=end_asker(self.config, {HOP: self.hop}),
        )
        repo = self.store.repo(hf_repo)
        assert repo is not None
        assert poller.poll(repo).error is None
        self.seed(files, commit, hf_repo)

    def seed(self, files: dict[str, bytes], commit: str, hf_repo: str) -> None:
        """Complete the route's first hop for each file waiting for it (the file placed where it
        would land)."""
        first = self.route[0]
        while (transfer := self.store.claim(first, "seeder", 30)) is not None:
            job = self.store.load_job(transfer.id)
            assert job.file is not None
            data = files[job.file.path]
            if first == "vm_pull":
                target = self.vm_root / hf_repo / commit[:8] / job.file.path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                self.store.complete(transfer.id, "seeder", {"path": str(target)}, sha256=sha(data))
            else:
                target = self.staging.blob_path(sha(data))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                self.store.complete(
                    transfer.id, "seeder", {}, sha256=sha(data), staged_path=self.staging.relative(target)
                )

    def transfers(self) -> list[Transfer]:
        with self.store.read() as session:
            return list(session.query(Transfer).filter(Transfer.hop == HOP).order_by(Transfer.id))

    def run(self, timeout: float = 60, *, until_blocked: bool = False) -> list[Transfer]:
        deadline = time.monotonic() + timeout
        while True:
            self.engine.run_until_idle(timeout=max(0.1, deadline - time.monotonic()))
            transfers = self.transfers()
            busy = [t for t in transfers if t.state in (PENDING, RUNNING, WAITING)]
            if not busy or (until_blocked and any(t.state == BLOCKED for t in transfers)):
                return transfers
            if time.monotonic() > deadline:
                raise AssertionError(f"still busy: {[(t.id, t.state, t.last_error) for t in busy]}")
            time.sleep(0.05)

    def snapshot_transfer(self) -> Transfer:
        found = [t for t in self.transfers() if t.snapshot_id is not None]
        assert found, "no snapshot-level transfer"
        return found[-1]

    def file_transfer(self, path: str) -> Transfer:
        with self.store.read() as session:
            found = (
                session.query(Transfer)
                .join(File, File.id == Transfer.file_id)
                .filter(File.path == path, Transfer.hop == HOP)
                .order_by(Transfer.id.desc())
                .first()
            )
            assert found is not None, path
            return found

    def close(self) -> None:
        self.engine.drain(5)
        self.store.close()


def specs_of(files: dict[str, bytes]) -> list[FileSpec]:
    specs = []
    for path, data in files.items():
        lfs = path.endswith((".safetensors", ".bin"))
        blob = None if lfs else git_blob_id(data)
        specs.append(FileSpec(path, len(data), lfs, sha256=sha(data), git_blob_id=blob))
    return specs


class ListedSource(Source):
    """A source whose head and listing are given."""

    def __init__(self, head: str, listing: list[FileSpec]) -> None:
        self._head = head
        self.listing = listing

    def head(self, repo: Repo) -> str:
        return self._head

    def list_files(self, repo: Repo, commit: str) -> list[FileSpec]:
        return list(self.listing)


@pytest.fixture
def server(gitlfs_server: GitLfsServer) -> GitLfsServer:
    gitlfs_server.new_repo(OWNER, "model")
    return gitlfs_server


@pytest.fixture
def world(tmp_path: Path, server: GitLfsServer) -> Iterator[UploadWorld]:
    box = UploadWorld(tmp_path / "world", server)
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def git(tmp_path: Path, server: GitLfsServer) -> GitClient:
    return hermetic_git(tmp_path / "git-home", server.token)


FIRST = {
    "model.safetensors": os.urandom(300_000),
    "tokenizer.json": os.urandom(70_000),  # over 64 KiB, plain on HF: a blob on ModelScope
    "vocab.txt": b"a\nb\nc\n",
    "README.md": b"# acme/model\n",
    "config.json": b'{"hidden_size": 8}\n',
    ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
}


@pytest.mark.parametrize("route", [FROM_STAGING, FROM_VM], ids=["from-staging", "from-vm"])
def test_round_trip_then_a_second_snapshot_sends_only_what_changed(
    world: UploadWorld, server: GitLfsServer, git: GitClient, tmp_path: Path, route: tuple[str, ...]
) -> None:
    world.add_repo(route)
    world.snapshot(FIRST, "1" * 40)
    world.run()
    assert all(t.state == DONE for t in world.transfers())
    finish = world.snapshot_transfer().handles
    assert finish["commits"] == [server.branch_head(OWNER, "model")]
    assert (finish["repo"], finish["branch"], finish["endpoint"]) == (
        f"{OWNER}/model",
        "master",
        server.base_url,
    )
    model = world.file_transfer("model.safetensors").handles
    assert model == {
        "oid": sha(FIRST["model.safetensors"]),
        "size": 300_000,
        "skipped": False,
        "sent": 300_000,
    }
    assert world.file_transfer("README.md").handles["plain"] is True
    tree = git.clone_tree(server.remote_url(OWNER, "model"), tmp_path / "clone1")
    for path, data in FIRST.items():
        if path != ".gitattributes":
            assert tree[path] == sha(data), path
    attributes = (tmp_path / "clone1" / ".gitattributes").read_text()
    assert "*.safetensors filter=lfs" in attributes and "/tokenizer.json filter=lfs" in attributes
    assert server.modelscope.commits[-1][2] == len(FIRST)
    sent_before = server.counters().put_bytes

    second = dict(FIRST, **{"model.safetensors": os.urandom(200_000)})
    del second["vocab.txt"]
    world.snapshot(second, "2" * 40)
    world.run()
    assert all(t.state == DONE for t in world.transfers())
    assert server.counters().put_bytes - sent_before == 200_000  # only the changed blob
    tree = git.clone_tree(server.remote_url(OWNER, "model"), tmp_path / "clone2")
    assert "vocab.txt" not in tree
    assert tree["model.safetensors"] == sha(second["model.safetensors"])


def test_blobs_modelscope_holds_for_any_repo_are_not_sent(
    world: UploadWorld, server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    files = {
        "a.safetensors": os.urandom(250_000),
        "b.safetensors": os.urandom(260_000),
        "README.md": b"# x\n",
    }
    server.new_repo("someone", "mirror")
    for path in ("a.safetensors", "b.safetensors"):
        server.store_object("someone", "mirror", files[path])
    world.add_repo(FROM_STAGING)
    world.snapshot(files, "3" * 40)
    world.run()
    assert all(t.state == DONE for t in world.transfers())
    assert server.counters().put_bytes == 0
    assert world.file_transfer("a.safetensors").handles["skipped"] is True
    tree = git.clone_tree(server.remote_url(OWNER, "model"), tmp_path / "clone")
    assert tree["b.safetensors"] == sha(files["b.safetensors"])


def test_a_blob_over_the_size_limit_blocks_saying_split_the_file(
    world: UploadWorld, server: GitLfsServer
) -> None:
    server.max_object_size = 100_000
    world.add_repo(FROM_STAGING)
    world.snapshot({"huge.safetensors": os.urandom(150_000), "README.md": b"# x\n"}, "4" * 40)
    transfers = world.run(until_blocked=True)
    blocked = [t for t in transfers if t.state == BLOCKED]
    assert [t.error_class for t in blocked] == ["too_large"]
    assert "split the file" in (blocked[0].last_error or "")
    assert "split" in (blocked[0].hint or "")


def test_a_rate_limited_commit_waits_and_the_token_never_shows(
    world: UploadWorld, server: GitLfsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.fail_next("ms_commit", 429, message="Too many commits", retry_after=1)
    world.add_repo(FROM_STAGING)
    world.snapshot({"w.safetensors": os.urandom(100_000), "config.json": b"{}\n"}, "5" * 40)
    world.run()
    assert world.snapshot_transfer().state == DONE
    assert any("Too many commits" in r.getMessage() for r in caplog.records)
    token = server.token
    assert token not in caplog.text
    assert token.encode() not in (world.root / "catalogue.db").read_bytes()
    for entry in server.request_log.snapshot():
        assert token not in entry.path


def _hop_transfers(world: UploadWorld, hop: str) -> dict[str, Transfer]:
    with world.store.read() as session:
        rows = (
            session.query(Transfer, File).join(File, File.id == Transfer.file_id).filter(Transfer.hop == hop)
        )
        return {file.path: transfer for transfer, file in rows}


HELD = {
    "model-00001-of-00002.safetensors": os.urandom(220_000),
    "model-00002-of-00002.safetensors": os.urandom(230_000),
    "config.json": b'{"hidden_size": 8}\n',
}


def test_ask_the_end_first_skips_every_earlier_hop_for_what_the_destination_holds(
    world: UploadWorld, server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    server.new_repo("someone", "mirror")
    for path, data in HELD.items():
        if path.endswith(".safetensors"):
            server.store_object("someone", "mirror", data)
    world.add_repo(FROM_STAGING)
    world.poll(HELD, "6" * 40)
    downloads = _hop_transfers(world, "download")
    for path in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert downloads[path].state == DONE
        assert downloads[path].handles["asked_end"] is True
        assert downloads[path].bytes_moved == 0
    world.run()
    assert world.snapshot_transfer().state == DONE
    assert server.counters().put_bytes == 0
    uploads = _hop_transfers(world, HOP)
    assert uploads["model-00001-of-00002.safetensors"].handles["skipped"] is True
    tree = git.clone_tree(server.remote_url(OWNER, "model"), tmp_path / "clone")
    assert tree["model-00002-of-00002.safetensors"] == sha(HELD["model-00002-of-00002.safetensors"])
    assert tree["config.json"] == sha(HELD["config.json"])
    # relayctl status REPO shows it: every LFS byte avoided on both hops, and why.
    detail = queries.repo_detail(queries.SqliteReader(world.root / "catalogue.db"), HF_REPO)
    assert detail is not None
    lfs_bytes = sum(len(data) for path, data in HELD.items() if path.endswith(".safetensors"))
    reasons = {(item.hop, item.reason): item.bytes for item in detail.avoided.snapshot}
    assert reasons == {("download", "destination_had_it"): lfs_bytes, (HOP, "server_had_it"): lfs_bytes}
    text = "\n".join(detail_lines(detail, datetime.now(UTC)))
    assert "skipped (destination had it)" in text
    assert "bytes avoided, this snapshot" in text


def test_a_repo_that_keeps_copies_moves_every_file(world: UploadWorld, server: GitLfsServer) -> None:
    server.new_repo("someone", "mirror")
    server.store_object("someone", "mirror", HELD["model-00001-of-00002.safetensors"])
    world.add_repo(FROM_STAGING, keep_copies=True)
    world.poll(HELD, "7" * 40)
    downloads = _hop_transfers(world, "download")
    assert all(not t.handles.get("asked_end") for t in downloads.values())


def test_the_token_is_in_no_process_argv_while_a_blob_goes_up(
    world: UploadWorld, server: GitLfsServer
) -> None:
    """Read from /proc while a throttled PUT runs: no process's command line holds the token."""
    world.add_repo(FROM_STAGING)
    world.snapshot({"w.safetensors": os.urandom(3 * 1024 * 1024), "README.md": b"# t\n"}, "8" * 40)
    server.put_bytes_per_second = 1024 * 1024
    with ArgvWatch((b"relayd-agent", b"relayd.vm.agent"), server.token.encode()) as watch:
        world.run()
    assert world.snapshot_transfer().state == DONE
    assert watch.leaks == []
    assert watch.seen, "the scan never saw the agent"


def test_blobs_go_up_from_a_vm_reached_over_ssh(
    tmp_path: Path, server: GitLfsServer, sshd: SandboxSshd, git: GitClient
) -> None:
    """The VM over OpenSSH: the agent is shipped as a zip and uploads from the VM's files, no git."""
    vm = {"executor": "ssh", "host": sshd.host, "ssh_config_file": str(sshd.ssh_config_file)}
    world = UploadWorld(tmp_path / "world", server, vm=vm)
    try:
        world.add_repo(FROM_VM)
        files = {"model.safetensors": os.urandom(150_000), "README.md": b"# over ssh\n"}
        world.snapshot(files, "c" * 40)
        world.run(timeout=120)
        finish = world.snapshot_transfer()
        assert finish.state == DONE, finish.last_error
        tree = git.clone_tree(server.remote_url(OWNER, "model"), tmp_path / "clone")
        assert tree["model.safetensors"] == sha(files["model.safetensors"])
        assert (world.vm_root / ".relayd-git" / "ms-inline").is_dir()  # README kept on the VM
    finally:
        world.close()
