"""The paths git cannot hold: relayd's list (relayd.names.git_path_problem) checked against the real git,
and the poll refusing a snapshot that lists one before a byte moves."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd.catalogue import migrate
from relayd.catalogue.schema import POLL_BLOCKED, POLL_OK, File, Snapshot, SnapshotFile, Transfer
from relayd.catalogue.store import RepoSpec, Store
from relayd.config import parse_config
from relayd.errors import Permanent
from relayd.hub import HubSource
from relayd.names import git_path_problem, refuse_git_paths
from relayd.poll import Poller
from relayd_sandbox.hub import FakeHub, make_model_repo
from relayd_sandbox.systools import require_git_lfs

require_git_lfs()

# Every kind of path git refuses, with a word the reason must contain.
REFUSED = {
    "": "empty path",
    "/abs": "empty segment",
    "a//b": "empty segment",
    "a/": "empty segment",
    "./a": "'.'",
    "a/./b": "'.'",
    "a/..": "'..'",
    "../a": "'..'",
    ".git/config": "'.git' segment",
    ".GIT/config": "'.git' segment",
    "sub/.git/config": "'.git' segment",
    "a/.Git": "'.git' segment",
    "deep/er/.gIt/hooks/pre-push": "'.git' segment",
    ".git./x": "NTFS",
    ".git /x": "NTFS",
    "a/.git. ./x": "NTFS",
    "a/.git..": "NTFS",
    "git~1/config": "NTFS",
    "GIT~1/x": "NTFS",
    "a/Git~1 .": "NTFS",
    "a\\.git\\config": "NTFS",
    "x/.git\\y": "NTFS",
    "git~1\\x": "NTFS",
    ".g\u200cit/config": "HFS",
    ".gi\u200dt/x": "HFS",
    "\u200e.GIT/x": "HFS",
    "sub/.git\ufeff/x": "HFS",
    ".\u202agit\u206f/x": "HFS",
}

# Near misses git keeps: relayd must not refuse them either.
KEPT = [
    ".gitattributes",
    ".gitignore",
    ".gitmodules",
    "sub/.gitmodules",
    ".github/workflows/ci.yml",
    ".gitx",
    "foo.git/x",
    ".git~1/x",
    "git~2/x",
    "agit~1/x",
    ".git-blame-ignore-revs",
    "...",
    ".../x",
    "..a/b",
    "a\\b",
    ".GI\u200bT/x",  # U+200B is not one of the code points HFS+ ignores
    "con/aux.txt",
    "a:b",
    "x" * 300,
]


def test_the_list_names_each_refused_path() -> None:
    for path, word in REFUSED.items():
        problem = git_path_problem(path)
        assert problem is not None and word in problem, (path, problem)
    for path in KEPT:
        assert git_path_problem(path) is None, path


def _kept_by_git(repo: Path, path: str, *config: str) -> bool:
    """Return whether git keeps *path* in an index (``update-index --index-info``, as the push builds it)."""
    index = repo / "index"
    index.unlink(missing_ok=True)
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(repo),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_DIR": str(repo),
        "GIT_INDEX_FILE": str(index),
    }
    blob = (
        subprocess.run(
            ["git", "hash-object", "-w", "--stdin"], input=b"x\n", env=env, capture_output=True, check=True
        )
        .stdout.decode()
        .strip()
    )
    line = f"100644 {blob}\t{path}".encode() + b"\0"
    added = subprocess.run(
        ["git", *config, "update-index", "--add", "-z", "--index-info"],
        input=line,
        env=env,
        capture_output=True,
        check=False,
    )
    listed = subprocess.run(["git", "ls-files", "-z"], env=env, capture_output=True, check=True).stdout
    kept = path.encode() in listed.split(b"\0")
    assert kept or added.returncode != 0 or b"Ignoring path" in added.stderr, added.stderr
    return kept


def test_git_itself_refuses_every_path_on_the_list_and_keeps_the_near_misses(tmp_path: Path) -> None:
    """The list is git's, not relayd's idea of it: each refused path is dropped by the real git with its
    default settings, or, for the HFS+ forms, with core.protectHFS (git's default on macOS)."""
    repo = tmp_path / "scratch.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(repo)], check=True)
    for path, word in REFUSED.items():
        if not path:
            continue  # git cannot even be given an empty path
        by_default = _kept_by_git(repo, path)
        with_hfs = _kept_by_git(repo, path, "-c", "core.protectHFS=true")
        if word == "HFS":
            assert by_default and not with_hfs, path
        else:
            assert not by_default and not with_hfs, path
    for path in KEPT:
        assert _kept_by_git(repo, path) and _kept_by_git(repo, path, "-c", "core.protectHFS=true"), path


def test_the_refusal_names_the_path_and_how_to_leave_it_out() -> None:
    refuse_git_paths("acme/model", ["a.bin", "b.json"])
    with pytest.raises(Permanent) as caught:
        refuse_git_paths("acme/model", ["a.bin", "x[1]/.GIT/config", "sub/.git/hooks"])
    assert "'x[1]/.GIT/config'" in str(caught.value)
    assert caught.value.error_class == "path"
    assert "cannot be relayed as is" in caught.value.hint
    assert "relayctl add acme/model --replace --exclude 'x[[]1]/.GIT/config'" in caught.value.hint


# -- at the poll ---------------------------------------------------------------------------------------


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    with FakeHub(tmp_path / "hub") as fake:
        yield fake


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    catalogue = Store(f"sqlite:///{tmp_path / 'catalogue.db'}")
    migrate.ensure_schema(catalogue.engine, auto_upgrade=False)
    yield catalogue
    catalogue.close()


def _poller(hub: FakeHub, store: Store, tmp_path: Path) -> Poller:
    config = parse_config(
        {"hub": {"endpoint": hub.endpoint, "token_env": "RELAYD_TEST_UNSET"}}, tmp_path / "c.toml"
    )
    return Poller(store, {"hub": HubSource(config.hub)}, {"download": "hub"})


ROUTE = ("download", "pan_upload", "vm_pull", "lfs_push")


@pytest.mark.parametrize("path", ["sub/.git/config", ".GIT/config", "a/.Git", "w/git~1/x", "w/.git. /x"])
def test_the_poll_refuses_a_snapshot_git_cannot_hold_until_the_path_is_excluded(
    hub: FakeHub, store: Store, tmp_path: Path, path: str
) -> None:
    make_model_repo(hub, "acme/model", shards=1, shard_size=1024)
    hub.commit("acme/model", {path: b"[core]\n\tfsmonitor = touch /tmp/pwned\n"}, allow_unsafe_paths=True)
    store.add_repo(RepoSpec(name="acme/model", every=3600, route=ROUTE))
    poller = _poller(hub, store, tmp_path)
    repo = store.repo("acme/model")
    assert repo is not None

    result = poller.poll(repo)

    repo = store.repo("acme/model")
    assert repo is not None and repo.poll_state == POLL_BLOCKED
    assert result.error is not None and repr(path) in result.error and "git cannot hold" in result.error
    assert "cannot be relayed as is" in (repo.poll_hint or "") and "--exclude" in (repo.poll_hint or "")
    with store.read() as session:
        assert session.query(Snapshot).one().state == "refused"
        assert session.query(Transfer).count() == 0, "nothing may move"

    # As the hint says: exclude the path, and the snapshot is relayed without it.
    pattern = path.rsplit("/", 1)[0] + "/*" if "/" in path else path
    store.add_repo(RepoSpec(name="acme/model", every=3600, route=ROUTE, exclude=(pattern,)), replace=True)
    repo = store.repo("acme/model")
    assert repo is not None
    result = poller.poll(repo)
    repo = store.repo("acme/model")
    assert result.error is None and result.snapshot_id is not None
    assert repo is not None and repo.poll_state == POLL_OK
    with store.read() as session:
        relayed = {
            row.path
            for row in session.query(File)
            .join(SnapshotFile, SnapshotFile.file_id == File.id)
            .filter(SnapshotFile.snapshot_id == result.snapshot_id)
        }
    assert relayed == set(hub.files("acme/model")) - {path}
