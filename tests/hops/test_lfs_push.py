"""The lfs_push hop with the real engine, store and VM executor against the sandbox git + LFS server.

The catalogue is seeded through the Store: a snapshot is recorded and the earlier hop's transfers
(vm_pull, or download for a route without vm_pull) are completed with handles pointing at files placed
in a VM directory (or in staging), so nothing depends on the other hops.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relayd.assembly import hop_rules
from relayd.catalogue import migrate
from relayd.catalogue.schema import BLOCKED, DONE, PENDING, RUNNING, WAITING, Transfer
from relayd.catalogue.store import FileSpec, RepoSpec, Store, new_owner_id
from relayd.config import Config, parse_config
from relayd.engine import Engine, EngineSettings
from relayd.hops import load_hop_class
from relayd.hops.base import HopContext, RepoInfo, Services
from relayd.hops.lfs_push import LfsPushHop
from relayd.staging import Staging
from relayd.vm.executor import make_executor
from relayd_sandbox.gitlfs import GitLfsServer, lfs_pointer
from relayd_sandbox.sshd import SandboxSshd
from relayd_sandbox.systools import require_git_lfs
from tests.support.argvwatch import ArgvWatch
from tests.support.hermetic_git import GitClient, hermetic_git

require_git_lfs()

pytestmark = pytest.mark.timeout(180)

OWNER = "relay"
HF_REPO = "acme/model"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class PushWorld:
    """A catalogue, a VM directory, the lfs_push hop and an engine, against one sandbox server."""

    def __init__(
        self, root: Path, server: GitLfsServer, *, token: str | None = None, vm: dict[str, Any] | None = None
    ) -> None:
        self.root = root
        self.vm = vm or {"executor": "local"}
        self.server = server
        self.vm_root = root / "vm"
        self.vm_root.mkdir(parents=True)
        self.token_file = root / "ms-token"
        self.token_file.write_text((token or server.token) + "\n")
        self.token_file.chmod(0o600)
        self.store = Store(f"sqlite:///{root / 'catalogue.db'}")
        migrate.ensure_schema(self.store.engine, auto_upgrade=False)
        self.owner = new_owner_id()
        self.engine: Engine | None = None
        self.cancel = threading.Event()
        self.build()

    def config(self, **modelscope: Any) -> Config:
        data = {
            "daemon": {"state_dir": str(self.root / "state")},
            "catalogue": {"url": f"sqlite:///{self.root / 'catalogue.db'}"},
            "staging": {"dir": str(self.root / "staging"), "max_bytes": "10 GB", "min_free": "0"},
            "retry": {"initial": "0.05s", "maximum": "0.5s"},
            "vm": {**self.vm, "root": str(self.vm_root)},
            "modelscope": {
                "remote": self.server.base_url + "/{owner}/{name}.git",
                "token_file": str(self.token_file),
                **modelscope,
            },
        }
        return parse_config(data, self.root / "relayd.toml")

    def build(self, **modelscope: Any) -> LfsPushHop:
        config = self.config(**modelscope)
        self.staging = Staging(config.staging)
        self.cancel = threading.Event()
        services = Services({"vm": lambda: make_executor(config.vm)})
        ctx = HopContext(self.store, self.staging, config.daemon.state_dir, self.cancel, self.owner, services)
        hop = load_hop_class("lfs_push")(config.section_for("lfs_push"), ctx)
        assert isinstance(hop, LfsPushHop)
        self.hop = hop
        self.store.rules = hop_rules({"lfs_push": hop})
        settings = EngineSettings(
            workers=4, lease=30, idle_wait=0.05, retry=config.retry, limits={"lfs_push": 2}
        )
        if self.engine is not None:
            self.engine.drain(5)
        self.engine = Engine(self.store, self.staging, {"lfs_push": hop}, ctx, settings)
        return hop

    # -- seeding -----------------------------------------------------------------------------------

    def add_repo(self, route: tuple[str, ...] = ("vm_pull", "lfs_push"), name: str = "model") -> None:
        self.route = route
        self.store.add_repo(
            RepoSpec(
                name=HF_REPO, every=3600, route=route, destinations={"modelscope_repo": f"{OWNER}/{name}"}
            ),
            replace=True,
        )

    def snapshot(self, files: dict[str, bytes], commit: str, held: set[str] | None = None) -> int:
        """Record a snapshot of *files* (the sha256s in *held* skip to lfs_push: the server holds them)
        and complete the hop before lfs_push for each new file that needs it."""
        repo = self.store.repo(HF_REPO)
        assert repo is not None
        specs = []
        for path, data in files.items():
            lfs = path.endswith((".safetensors", ".bin"))
            specs.append(
                FileSpec(
                    path, len(data), lfs, sha256=sha(data), git_blob_id=None if lfs else git_blob_id(data)
                )
            )
        snapshot = self.store.record_snapshot(repo.id, commit, specs, held=held or set()).snapshot_id
        first = self.route[0]
        while (transfer := self.store.claim(first, "seeder", 30)) is not None:
            job = self.store.load_job(transfer.id)
            assert job.file is not None
            data = files[job.file.path]
            if first == "vm_pull":
                target = self.vm_root / HF_REPO / commit[:8] / job.file.path
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
        return snapshot

    # -- running -----------------------------------------------------------------------------------

    def transfers(self, hop: str = "lfs_push") -> list[Transfer]:
        with self.store.read() as session:
            return list(session.query(Transfer).filter(Transfer.hop == hop).order_by(Transfer.id))

    def run(self, timeout: float = 60, *, until_blocked: bool = False) -> list[Transfer]:
        assert self.engine is not None
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
        from relayd.catalogue.schema import File

        with self.store.read() as session:
            found = (
                session.query(Transfer)
                .join(File, File.id == Transfer.file_id)
                .filter(File.path == path, Transfer.hop == "lfs_push")
                .order_by(Transfer.id.desc())
                .first()
            )
            assert found is not None, path
            return found

    def sends(self, path: str) -> int:
        """Return how often the lfs_push piece of *path* was sent."""
        from relayd.catalogue.schema import Piece

        transfer = self.file_transfer(path)
        with self.store.read() as session:
            return sum(p.sends for p in session.query(Piece).filter(Piece.transfer_id == transfer.id))

    def close(self) -> None:
        if self.engine is not None:
            self.engine.drain(5)
        self.store.close()


@pytest.fixture
def server(gitlfs_server: GitLfsServer) -> GitLfsServer:
    gitlfs_server.new_repo(OWNER, "model")
    return gitlfs_server


@pytest.fixture
def world(tmp_path: Path, server: GitLfsServer) -> Iterator[PushWorld]:
    box = PushWorld(tmp_path / "world", server)
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def git(tmp_path: Path, server: GitLfsServer) -> GitClient:
    return hermetic_git(tmp_path / "git-home", server.token)


FIRST = {
    "model.safetensors": os.urandom(300_000),
    "tokenizer.json": os.urandom(70_000),  # over 64 KiB, plain on HF: LFS on ModelScope
    "vocab.txt": b"a\nb\nc\n",
    "README.md": b"# acme/model\n",
    "config.json": b'{"hidden_size": 8}\n',
    ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
}


def test_round_trip_then_a_second_snapshot_sends_only_what_changed(
    world: PushWorld, server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    world.add_repo()
    world.snapshot(FIRST, "1" * 40)
    world.run()
    assert all(t.state == DONE for t in world.transfers())
    finish = world.snapshot_transfer()
    commit = finish.handles["commit"]
    assert server.branch_head(OWNER, "model") == commit
    assert finish.handles["remote"] == server.remote_url(OWNER, "model")
    assert finish.handles["branch"] == "master"
    model = world.file_transfer("model.safetensors").handles
    assert model == {
        "oid": sha(FIRST["model.safetensors"]),
        "size": 300_000,
        "skipped": False,
        "sent": 300_000,
    }
    assert world.file_transfer("README.md").handles["plain"] is True
    tree = git.clone_tree(server.remote_url(OWNER, "model"), tmp_path / "clone1")
    assert {k: v for k, v in tree.items() if k != ".gitattributes"} == {
        k: sha(v) for k, v in FIRST.items() if k != ".gitattributes"
    }
    for path in ("README.md", "config.json", "vocab.txt"):
        assert server.show_file(OWNER, "model", path) == FIRST[path]
    for path in ("model.safetensors", "tokenizer.json"):
        assert server.show_file(OWNER, "model", path) == lfs_pointer(sha(FIRST[path]), len(FIRST[path]))
    message = git.run("log", "-1", "--format=%B", cwd=tmp_path / "clone1").stdout
    assert HF_REPO in message and "1" * 40 in message

    # Second snapshot: the model changes, vocab.txt goes, tokenizer.json moves (same content).
    before = server.counters()
    second = dict(FIRST)
    second["model.safetensors"] = os.urandom(300_000)
    del second["vocab.txt"]
    second["tok/tokenizer.json"] = second.pop("tokenizer.json")
    world.snapshot(second, "2" * 40)
    world.run()
    after = server.counters()
    assert after.put_bytes - before.put_bytes == 300_000  # only the changed object
    assert world.file_transfer("tok/tokenizer.json").handles["skipped"] is True
    assert world.sends("tok/tokenizer.json") == 0  # skipped: nothing was sent
    finish2 = world.snapshot_transfer()
    assert finish2.handles["parent"] == commit
    tree2 = git.clone_tree(server.remote_url(OWNER, "model"), tmp_path / "clone2")
    assert {k: v for k, v in tree2.items() if k != ".gitattributes"} == {
        k: sha(v) for k, v in second.items() if k != ".gitattributes"
    }
    assert "vocab.txt" not in tree2 and "tokenizer.json" not in tree2


def test_the_token_never_shows(
    world: PushWorld, server: GitLfsServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Not in any process's argv during a push (read from /proc), not in .git/config, not in logs,
    not in the catalogue."""
    caplog.set_level(logging.DEBUG)
    world.add_repo()
    files = {"model.safetensors": os.urandom(4 * 1024 * 1024), "README.md": b"# m\n"}
    world.snapshot(files, "3" * 40)
    server.put_bytes_per_second = 2 * 1024 * 1024
    token = server.token.encode()
    with ArgvWatch((b"git", b"relayd-agent"), token) as watch:
        world.run()
    assert world.snapshot_transfer().state == DONE
    assert watch.leaks == []
    assert any("push" in argv for argv in watch.seen), "the scan never saw the git push"
    assert any("relayd-agent" in argv for argv in watch.seen)
    # git runs with the activity timeout raised for big objects (config: 1h), and the credential
    # helper reads the token from the environment.
    assert any("lfs.activitytimeout=3600" in argv for argv in watch.seen if "push" in argv)
    assert any("$RELAYD_MS_TOKEN" in argv for argv in watch.seen if "push" in argv)
    for config in (world.root / "vm").rglob("config"):
        assert token not in config.read_bytes()
    scratch_configs = list((world.root / "vm" / ".relayd-git").rglob("config"))
    assert scratch_configs
    for path in (world.root / "vm" / ".relayd-git").rglob("*"):
        if path.is_file():
            assert token not in path.read_bytes(), path
    assert server.token not in caplog.text
    with world.store.read() as session:
        handles = [t.handles for t in session.query(Transfer)]
    assert server.token not in json.dumps(handles)


