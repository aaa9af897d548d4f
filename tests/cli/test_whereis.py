"""relayctl whereis: each file's verified copies from the location log, as text and as the documented
JSON, narrowed to a path, across snapshots, and after a real relay through the route sandbox."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from relayd.catalogue.schema import BLOCKED
from relayd.catalogue.store import FileSpec, HopRules, RepoSpec, Store
from tests.support.claimkit import OWNER, claim
from tests.support.doctables import check_shape, documented_tables

if TYPE_CHECKING:
    from relayd_sandbox.route import RouteSandbox
    from tests.support.relayctl import Relayctl

DOC = Path(__file__).resolve().parents[2] / "docs" / "whereis-json.md"
SHAPES = ("Whereis document", "File location", "Hop location")
ROUTE = ("download", "pan_upload", "vm_pull", "lfs_push")
RULES = HopRules(
    reads_staging=frozenset({"pan_upload", "lfs_push"}),
    finishes_snapshot=frozenset({"lfs_push"}),
    staging_unneeded_after={"lfs_push": frozenset({"vm_pull"})},
)
FIRST, SECOND = "1" * 40, "2" * 40
PUSHED = "c0ffee" + "0" * 34
SECRET = "s3cr3t-ms-token"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


# -- a catalogue seeded the way the hops leave it -----------------------------------------------------


def download(store: Store, path: str, commit: str, content: str) -> str:
    staged = f"blobs/{sha(content)[:2]}/{sha(content)}"
    handles = {"staged": staged, "commit": commit, "etag": sha(content), "size": len(content)}
    store.complete(
        claim(store, "download", path),
        OWNER,
        handles,
        sha256=sha(content),
        sha1=sha1(content),
        staged_path=staged,
    )
    return staged


def upload(store: Store, path: str, content: str) -> str:
    file_id = sha1(path + content)[:24]
    handles = {
        "file_id": file_id,
        "drive_id": "9600002",
        "path": f"/relayd/org/model/{path}",
        "content_hash": sha1(content).upper(),
        "rapid": False,
    }
    store.complete(claim(store, "pan_upload", path), OWNER, handles, sha1=sha1(content))
    return file_id


def pull(store: Store, path: str, content: str) -> None:
    handles = {"path": f"/mnt/models/org/model/{path}", "executor": "ssh", "host": "vm.example.cn"}
    store.complete(claim(store, "vm_pull", path), OWNER, handles, sha256=sha(content))


def push(store: Store, path: str, content: str, *, lfs: bool) -> None:
    if lfs:
        handles: dict[str, Any] = {"oid": sha(content), "size": len(content), "skipped": False}
    else:
        handles = {"plain": True, "blob": sha1("blob " + content), "size": len(content)}
    store.complete(claim(store, "lfs_push", path), OWNER, handles)


def relay_all(store: Store, name: str, path: str, content: str) -> None:
    """Add repo *name* with one file and relay it all the way, its snapshot pushed as PUSHED."""
    store.add_repo(RepoSpec(name=name, every=600, route=ROUTE))
    repo = store.repo(name)
    assert repo is not None
    spec = FileSpec(path, len(content), lfs=False, git_blob_id=sha1("blob " + content))
    store.record_snapshot(repo.id, FIRST, [spec])
    download(store, path, FIRST, content)
    upload(store, path, content)
    pull(store, path, content)
    push(store, path, content, lfs=False)
    remote = f"https://www.modelscope.cn/{name}.git"
    handles = {"commit": PUSHED, "branch": "master", "remote": remote, "parent": None, "paths": [path]}
    store.complete(claim(store, "lfs_push", None), OWNER, handles)


@pytest.fixture
def seeded(relayctl: Relayctl) -> Iterator[Relayctl]:
    """org/model: snapshot 1 (config.json, model.safetensors) relayed and pushed as PUSHED; snapshot 2
    changes model.safetensors, which is downloaded and staged, then blocked at pan_upload."""
    relayctl.store  # noqa: B018 - creates the catalogue at head
    store = Store(relayctl.url, rules=RULES)
    store.add_repo(RepoSpec(name="org/model", every=600, route=ROUTE))
    repo = store.repo("org/model")
    assert repo is not None
    config, weights, new_weights = '{"a": 1}\n', "w" * 300, "v" * 400
    store.record_snapshot(
        repo.id,
        FIRST,
        [
            FileSpec("config.json", len(config), lfs=False, git_blob_id=sha1("blob " + config)),
            FileSpec("model.safetensors", len(weights), lfs=True, sha256=sha(weights)),
        ],
    )
    for path, content in (("config.json", config), ("model.safetensors", weights)):
        download(store, path, FIRST, content)
        upload(store, path, content)
        pull(store, path, content)
        push(store, path, content, lfs=path.endswith(".safetensors"))
    finish = claim(store, "lfs_push", None)
    store.complete(
        finish,
        OWNER,
        {
            "commit": PUSHED,
            "branch": "master",
            "remote": f"https://oauth2:{SECRET}@www.modelscope.cn/org/model.git",
            "parent": None,
            "paths": ["config.json", "model.safetensors"],
        },
    )
    store.record_snapshot(
        repo.id,
        SECOND,
        [
            FileSpec("config.json", len(config), lfs=False, git_blob_id=sha1("blob " + config)),
            FileSpec("model.safetensors", len(new_weights), lfs=True, sha256=sha(new_weights)),
        ],
    )
    download(store, "model.safetensors", SECOND, new_weights)
    store.defer(
        claim(store, "pan_upload", "model.safetensors"),
        OWNER,
        state=BLOCKED,
        error="relayd has no Aliyun Drive login",
        error_class="auth",
        hint="`relayctl drive login --refresh-token-file PATH`",
    )
    store.add_repo(RepoSpec(name="org/empty", every=600, route=ROUTE))
    relay_all(store, "org/tiny", "README.md", "# tiny\n")
    store.close()
    yield relayctl


# -- the documented shape ------------------------------------------------------------------------------


def whereis_json(relayctl: Relayctl, *args: str) -> dict[str, Any]:
    result = relayctl("whereis", "--json", *args)
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


# -- tests ---------------------------------------------------------------------------------------------


def test_whereis_shows_every_place_of_every_file(seeded: Relayctl) -> None:
    result = seeded("whereis", "org/model")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert SECRET not in text
    lines = text.splitlines()
    assert lines[0] == "REPO org/model (model@main)  route: download → pan_upload → vm_pull → lfs_push"
    assert lines[1].startswith(f"SNAPSHOT {SECOND} (active, 2 files")
    # The new snapshot's files have not all arrived, so it has no commit of its own yet.
    assert not any(line.startswith("PUSHED") for line in lines)
    tiny = seeded("whereis", "org/tiny").stdout.splitlines()
    assert tiny[2] == f"PUSHED {PUSHED} on master of https://www.modelscope.cn/org/tiny.git"
    config = lines[lines.index("config.json  9 B  done") :][:6]
    assert config[1] == f"  hub         commit {SECOND}"
    staged = seeded.root / "staging" / "blobs" / sha('{"a": 1}\n')[:2] / sha('{"a": 1}\n')
    assert config[2] == f"  download    staged at {staged} (fetched at {FIRST})"
    assert config[3].startswith("  pan_upload  drive file ") and "/relayd/org/model/config.json" in config[3]
    assert config[4] == "  vm_pull     /mnt/models/org/model/config.json on the ssh VM vm.example.cn"
    assert config[5].startswith(f"  lfs_push    in commit {PUSHED} on master (blob ")
    model = lines[lines.index("model.safetensors  400 B  blocked") :][:7]
    assert model[2].startswith("  download    staged at ")
    assert model[3] == "  pan_upload  blocked: relayd has no Aliyun Drive login [auth] (attempt 1)"
    assert model[4] == "              hint: `relayctl drive login --refresh-token-file PATH`"
    assert model[5:] == ["  vm_pull     not reached", "  lfs_push    not reached"]


def test_whereis_json_matches_the_documented_shape(seeded: Relayctl) -> None:
    tables = documented_tables(DOC, SHAPES)
    assert set(tables) == set(SHAPES)
    seen: set[tuple[str, str]] = set()
    current = whereis_json(seeded, "org/model")
    check_shape(current, "Whereis document", tables, seen)
    every = whereis_json(seeded, "org/model", "--all-snapshots")
    check_shape(every, "Whereis document", tables, seen)
    check_shape(whereis_json(seeded, "org/empty"), "Whereis document", tables, seen)
    tiny = whereis_json(seeded, "org/tiny")
    check_shape(tiny, "Whereis document", tables, seen)
    documented = {(table, path) for table, rows in tables.items() for path in rows}
    assert documented - seen == set()

    assert tiny["finish"] == {
        "hop": "lfs_push",
        "state": "done",
        "commit": PUSHED,
        "branch": "master",
        "remote": "https://www.modelscope.cn/org/tiny.git",
        "error": None,
        "error_class": None,
        "hint": None,
        "updated_at": tiny["finish"]["updated_at"],
    }
    assert current["format"] == 1 and current["kind"] == "whereis"
    assert current["snapshot"]["commit"] == SECOND
    assert current["finish"] is None
    assert SECRET not in json.dumps(every)
    config = current["files"][0]
    assert config["path"] == "config.json"
    assert config["commit"] == SECOND and config["current"] is True and config["state"] == "done"
    assert config["drive"]["path"] == "/relayd/org/model/config.json"
    assert config["drive"]["file_id"] == sha1("config.json" + '{"a": 1}\n')[:24]
    assert config["vm"] == {
        "path": "/mnt/models/org/model/config.json",
        "executor": "ssh",
        "host": "vm.example.cn",
    }
    assert config["pushed"]["commit"] == PUSHED
    assert config["pushed"]["remote"] == "https://www.modelscope.cn/org/model.git"
    assert config["pushed"]["blob"] and config["pushed"]["oid"] is None
    assert [hop["state"] for hop in config["hops"]] == ["done"] * 4
    assert config["hops"][0]["location"]["commit"] == FIRST

    model = current["files"][1]
    assert model["state"] == "blocked"
    assert model["staged"]["path"] == f"blobs/{sha('v' * 400)[:2]}/{sha('v' * 400)}"
    assert model["drive"] is None and model["vm"] is None and model["pushed"] is None
    assert [hop["state"] for hop in model["hops"]] == ["done", "blocked", None, None]
    assert model["hops"][1]["hint"] == "`relayctl drive login --refresh-token-file PATH`"
    assert model["hops"][1]["location"] is None  # an unfinished transfer's handles are not shown

    # Every snapshot: the old weights too, after the current ones, still pushed in the old commit.
    paths = [(item["path"], item["current"], item["commit"]) for item in every["files"]]
    assert paths == [
        ("config.json", True, SECOND),
        ("model.safetensors", True, SECOND),
        ("model.safetensors", False, FIRST),
    ]
    old = every["files"][2]
    assert old["pushed"]["commit"] == PUSHED and old["pushed"]["oid"] == sha("w" * 300)
    assert old["vm"]["path"] == "/mnt/models/org/model/model.safetensors"


def test_whereis_narrows_to_one_path(seeded: Relayctl) -> None:
    document = whereis_json(seeded, "org/model", "model.safetensors")
    assert document["path"] == "model.safetensors"
    assert [item["path"] for item in document["files"]] == ["model.safetensors"]
    text = seeded("whereis", "org/model", "config.json").stdout
    assert "config.json  9 B  done" in text and "model.safetensors" not in text
    both = whereis_json(seeded, "org/model", "model.safetensors", "--all-snapshots")
    assert [item["commit"] for item in both["files"]] == [SECOND, FIRST]


def test_whereis_refuses_unknown_repos_and_paths(seeded: Relayctl) -> None:
    unknown = seeded("whereis", "org/nope")
    assert unknown.exit_code == 2
    assert "no repo named 'org/nope'" in unknown.stderr
    missing = seeded("whereis", "org/model", "weights/missing.bin")
    assert missing.exit_code == 2
    assert "has no file 'weights/missing.bin' in its current snapshot 222222222222" in missing.stderr
    never = seeded("whereis", "org/model", "missing.bin", "--all-snapshots")
    assert never.exit_code == 2 and "never had a file 'missing.bin'" in never.stderr
    empty = seeded("whereis", "org/empty")
    assert empty.exit_code == 0
    assert "SNAPSHOT none yet" in empty.stdout and "no files" in empty.stdout
    assert seeded("whereis", "org/empty", "a.bin").exit_code == 2


def test_the_whereis_path_imports_no_heavy_modules(seeded: Relayctl) -> None:
    """whereis loads the route's hop classes, for what they declare they produce: none of them brings
    in a heavy library with it."""
    result = seeded.heavy_imports_of("whereis", "org/model", "--json")
    assert json.loads(result.stdout)["kind"] == "whereis"
    loaded = result.stderr.strip().strip("[]").replace("'", "").split(", ")
    assert "relayd.hops.pan_upload" in loaded
    assert [module for module in loaded if not module.startswith("relayd.hops")] == []


# -- after a real relay --------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_whereis_after_a_relay_through_the_sandbox(tmp_path: Path) -> None:
    """Relay a small model with `relayd run --once`; whereis names the drive file ids, the VM paths and
    the pushed commit that the fake drive, the VM directory and the git server actually hold."""
    from relayd_sandbox.route import NAME, REPO, RouteSandbox
    from relayd_sandbox.route import OWNER as MS_OWNER

    box: RouteSandbox = RouteSandbox(
        tmp_path / "route", shards=1, shard_size=64 * 1024, ssh=False, concurrency=3, connections=1
    )
    with box:
        assert box.relayctl("add", REPO, "--every", "1h").returncode == 0
        run = subprocess.run(
            [sys.executable, "-m", "relayd", "run", "--once", "-c", str(box.config_path)],
            env=box.env(),
            capture_output=True,
            text=True,
            timeout=170,
            check=False,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        result = box.relayctl("whereis", REPO, "--json")
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        assert box.git is not None and box.drive is not None
        head = subprocess.run(
            ["git", "--git-dir", str(box.git.repo_path(MS_OWNER, NAME)), "rev-parse", "refs/heads/master"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert document["finish"]["state"] == "done"
        assert document["finish"]["commit"] == head
        assert document["snapshot"]["commit"] == box.head
        files = {item["path"]: item for item in document["files"]}
        assert set(files) == set(box.hub_files())
        for path, item in files.items():
            assert item["state"] == "done"
            stored = box.drive.lookup(f"/relayd/{REPO}/{path}", drive_id=box.drive.user.resource_drive_id)
            assert stored is not None
            assert item["drive"]["file_id"] == stored.file_id
            assert item["drive"]["path"] == f"/relayd/{REPO}/{path}"
            assert Path(item["vm"]["path"]) == box.vm_root / REPO / path
            assert item["vm"]["executor"] == "local"
            assert item["pushed"]["commit"] == head
        text = box.relayctl("whereis", REPO, "config.json").stdout
        assert f"PUSHED {head} on master of " in text
        assert f"drive file {files['config.json']['drive']['file_id']} at /relayd/{REPO}/config.json" in text
