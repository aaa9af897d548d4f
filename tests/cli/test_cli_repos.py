"""relayctl add, list, remove, pause, resume and retry, and the repo-id rules behind add."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from huggingface_hub import HfApi
from huggingface_hub.hf_api import RepoFile
from sqlalchemy import select

import relayd.hops
from relayd.catalogue.schema import BLOCKED, PENDING, WAITING, Transfer
from relayd.catalogue.store import FileSpec, RepoSpec, utcnow
from relayd.errors import UsageError
from relayd.hops.base import Hop
from relayd.names import validate_repo_id
from relayd.units import format_size
from relayd_sandbox._http import free_port
from relayd_sandbox.hub import FakeHub, make_model_repo

if TYPE_CHECKING:
    from tests.support.relayctl import Relayctl

INVALID_IDS = [
    "",
    "../x",
    "a/b/c",
    "org/../x",
    "org/na..me",
    "org/-name",
    "-org/name",
    ".org/name",
    "org/.name",
    "org/name.",
    "org/na--me",
    "org/na me",
    " org/name",
    "org/",
    "/name",
    "org//name",
    "org/name\n",
    "org/näme",
    "org/na;me",
    "org/" + "x" * 97,
    "x" * 97 + "/name",
]


def repo_rows(relayctl: Relayctl) -> int | None:
    """Return how many repo rows the catalogue holds, or None when there is no catalogue file."""
    if not relayctl.db.exists():
        return None
    connection = sqlite3.connect(relayctl.db)
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "repos" not in tables:
            return 0
        return int(connection.execute("SELECT COUNT(*) FROM repos").fetchone()[0])
    finally:
        connection.close()


@pytest.mark.parametrize("repo_id", INVALID_IDS)
def test_add_refuses_an_invalid_repo_id_before_touching_the_catalogue(
    relayctl: Relayctl, repo_id: str
) -> None:
    result = relayctl("add", "--route", "local_copy", "--", repo_id)  # "--": some start with "-"
    assert result.exit_code == 2
    assert "relayctl: error: invalid repo id" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert not relayctl.db.exists()


@pytest.mark.parametrize("repo_id", INVALID_IDS)
def test_validate_repo_id_refuses(repo_id: str) -> None:
    with pytest.raises(UsageError, match="invalid repo id"):
        validate_repo_id(repo_id)


@pytest.mark.parametrize(
    "repo_id", ["gpt2", "org/name", "Org_1/Model-7B.v2", "a/b", "x" * 96 + "/" + "y" * 96, "org/v1.5"]
)
def test_validate_repo_id_accepts(repo_id: str) -> None:
    assert validate_repo_id(repo_id) == repo_id


def test_an_invalid_modelscope_repo_is_refused_too(relayctl: Relayctl) -> None:
    result = relayctl("add", "org/name", "--route", "local_copy", "--modelscope-repo", "../evil")
    assert result.exit_code == 2
    assert "invalid repo id '../evil'" in result.stderr
    result = relayctl("add", "org/name", "--route", "local_copy", "--modelscope-repo", "justname")
    assert result.exit_code == 2
    assert "OWNER/NAME" in result.stderr
    assert repo_rows(relayctl) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--route", "local_copy,nope"], "not installed: nope"),
        (["--route", "local_copy,local_copy"], "appears twice"),
        (["--route", ""], "invalid --route"),
        (["--route", "local_copy", "--every", "soon"], "invalid --every"),
        (["--route", "local_copy", "--every", "1s"], "at least 10s"),
        (["--route", "local_copy", "--revision", "a..b"], "invalid --revision"),
        (["--route", "local_copy", "--webhook", "ftp://x"], "invalid --webhook"),
        (["--route", "local_copy", "--vm-dir", "a/../b"], "invalid --vm-dir"),
        (["--route", "local_copy", "--include", " "], "non-empty glob"),
    ],
)
def test_add_refuses_bad_options_before_touching_the_catalogue(
    relayctl: Relayctl, args: list[str], message: str
) -> None:
    result = relayctl("add", "org/name", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not relayctl.db.exists()


def test_the_default_route_must_be_installed(relayctl: Relayctl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relayd.hops, "hop_names", lambda: ["download", "local_copy"])
    result = relayctl("add", "org/name")
    assert result.exit_code == 2
    assert "default route names hops that are not installed: pan_upload, vm_pull, lfs_push" in result.stderr
    assert not relayctl.db.exists()
    monkeypatch.setattr(relayd.hops, "hop_names", lambda: sorted(relayd.hops.DEFAULT_ROUTE))
    assert relayctl("add", "org/name").exit_code == 0
    repo = relayctl.store.repo("org/name")
    assert repo is not None
    assert tuple(repo.route) == relayd.hops.DEFAULT_ROUTE


def test_add_stores_the_settings_and_list_shows_them(relayctl: Relayctl) -> None:
    result = relayctl(
        "add",
        "org/model",
        "--type",
        "dataset",
        "--revision",
        "v1.0",
        "--include",
        "*.safetensors",
        "--include",
        "*.json",
        "--exclude",
        "*.bin",
        "--every",
        "15m",
        "--route",
        "local_copy",
        "--drive-folder",
        "/models/org",
        "--modelscope-repo",
        "mirror/model",
        "--vm-from-staging",
        "--webhook",
        "https://hooks.example.com/services/SECRET123",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("added org/model:")
    assert "SECRET123" not in result.stdout  # webhook URLs carry their secret in the path
    repo = relayctl.store.repo("org/model")
    assert repo is not None
    assert (repo.repo_type, repo.revision, repo.every) == ("dataset", "v1.0", 900.0)
    assert repo.include == ["*.safetensors", "*.json"]
    assert repo.exclude == ["*.bin"]
    assert repo.route == ["local_copy"]
    assert repo.destinations == {"drive_folder": "/models/org", "modelscope_repo": "mirror/model"}
    assert repo.options == {
        "vm_from_staging": True,
        "webhooks": ["https://hooks.example.com/services/SECRET123"],
    }

    listed = relayctl("list")
    assert listed.exit_code == 0
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "TYPE", "REVISION", "ROUTE", "EVERY", "PAUSED", "HEAD"]
    assert row.split() == ["org/model", "dataset", "v1.0", "local_copy", "15m00s", "no", "-"]
    data = json.loads(relayctl("list", "--json").stdout)
    assert data["format"] == 1
    assert data["repos"][0]["name"] == "org/model"
    assert data["repos"][0]["options"]["webhooks"] == ["https://hooks.example.com/…"]


def test_add_defaults(relayctl: Relayctl) -> None:
    result = relayctl("add", "gpt2", "--route", "local_copy")
    assert result.exit_code == 0, result.output
    repo = relayctl.store.repo("gpt2")
    assert repo is not None
    assert (repo.repo_type, repo.revision, repo.every) == ("model", "main", 3600.0)
    assert repo.destinations == {}
    assert repo.options == {}


def test_adding_an_existing_repo_changes_nothing_unless_replace(relayctl: Relayctl) -> None:
    assert relayctl("add", "org/model", "--route", "local_copy", "--every", "30m").exit_code == 0
    before = relayctl.store.repo("org/model")
    assert before is not None

    again = relayctl("add", "org/model", "--route", "local_copy", "--every", "2h", "--revision", "dev")
    assert again.exit_code == 0
    assert "already watched; nothing changed" in again.stdout
    assert "every: 30m00s" in again.stdout  # its current settings
    after = relayctl.store.repo("org/model")
    assert after is not None
    assert (after.every, after.revision, after.updated_at) == (
        before.every,
        before.revision,
        before.updated_at,
    )

    replaced = relayctl(
        "add", "org/model", "--route", "local_copy", "--every", "2h", "--revision", "dev", "--replace"
    )
    assert replaced.exit_code == 0
    assert replaced.stdout.startswith("replaced the settings of org/model:")
    final = relayctl.store.repo("org/model")
    assert final is not None
    assert (final.every, final.revision) == (7200.0, "dev")
    assert repo_rows(relayctl) == 1


def test_pause_resume_and_remove(relayctl: Relayctl) -> None:
    relayctl("add", "org/model", "--route", "local_copy")
    assert relayctl("pause", "org/model").stdout == "paused org/model\n"
    repo = relayctl.store.repo("org/model")
    assert repo is not None and repo.paused
    assert "PAUSED" in relayctl("status").stdout
    assert relayctl("resume", "org/model").stdout == "resumed org/model\n"
    repo = relayctl.store.repo("org/model")
    assert repo is not None and not repo.paused

    declined = relayctl("remove", "org/model", input="n\n")
    assert declined.exit_code == 1  # click's "Aborted!"
    assert relayctl.store.repo("org/model") is not None
    confirmed = relayctl("remove", "org/model", input="y\n")
    assert confirmed.exit_code == 0
    assert confirmed.stdout == "removed org/model\n"
    assert relayctl.store.repo("org/model") is None
    relayctl("add", "org/other", "--route", "local_copy")
    assert relayctl("remove", "org/other", "--yes").exit_code == 0
    assert repo_rows(relayctl) == 0


@pytest.mark.parametrize("command", [["pause"], ["resume"], ["remove", "--yes"], ["retry"], ["status"]])
def test_an_unknown_repo_is_a_usage_error(relayctl: Relayctl, command: list[str]) -> None:
    relayctl("add", "org/model", "--route", "local_copy")
    result = relayctl(*command, "org/nope")
    assert result.exit_code == 2
    assert result.stderr == "relayctl: error: no repo named 'org/nope' (see `relayctl list`)\n"


def _blocked_and_waiting(relayctl: Relayctl) -> None:
    store = relayctl.store
    store.add_repo(RepoSpec(name="org/a", every=60, route=("local_copy",)))
    store.add_repo(RepoSpec(name="org/b", every=60, route=("local_copy",)))
    for name in ("org/a", "org/b"):
        repo = store.repo(name)
        assert repo is not None
        files = [FileSpec(path=f"f{i}", size=10, lfs=False, git_blob_id=f"{name}{i}") for i in range(3)]
        store.record_snapshot(repo.id, "c" * 40, files)
    for state in (BLOCKED, WAITING, BLOCKED, WAITING):
        transfer = store.claim("local_copy", "owner", 60)
        assert transfer is not None
        later = utcnow() + timedelta(hours=1) if state == WAITING else None
        store.defer(
            transfer.id, "owner", state=state, error="boom", error_class="network", next_attempt_at=later
        )


def test_retry(relayctl: Relayctl) -> None:
    _blocked_and_waiting(relayctl)
    assert relayctl("retry").exit_code == 2  # a REPO or --all is required
    assert relayctl("retry", "org/a", "--all").exit_code == 2
    unknown_hop = relayctl("retry", "--all", "--hop", "warp")
    assert unknown_hop.exit_code == 2
    assert "unknown hop 'warp'" in unknown_hop.stderr

    one = relayctl("retry", "org/a")
    assert one.exit_code == 0
    assert one.stdout.splitlines()[0] == "made 3 transfers of org/a runnable"
    rest = relayctl("retry", "--all", "--hop", "local_copy")
    assert rest.stdout == "made 1 transfer runnable\n"
    with relayctl.store.read() as session:
        states = set(session.scalars(select(Transfer.state)))
    assert states == {PENDING}


# -- routes that cannot work ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "reason", "works"),
    [
        (
            "lfs_push",
            "lfs_push cannot come first: it reads each file from staging or vm",
            "download,lfs_push",
        ),
        (
            "pan_upload,download",
            "pan_upload cannot come first: it reads each file from staging",
            "download,pan_upload",
        ),
        (
            "download,vm_pull",
            "vm_pull reads each file from drive, and no hop before it (download) puts it there "
            "(drive is filled by pan_upload)",
            "download,pan_upload,vm_pull",
        ),
        (
            "local_copy,download",
            "download reads from its source only, so it must be the route's first hop",
            "download,local_copy",
        ),
        (
            "download,vm_pull,pan_upload,lfs_push",
            "vm_pull reads each file from drive",
            "download,pan_upload,vm_pull,lfs_push",
        ),
    ],
)
def test_add_refuses_a_route_whose_hop_lacks_its_input(
    relayctl: Relayctl, route: str, reason: str, works: str
) -> None:
    result = relayctl("add", "org/name", "--route", route)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"relayctl: error: --route {route} cannot work: {reason}")
    assert f"a route that works: --route {works}" in result.stderr
    assert not relayctl.db.exists()
    # The route it proposes is accepted.
    assert relayctl("add", "org/name", "--route", works).exit_code == 0


class ArchiveHop(Hop):
    """A plugin hop that writes what is on the VM to tape: nothing in the CLI knows its name."""

    name = "archive"
    consumes = frozenset({"vm"})
    produces = "tape"


def test_the_route_rule_comes_from_what_hops_declare(
    relayctl: Relayctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    builtin = dict(relayd.hops.BUILTIN)
    monkeypatch.setattr(relayd.hops, "registry", lambda: {**builtin, "archive": f"{__name__}:ArchiveHop"})
    refused = relayctl("add", "org/name", "--route", "download,archive")
    assert refused.exit_code == 2
    assert (
        "archive reads each file from vm, and no hop before it (download) puts it there "
        "(vm is filled by vm_pull)" in refused.stderr
    )
    assert "a route that works: --route download,pan_upload,vm_pull,archive" in refused.stderr
    assert relayctl("add", "org/name", "--route", "download,pan_upload,vm_pull,archive").exit_code == 0
    monkeypatch.setattr(ArchiveHop, "consumes", frozenset({"staging"}))
    assert relayctl("add", "org/other", "--route", "download,archive").exit_code == 0


# -- a pasted Hub URL ----------------------------------------------------------------------------------


ENDPOINT = "http://127.0.0.1:8999"


@pytest.mark.parametrize(
    ("given", "name", "repo_type", "revision"),
    [
        ("https://huggingface.co/org/model", "org/model", "model", "main"),
        ("https://huggingface.co/org/model/", "org/model", "model", "main"),
        ("huggingface.co/org/model", "org/model", "model", "main"),
        ("https://hf.co/org/model?library=transformers#files", "org/model", "model", "main"),
        ("https://huggingface.co/datasets/org/data", "org/data", "dataset", "main"),
        ("https://huggingface.co/datasets/org/data/tree/v1.0/", "org/data", "dataset", "v1.0"),
        ("https://huggingface.co/org/model/tree/refs%2Fpr%2F1", "org/model", "model", "refs/pr/1"),
        ("https://huggingface.co/gpt2/tree/main", "gpt2", "model", "main"),
        (f"{ENDPOINT}/org/mirrored", "org/mirrored", "model", "main"),
    ],
)
def test_add_accepts_the_url_of_a_repo(
    relayctl: Relayctl, make_config: Callable[..., Path], given: str, name: str, repo_type: str, revision: str
) -> None:
    make_config(relayctl.root, hub={"endpoint": ENDPOINT})
    result = relayctl("add", given, "--route", "local_copy")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"added {name}:")
    repo = relayctl.store.repo(name)
    assert repo is not None
    assert (repo.repo_type, repo.revision) == (repo_type, revision)


@pytest.mark.parametrize(
    ("given", "options", "message"),
    [
        (
            "https://huggingface.co/org/model/blob/main/config.json",
            [],
            "is a page of org/model, not the repo",
        ),
        ("https://huggingface.co/org/model/tree/main/onnx", [], "choose files with --include 'onnx/*'"),
        ("https://huggingface.co/spaces/org/app", [], "is a Space: relayd relays models and datasets"),
        ("https://example.com/org/model", [], "is not a URL of the Hub"),
        ("ftp://huggingface.co/org/model", [], "is not a URL of the Hub"),
        ("https://huggingface.co/", [], "names no repo"),
        ("https://huggingface.co/org/../x", [], "invalid repo id"),
        (
            "https://huggingface.co/datasets/org/data",
            ["--type", "model"],
            "--type model disagrees with the URL",
        ),
        (
            "https://huggingface.co/org/model/tree/v2",
            ["--revision", "v1"],
            "--revision v1 disagrees with the URL",
        ),
    ],
)
def test_add_refuses_a_url_that_names_no_repo(
    relayctl: Relayctl, given: str, options: list[str], message: str
) -> None:
    result = relayctl("add", given, "--route", "local_copy", *options)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not relayctl.db.exists()


# -- --dry-run -----------------------------------------------------------------------------------------


def test_dry_run_lists_the_selected_files_and_writes_nothing(
    relayctl: Relayctl, make_config: Callable[..., Path]
) -> None:
    with FakeHub(relayctl.root / "hub") as hub:
        make_model_repo(hub, "org/model", shards=3, shard_size=5000)
        make_config(relayctl.root, hub={"endpoint": hub.endpoint})
        relayctl.store.add_repo(RepoSpec(name="org/other", every=60, route=("local_copy",)))
        before = relayctl.db.read_bytes()
        result = relayctl(
            "add",
            f"{hub.endpoint}/org/model",
            "--include",
            "*.safetensors",
            "--include",
            "*.json",
            "--exclude",
            "model-00002-*",
            "--dry-run",
        )
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        tree = HfApi(endpoint=hub.endpoint, token=False).list_repo_tree("org/model", recursive=True)
        sizes = {entry.path: entry.size for entry in tree if isinstance(entry, RepoFile)}
        shards = ["model-00001-of-00003.safetensors", "model-00003-of-00003.safetensors"]
        chosen = sorted([*shards, *(path for path in sizes if path.endswith(".json"))])
        total = format_size(sum(sizes[path] for path in chosen))
        assert re.fullmatch(
            rf"org/model \(model@main, at [0-9a-f]{{12}}\): 6 of {len(sizes)} files selected, {total}",
            lines[0],
        )
        shown = [line.rsplit("  ", 1) for line in lines[1:-2]]
        assert [path for _, path in shown] == chosen
        assert [size.strip() for size, _ in shown] == [format_size(sizes[path]) for path in chosen]
        assert lines[-2].strip() == f"{total}  total (6 files)"
        assert lines[-1].startswith("dry run: nothing was written")
        assert relayctl.db.read_bytes() == before
        assert relayctl.store.repo("org/model") is None

        missing = relayctl("add", "org/absent", "--dry-run")
        assert missing.exit_code == 1
        assert f"cannot list org/absent: model org/absent was not found on {hub.endpoint}" in missing.stderr
        assert "(hint: check the name and the type" in missing.stderr
        assert relayctl.db.read_bytes() == before


def test_dry_run_names_an_unreachable_hub_in_plain_words(
    relayctl: Relayctl, make_config: Callable[..., Path]
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    make_config(relayctl.root, hub={"endpoint": endpoint})
    result = relayctl("add", "org/model", "--route", "download", "--dry-run")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"relayctl: error: cannot list org/model: connection refused at {endpoint}"
    )
    assert "Errno" not in result.stderr
    assert not relayctl.db.exists()