def test_an_interrupted_upload_resumes_by_object(world: PushWorld, server: GitLfsServer) -> None:
    """The daemon stops mid-object: the objects done are not sent again, the interrupted one starts
    again from byte 0, and the snapshot completes."""
    world.add_repo()
    small = {f"small-{i}.bin": os.urandom(50_000) for i in range(3)}
    big = os.urandom(24 * 1024 * 1024)
    world.snapshot({**small, "big.safetensors": big}, "4" * 40)
    server.put_bytes_per_second = 4 * 1024 * 1024

    def stop_mid_object() -> None:
        deadline = time.monotonic() + 60
        while server.counters().put_bytes_by_oid.get(sha(big), 0) < 1_000_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.drain(15)  # the daemon is stopping: stop claiming, cancel, wait

    engine = world.engine
    assert engine is not None
    stopper = threading.Thread(target=stop_mid_object)
    stopper.start()
    engine.run_until_idle(timeout=90)
    stopper.join()
    server.put_bytes_per_second = None
    assert server.wait_idle()
    first = server.counters().put_bytes_by_oid
    assert 0 < first[sha(big)] < len(big)
    assert world.file_transfer("big.safetensors").state == PENDING  # given back, not failed

    world.build()
    world.run()
    assert world.snapshot_transfer().state == DONE
    second = server.counters().put_bytes_by_oid
    for data in small.values():
        assert second[sha(data)] == len(data)  # each small object went up once
    assert second[sha(big)] == first[sha(big)] + len(big)
    assert server.read_object(OWNER, "model", sha(big)) == big
    assert world.sends("big.safetensors") == 2  # the piece (the object) was sent twice
    assert {world.sends(path) for path in small} == {1}


def test_a_link_that_keeps_damaging_uploads_blocks_after_the_second_send(
    world: PushWorld, server: GitLfsServer
) -> None:
    """Every PUT arrives with a byte flipped and the server refuses it (422): the object is sent
    exactly twice, then blocked with the oid, the sha256 the server measured, and where."""
    world.add_repo()
    data = os.urandom(300_000)
    world.snapshot({"model.safetensors": data, "README.md": b"# m\n"}, "6" * 40)
    server.corrupt_puts = 1000
    world.run(until_blocked=True)
    transfer = world.file_transfer("model.safetensors")
    assert transfer.state == BLOCKED and transfer.error_class == "integrity"
    error = transfer.last_error or ""
    assert error.startswith("sha256 mismatch measured by the LFS server after lfs_push, twice in a row")
    expected, got = re.findall(r"expected ([0-9a-f]{64}), got ([0-9a-f]{64})", error)[0]
    assert expected == sha(data) and got != expected
    assert "file they are sent from is intact" in (transfer.hint or "")
    assert server.wait_idle()
    counters = server.counters()
    assert (counters.puts, counters.puts_stored, counters.put_bytes) == (2, 0, 2 * len(data))
    assert world.sends("model.safetensors") == 2
    assert server.objects(OWNER, "model") == {}


def test_the_server_down_for_a_while_then_success(
    world: PushWorld, server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    world.add_repo()
    files = {"model.safetensors": os.urandom(200_000), "README.md": b"# m\n"}
    world.snapshot(files, "5" * 40)
    server.stop()
    restarter = threading.Timer(2.0, server.start)
    restarter.start()
    try:
        world.run(timeout=90)
    finally:
        restarter.join()
    assert world.snapshot_transfer().state == DONE
    tree = git.clone_tree(server.remote_url(OWNER, "model"), tmp_path / "clone")
    assert tree["model.safetensors"] == sha(files["model.safetensors"])


@pytest.mark.parametrize(
    ("problem", "error_class", "hint"),
    [
        ("token", "auth", "token"),
        ("repo", "not_found", "create the model repo relay/missing"),
        ("quota", "quota", "quota"),
        ("no_owner", "config", "OWNER/NAME"),
    ],
)
def test_what_only_a_person_can_fix_blocks_with_a_hint(
    tmp_path: Path, server: GitLfsServer, problem: str, error_class: str, hint: str
) -> None:
    wrong = "wrong-token-" + secrets.token_hex(8)
    world = PushWorld(tmp_path / "world", server, token=wrong if problem == "token" else None)
    try:
        name = {"repo": "missing", "no_owner": ""}.get(problem, "model")
        world.add_repo(name=name)
        if problem == "no_owner":
            world.store.add_repo(
                RepoSpec(
                    name=HF_REPO, every=3600, route=world.route, destinations={"modelscope_repo": "noowner"}
                ),
                replace=True,
            )
        if problem == "quota":
            server.fail_next("batch", 507, message="quota exceeded")
        world.snapshot({"model.safetensors": os.urandom(10_000)}, "6" * 40)
        transfers = world.run(until_blocked=True)
        blocked = [t for t in transfers if t.state == BLOCKED]
        assert blocked, [(t.state, t.last_error) for t in transfers]
        assert blocked[0].error_class == error_class
        assert hint in (blocked[0].hint or "")
        assert "relayctl retry" in (blocked[0].hint or "") or problem == "no_owner"
        assert wrong not in (blocked[0].last_error or "") and server.token not in (
            blocked[0].last_error or ""
        )
    finally:
        world.close()


def test_a_missing_token_blocks(world: PushWorld) -> None:
    world.token_file.write_text("")
    world.add_repo()
    world.snapshot({"model.safetensors": os.urandom(1000)}, "7" * 40)
    transfers = world.run(until_blocked=True)
    assert transfers[0].state == BLOCKED and transfers[0].error_class == "auth"
    assert "MODELSCOPE_TOKEN" in (transfers[0].hint or "")


def test_the_remote_moved_so_the_commit_is_rebuilt_on_top(
    world: PushWorld, server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    world.add_repo()
    raced: list[str] = []

    def race(owner: str, name: str, path: str, service: str) -> None:
        if service == "git-receive-pack" and not raced:
            raced.append(server.commit_server_side(OWNER, "model", {"NOTES.md": b"from the hub\n"}))

    server.before_git = race
    world.snapshot({"model.safetensors": os.urandom(90_000), "README.md": b"# m\n"}, "8" * 40)
    world.run()
    finish = world.snapshot_transfer()
    assert finish.state == DONE and raced
    assert finish.handles["parent"] == raced[0]
    tree = git.clone_tree(server.remote_url(OWNER, "model"), tmp_path / "clone")
    assert tree["NOTES.md"] == sha(b"from the hub\n")


def test_a_route_without_vm_pull_pushes_from_staging(
    world: PushWorld, server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    world.add_repo(route=("download", "lfs_push"))
    files = {"model.safetensors": os.urandom(120_000), "README.md": b"# staged\n", "vocab.txt": b"x\n"}
    world.snapshot(files, "9" * 40)
    staged = [world.staging.blob_path(sha(d)) for d in files.values()]
    assert all(p.exists() for p in staged)  # kept for lfs_push (it reads staging on this route)
    world.run()
    assert world.snapshot_transfer().state == DONE
    assert not any(p.exists() for p in staged)  # released once lfs_push had them
    tree = git.clone_tree(server.remote_url(OWNER, "model"), tmp_path / "clone")
    assert {k: v for k, v in tree.items() if k != ".gitattributes"} == {k: sha(v) for k, v in files.items()}


def test_on_a_vm_route_staging_is_not_held_for_lfs_push(world: PushWorld) -> None:
    world.add_repo(route=("download", "vm_pull", "lfs_push"))
    data = os.urandom(1000)
    repo = world.store.repo(HF_REPO)
    assert repo is not None
    world.store.record_snapshot(repo.id, "a" * 40, [FileSpec("w.bin", len(data), True, sha256=sha(data))])
    transfer = world.store.claim("download", "seeder", 30)
    assert transfer is not None
    target = world.staging.blob_path(sha(data))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    released = world.store.complete(
        transfer.id, "seeder", {}, sha256=sha(data), staged_path=world.staging.relative(target)
    )
    assert [r.staged_path for r in released] == [world.staging.relative(target)]


def test_the_push_over_ssh(tmp_path: Path, server: GitLfsServer, sshd: SandboxSshd, git: GitClient) -> None:
    """The VM reached over OpenSSH: the agent is shipped as a zip, uploads and publishes there."""
    vm = {
        "executor": "ssh",
        "host": sshd.host,
        "ssh_config_file": str(sshd.ssh_config_file),
        "path": "/usr/local/bin:/usr/bin:/bin",
    }
    world = PushWorld(tmp_path / "world", server, vm=vm)
    try:
        world.add_repo()
        files = {"model.safetensors": os.urandom(150_000), "README.md": b"# over ssh\n"}
        world.snapshot(files, "b" * 40)
        world.run(timeout=120)
        finish = world.snapshot_transfer()
        assert finish.state == DONE, finish.last_error
        assert server.branch_head(OWNER, "model") == finish.handles["commit"]
        tree = git.clone_tree(server.remote_url(OWNER, "model"), tmp_path / "clone")
        assert tree["model.safetensors"] == sha(files["model.safetensors"])
        assert (world.vm_root / ".relayd-git" / "repos").is_dir()
    finally:
        world.close()


@pytest.mark.parametrize("path", [".GIT/config", "sub/.Git/weights.bin", "w/git~1./notes.txt"])
def test_a_path_git_leaves_out_of_the_commit_blocks_the_snapshot(
    world: PushWorld, server: GitLfsServer, path: str
) -> None:
    """The poll refuses such paths; recorded anyway (straight into the catalogue, as a listing the poll
    did not check would be), git drops the path from the index with a warning and exit 0. The commit
    is checked before it is pushed: the snapshot blocks naming the path, nothing is published."""
    world.add_repo()
    world.snapshot({"model.safetensors": os.urandom(70_000), "README.md": b"# m\n", path: b"x\n"}, "c" * 40)
    transfers = world.run(until_blocked=True)
    finish = world.snapshot_transfer()
    assert finish.state == BLOCKED, [(t.state, t.last_error) for t in transfers]
    assert finish.error_class == "path"
    assert repr(path) in (finish.last_error or "")
    assert "cannot be relayed as is" in (finish.hint or "") and "--exclude" in (finish.hint or "")
    assert server.branch_head(OWNER, "model") is None


@pytest.mark.parametrize("size_limit_at", ["batch", "upload"])
def test_an_object_over_the_servers_size_limit_blocks_saying_split_the_file(
    world: PushWorld, server: GitLfsServer, size_limit_at: Any
) -> None:
    """ModelScope refuses ~100 GB objects with 413 (modelscope/modelscope#1591): in the batch answer or
    at the PUT, relayd blocks the file with what to do, not as a quota."""
    server.max_object_size, server.size_limit_at = 200_000, size_limit_at
    world.add_repo()
    world.snapshot({"model.safetensors": os.urandom(300_000), "README.md": b"# m\n"}, "d" * 40)
    world.run(until_blocked=True)
    blocked = world.file_transfer("model.safetensors")
    assert blocked.state == BLOCKED and blocked.error_class == "too_large"
    assert (blocked.last_error or "").startswith(
        "the object is larger than the server accepts: split the file"
    )
    assert "300000 bytes" in (blocked.last_error or "")
    assert "split the file" in (blocked.hint or "") and "quota" not in (blocked.hint or "")
    assert server.objects(OWNER, "model") == {}
    assert world.file_transfer("README.md").state == DONE


def test_asked_first_the_lfs_server_says_which_objects_it_holds(
    world: PushWorld, server: GitLfsServer
) -> None:
    """Ask the end first: a batch request names the objects the destination repo already stores."""
    data = os.urandom(100_000)
    held = server.store_object(OWNER, "model", data)
    repo = RepoInfo(
        name=HF_REPO, route=("download", "lfs_push"), destinations={"modelscope_repo": f"{OWNER}/model"}
    )
    assert world.hop.held(repo, [(held, len(data)), (sha(b"not there"), 9)]) == {held}
    assert world.hop.held(repo, []) == set()


def test_a_file_the_server_held_when_asked_is_committed_without_moving(
    world: PushWorld, server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    files = {"model.safetensors": os.urandom(120_000), "README.md": b"# held\n"}
    oid = server.store_object(OWNER, "model", files["model.safetensors"])
    world.add_repo(route=("download", "lfs_push"))
    world.snapshot(files, "9" * 40, held={oid})
    world.run()
    assert world.snapshot_transfer().state == DONE
    assert world.file_transfer("model.safetensors").handles == {"oid": oid, "size": 120_000, "skipped": True}
    assert server.counters().put_bytes == 0
    tree = git.clone_tree(server.remote_url(OWNER, "model"), tmp_path / "clone")
    assert tree["model.safetensors"] == sha(files["model.safetensors"])


def test_doctor_checks_each_modelscope_destination_once_from_where_it_is_pushed(tmp_path: Path) -> None:
    """lfs_push and ms_upload check each destination once per place it is pushed from; one that is not
    OWNER/NAME fails its check with the fix instead."""
    from relayd.health import FAIL, CheckScope
    from relayd.hops.lfs_push import destinations

    scope = CheckScope(
        10.0,
        Services(),
        tmp_path,
        repos=(
            RepoInfo("org/a", route=("download", "lfs_push")),
            RepoInfo("org/b", route=("download", "lfs_push"), destinations={"modelscope_repo": "org/a"}),
            RepoInfo("org/a", route=("download", "pan_upload", "vm_pull", "lfs_push")),
            RepoInfo("org/bad", route=("download", "lfs_push"), destinations={"modelscope_repo": "noowner"}),
        ),
    )
    failed: list[Any] = []
    found = list(destinations(scope, failed))
    assert found == [("modelscope org/a", "org/a", False), ("modelscope org/a", "org/a", True)]
    ((finding,),) = [check.run() for check in failed]
    assert finding.status == FAIL and "org/bad" in finding.detail and "OWNER/NAME" in finding.hint
