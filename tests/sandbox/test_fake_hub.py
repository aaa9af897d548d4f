"""The fake Hugging Face Hub, driven by the real huggingface_hub client and by plain HTTP.

The first half proves fidelity: every call relayd makes (model_info, list_repo_tree, list_repo_refs,
list_repo_commits, get_paths_info, auth_check, get_hf_file_metadata, hf_hub_download,
snapshot_download) works against the fake, and every Hub error maps to the exception the client
raises against the real Hub. The second half drives each fault knob with http.client, so the tests of
relayd can rely on exactly what each knob does on the wire.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from huggingface_hub import (
    HfApi,
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    BadRequestError,
    DisabledRepoError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from relayd.digest import sha256_file
from relayd_sandbox.hub import FakeHub, Generated, make_model_repo, parse_range, write_generated_file
from relayd_sandbox.hub_store import git_blob_sha1, lfs_pointer

pytestmark = pytest.mark.timeout(60)

ALICE = "hf_alice_token"  # owns the alice/ namespace
# CloudFront's own refusals of a signed URL, byte for byte (AWS knowledge center; public captures).
CLOUDFRONT = {
    reason: (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()
    for reason, code, message in (
        ("expired", "AccessDenied", "Access denied"),
        ("missing-key", "MissingKey", "Missing Key-Pair-Id query parameter or cookie value"),
        ("unknown-key", "InvalidKey", "Unknown Key"),
    )
}
BOB = "hf_bob_token"  # a valid token with no special access
REPO = "alice/tiny"
SHARD = "model-00001-of-00002.safetensors"


# -- fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HF_HOME, Xet and telemetry off, no ambient token: the client as relayd runs it."""
    home = tmp_path / "hf-home"
    for name, value in {
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads these once at import; set the already-imported copies too.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    return home / "hub"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    with FakeHub(tmp_path / "hub-storage", tree_page_size=3, commits_page_size=2) as fake:
        fake.add_token(ALICE, user="alice")
        fake.add_token(BOB, user="bob")
        make_model_repo(fake, REPO, shards=2, shard_size=1 << 20, tokenizer_size=32 * 1024)
        yield fake


@pytest.fixture
def api(hub: FakeHub, cache_dir: Path) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=ALICE)


def request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """Send one request with http.client (no redirects followed) and return status, headers, body."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request(
            method, f"{parts.path}?{parts.query}" if parts.query else parts.path, headers=headers or {}
        )
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def cdn_location(hub: FakeHub, path: str = SHARD, token: str = ALICE) -> str:
    status, headers, _ = request(
        f"{hub.endpoint}/{REPO}/resolve/main/{path}", "HEAD", {"Authorization": f"Bearer {token}"}
    )
    assert status == 302
    return headers["Location"]


# -- metadata through the real client ---------------------------------------------------------------


def test_model_info_lists_siblings_with_lfs_metadata(hub: FakeHub, api: HfApi) -> None:
    info = api.model_info(REPO, files_metadata=True)
    files = hub.files(REPO)

    assert info.id == REPO
    assert info.sha == hub.head(REPO)
    assert info.private is False
    assert info.gated is False
    assert info.siblings is not None
    siblings = {sibling.rfilename: sibling for sibling in info.siblings}
    assert set(siblings) == set(files)
    shard = siblings[SHARD]
    assert shard.lfs is not None
    assert shard.lfs.sha256 == files[SHARD].sha256 == sha256_file(hub.blob_path(files[SHARD].sha256))
    assert shard.size == shard.lfs.size == 1 << 20
    assert shard.blob_id == git_blob_sha1(lfs_pointer(files[SHARD].sha256, 1 << 20))
    assert shard.lfs.pointer_size == len(lfs_pointer(files[SHARD].sha256, 1 << 20))
    config = siblings["config.json"]
    assert config.lfs is None
    assert config.blob_id == git_blob_sha1(hub.blob_path(files["config.json"].sha256).read_bytes())

    plain = api.model_info(REPO)
    assert plain.siblings is not None
    assert {sibling.rfilename for sibling in plain.siblings} == set(files)
    assert all(sibling.size is None for sibling in plain.siblings)


def test_revisions_are_percent_encoded_and_resolved(hub: FakeHub, api: HfApi) -> None:
    first = hub.head(REPO)
    hub.create_tag(REPO, "v1.0")
    pr = hub.commit(REPO, {"notes.txt": "from a pull request\n"}, branch="refs/pr/1", message="PR")
    second = hub.commit(REPO, {"extra.txt": "on main\n"}, message="Second")

    assert api.model_info(REPO).sha == second
    assert api.model_info(REPO, revision="v1.0").sha == first
    assert api.model_info(REPO, revision=first).sha == first
    assert api.model_info(REPO, revision="refs/pr/1").sha == pr
    assert any("/revision/refs%2Fpr%2F1" in entry.path for entry in hub.hub_log.snapshot())

    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [(ref.name, ref.ref, ref.target_commit) for ref in refs.branches] == [
        ("main", "refs/heads/main", second)
    ]
    assert [(ref.name, ref.target_commit) for ref in refs.tags] == [("v1.0", first)]
    assert refs.converts == []
    assert refs.pull_requests is not None
    assert [(ref.ref, ref.target_commit) for ref in refs.pull_requests] == [("refs/pr/1", pr)]
    assert api.list_repo_refs(REPO).pull_requests is None


def test_list_repo_tree_pages_with_an_absolute_link(hub: FakeHub, api: HfApi) -> None:
    files = {f"dir{d}/sub/file{i}.txt": f"{d}-{i}\n" for d in range(2) for i in range(3)}
    files["dir0/weights.bin"] = b"\0" * 100
    sha = hub.commit(REPO, files)
    expected_files = hub.files(REPO)

    entries = list(api.list_repo_tree(REPO, recursive=True, revision=sha))

    by_path = {entry.path: entry for entry in entries}
    folders = {"dir0", "dir0/sub", "dir1", "dir1/sub"}
    assert set(by_path) == set(expected_files) | folders
    for path, expected in expected_files.items():
        entry = by_path[path]
        assert getattr(entry, "blob_id", None) == expected.blob_id
        assert getattr(entry, "size", None) == expected.size
        lfs = getattr(entry, "lfs", None)
        assert (lfs.sha256 if lfs else None) == (expected.sha256 if expected.lfs else None)
    assert getattr(by_path["dir0/sub/file0.txt"], "blob_id", None) == git_blob_sha1(b"0-0\n")
    tree_requests = [entry for entry in hub.hub_log.snapshot() if "/tree/" in entry.path]
    assert len(tree_requests) == -(-len(entries) // 3)  # 3 per page
    assert all("cursor=" in entry.path for entry in tree_requests[1:])

    top = {entry.path for entry in api.list_repo_tree(REPO, revision=sha)}
    assert top == {path for path in expected_files if "/" not in path} | {"dir0", "dir1"}
    sub = {entry.path for entry in api.list_repo_tree(REPO, "dir0", revision=sha)}
    assert sub == {"dir0/sub", "dir0/weights.bin"}
    with pytest.raises(RemoteEntryNotFoundError):
        list(api.list_repo_tree(REPO, "no/such/dir", revision=sha))


def test_tree_expand_gives_last_commit_and_link_is_absolute(hub: FakeHub, api: HfApi) -> None:
    first = hub.head(REPO)
    second = hub.commit(REPO, {"config.json": '{"changed": true}\n'}, message="Change config")
    entries = {entry.path: entry for entry in api.list_repo_tree(REPO, expand=True, revision=second)}
    last_commit = entries["config.json"].last_commit
    assert last_commit is not None and last_commit.oid == second
    shard_commit = entries[SHARD].last_commit
    assert shard_commit is not None and shard_commit.oid == first

    status, headers, _ = request(f"{hub.endpoint}/api/models/{REPO}/tree/main?recursive=true")
    assert status == 200
    assert headers["Link"].startswith(f"<{hub.endpoint}/api/models/{REPO}/tree/main?")
    assert headers["Link"].endswith('>; rel="next"')


def test_list_repo_commits_pages_newest_first(hub: FakeHub, api: HfApi) -> None:
    shas = [
        hub.commit(REPO, {"counter.txt": f"{i}\n"}, message=f"Commit {i}", description="body")
        for i in range(3)
    ]
    commits = api.list_repo_commits(REPO)
    assert [commit.commit_id for commit in commits[:3]] == shas[::-1]
    assert [commit.title for commit in commits[:3]] == ["Commit 2", "Commit 1", "Commit 0"]
    assert commits[0].message == "body"
    assert commits[-1].title == "initial commit"
    assert commits[0].created_at > commits[1].created_at
    assert len(commits) == 5  # initial, model, three more, two per page
    status, headers, _ = request(f"{hub.endpoint}/api/models/{REPO}/commits/main")
    assert status == 200 and headers["X-Total-Count"] == "5"
    assert headers["Link"] == f'<{hub.endpoint}/api/models/{REPO}/commits/main?p=1>; rel="next"'


def test_get_paths_info_and_auth_check(hub: FakeHub, api: HfApi) -> None:
    hub.commit(REPO, {"sub/a.txt": "a\n"})
    infos = api.get_paths_info(REPO, ["config.json", SHARD, "sub", "missing.txt"])
    by_path = {info.path: info for info in infos}
    assert set(by_path) == {"config.json", SHARD, "sub"}
    assert getattr(by_path[SHARD], "lfs", None) is not None
    assert type(by_path["sub"]).__name__ == "RepoFolder"
    api.auth_check(REPO)
    assert HfApi(endpoint=hub.endpoint, token=BOB).whoami()["name"] == "bob"


def test_file_metadata_for_lfs_and_regular_files(hub: FakeHub, api: HfApi) -> None:
    entry = hub.file(REPO, SHARD)
    url = hf_hub_url(REPO, SHARD, endpoint=hub.endpoint)
    first = get_hf_file_metadata(url, token=ALICE)
    second = get_hf_file_metadata(url, token=ALICE)
    assert first.commit_hash == hub.head(REPO)
    assert first.etag == entry.sha256
    assert first.size == entry.size
    # A CloudFront-signed Xet-bridge URL, as the Hub hands out (hf-hub#212, wllama#248).
    parts = urlsplit(first.location)
    assert f"{parts.scheme}://{parts.netloc}" == hub.cdn_url
    assert parts.path.startswith("/xet-bridge-us/") and parts.path.endswith(f"/{entry.sha256}")
    query = parse_qs(parts.query)
    assert set(query) == {
        "X-Xet-Cas-Uid",
        "response-content-disposition",
        "Expires",
        "Policy",
        "Signature",
        "Key-Pair-Id",
    }
    assert query["response-content-disposition"] == [
        f"inline; filename*=UTF-8''{SHARD}; filename=\"{SHARD}\";"
    ]
    assert first.location != second.location  # a fresh signed URL on every HEAD

    config = hub.file(REPO, "config.json")
    regular = get_hf_file_metadata(hf_hub_url(REPO, "config.json", endpoint=hub.endpoint), token=ALICE)
    assert regular.etag == config.blob_id
    assert regular.size == config.size
    assert regular.location.startswith(f"{hub.endpoint}/api/resolve-cache/models/{REPO}/{hub.head(REPO)}/")
    assert f"%2F{REPO.replace('/', '%2F')}%2Fresolve%2Fmain%2Fconfig.json=&etag=" in regular.location


# -- downloads through the real client --------------------------------------------------------------


def test_hf_hub_download_lfs_and_regular_files(hub: FakeHub, cache_dir: Path) -> None:
    for path in (SHARD, "config.json", "tokenizer.json"):
        local = hf_hub_download(REPO, path, endpoint=hub.endpoint, token=ALICE, cache_dir=cache_dir)
        assert Path(local).read_bytes() == hub.blob_path(hub.file(REPO, path).sha256).read_bytes()

    cdn = hub.cdn_log.snapshot()
    assert len(cdn) == 2 and all(entry.status == 200 for entry in cdn)
    assert all(entry.header("Authorization") is None for entry in cdn)
    resolves = [entry for entry in hub.hub_log.snapshot() if "/resolve/" in entry.path]
    assert resolves and all(entry.header("Authorization") == f"Bearer {ALICE}" for entry in resolves)
    assert hub.bytes_served(hub.file(REPO, SHARD).sha256) == 1 << 20


def test_snapshot_download_fetches_every_file(hub: FakeHub, cache_dir: Path) -> None:
    hub.commit(REPO, {"nested/deep/file.txt": "deep\n"})
    folder = Path(snapshot_download(REPO, endpoint=hub.endpoint, token=ALICE, cache_dir=cache_dir))
    expected = hub.files(REPO)
    got = {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}
    assert got == set(expected)
    for path, entry in expected.items():
        assert sha256_file(folder / path) == entry.sha256
    assert folder.name == hub.head(REPO)


def test_other_repo_types_use_their_prefixes(hub: FakeHub, api: HfApi, cache_dir: Path) -> None:
    hub.create_repo(
        "alice/data", repo_type="dataset", files={"train.parquet": b"PAR1" * 100, "README.md": "# d\n"}
    )
    hub.create_repo("alice/app", repo_type="space", files={"app.py": "print('hi')\n"})
    info = api.dataset_info("alice/data", files_metadata=True)
    assert info.siblings is not None and {s.rfilename for s in info.siblings} >= {
        "train.parquet",
        "README.md",
    }
    local = hf_hub_download(
        "alice/data",
        "train.parquet",
        repo_type="dataset",
        endpoint=hub.endpoint,
        token=ALICE,
        cache_dir=cache_dir,
    )
    assert Path(local).read_bytes() == b"PAR1" * 100
    assert any(entry.path.startswith("/datasets/alice/data/resolve/") for entry in hub.hub_log.snapshot())
    assert api.space_info("alice/app").sha == hub.head("alice/app", repo_type="space")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/data")  # a dataset is not a model


def test_hf_endpoint_from_the_environment(hub: FakeHub, tmp_path: Path) -> None:
    """HF_ENDPOINT is read once at import, so this runs the client in a fresh interpreter."""
    script = f"""
import hashlib, json, pathlib
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
info = HfApi().model_info({REPO!r})
local = hf_hub_download({REPO!r}, {SHARD!r})
folder = snapshot_download({REPO!r})
print(json.dumps({{
    "sha": info.sha,
    "shard": hashlib.sha256(pathlib.Path(local).read_bytes()).hexdigest(),
    "files": sorted(p.name for p in pathlib.Path(folder).iterdir()),
}}))
"""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("HF_") and key != "HUGGING_FACE_HUB_TOKEN"
    }
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_TOKEN=ALICE,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=50, check=False
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["sha"] == hub.head(REPO)
    assert out["shard"] == hub.file(REPO, SHARD).sha256
    assert out["files"] == sorted(hub.files(REPO))
    assert all(entry.header("Authorization") is None for entry in hub.cdn_log.snapshot())


def test_client_resumes_a_truncated_body_with_range(hub: FakeHub, cache_dir: Path) -> None:
    """hf_hub_download keeps whole 10 MiB chunks and asks for the rest with Range after a cut."""
    big = hub.commit(REPO, {"big.safetensors": Generated(16 << 20, seed=5)})
    entry = hub.file(REPO, "big.safetensors")
    cut = hub.faults.truncate(after=12 << 20)
    local = hf_hub_download(
        REPO, "big.safetensors", revision=big, endpoint=hub.endpoint, token=ALICE, cache_dir=cache_dir
    )
    assert sha256_file(local) == entry.sha256
    assert cut.hits == 1
    ranges = [entry.header("Range") for entry in hub.cdn_log.snapshot()]
    assert ranges == [None, f"bytes={10 << 20}-"]
    assert hub.bytes_served(entry.sha256) == (12 << 20) + (6 << 20)


def test_xet_advertised_but_the_client_stays_on_http(hub: FakeHub, cache_dir: Path) -> None:
    hub.advertise_xet = True
    entry = hub.file(REPO, SHARD)
    metadata = get_hf_file_metadata(hf_hub_url(REPO, SHARD, endpoint=hub.endpoint), token=ALICE)
    assert metadata.xet_file_data is not None
    local = hf_hub_download(REPO, SHARD, endpoint=hub.endpoint, token=ALICE, cache_dir=cache_dir)
    assert sha256_file(local) == entry.sha256
    status, headers, _ = request(f"{hub.endpoint}/{REPO}/resolve/main/{SHARD}", "HEAD")
    assert status == 302 and headers["X-Xet-Hash"]
    auth, reconstruction = (link.strip() for link in headers["Link"].split(","))
    assert auth == f'<{hub.endpoint}/api/models/{REPO}/xet-read-token/{hub.head(REPO)}>; rel="xet-auth"'
    assert reconstruction.startswith(f"<{hub.cdn_url}/v1/reconstructions/{headers['X-Xet-Hash']}>")
    assert reconstruction.endswith('; rel="xet-reconstruction-info"')

    hub.xet_only.add(entry.sha256)
    with pytest.raises(BadRequestError):
        hf_hub_download(
            REPO, SHARD, endpoint=hub.endpoint, token=ALICE, cache_dir=cache_dir, force_download=True
        )


def test_missing_repo_commit_header_breaks_the_client(hub: FakeHub, cache_dir: Path) -> None:
    """Header ablation (reference §6.3): without X-Repo-Commit the client refuses the endpoint."""
    hub.suppressed_headers.add("X-Repo-Commit")
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "config.json", endpoint=hub.endpoint, token=ALICE, cache_dir=cache_dir)


def test_new_commits_move_the_head_and_old_commits_stay_served(
    hub: FakeHub, api: HfApi, cache_dir: Path
) -> None:
    old = hub.head(REPO)
    new = hub.commit(REPO, {"config.json": '{"v": 2}\n'}, delete=["tokenizer.json"], message="v2")
    assert api.model_info(REPO).sha == new
    assert {e.path for e in api.list_repo_tree(REPO, revision=old)} >= {"tokenizer.json"}
    assert "tokenizer.json" not in {e.path for e in api.list_repo_tree(REPO, revision=new)}
    old_config = hf_hub_download(
        REPO, "config.json", revision=old, endpoint=hub.endpoint, token=ALICE, cache_dir=cache_dir
    )
    assert (
        Path(old_config).read_bytes() == hub.blob_path(hub.file(REPO, "config.json", old).sha256).read_bytes()
    )
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(
            REPO, "tokenizer.json", revision=new, endpoint=hub.endpoint, token=ALICE, cache_dir=cache_dir
        )


# -- the error table --------------------------------------------------------------------------------


def test_missing_and_private_repos_raise_repository_not_found(hub: FakeHub, cache_dir: Path) -> None:
    hub.create_repo("alice/secret", private=True, files={"config.json": "{}\n"})
    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    bob = HfApi(endpoint=hub.endpoint, token=BOB)
    for repo_id in ("alice/nope", "alice/secret"):
        with pytest.raises(RepositoryNotFoundError) as caught:
            bob.model_info(repo_id)
        assert not isinstance(caught.value, GatedRepoError)
        assert caught.value.response.status_code == 404
        assert caught.value.response.headers["X-Error-Code"] == "RepoNotFound"
        # Anonymously: 401 without a code. huggingface_hub maps that to RepositoryNotFoundError only
        # for https:// URLs (REPO_API_REGEX), so over the fake's http:// it is a plain 401.
        with pytest.raises(HfHubHTTPError) as plain:
            anonymous.model_info(repo_id)
        response = plain.value.response
        assert not isinstance(plain.value, RepositoryNotFoundError)
        assert (response.status_code, response.headers.get("X-Error-Code")) == (401, None)
        assert response.headers["X-Error-Message"] == "Invalid username or password."
        assert response.headers["WWW-Authenticate"].startswith("Bearer realm=")
        hub.anonymous_repo_not_found_code = True
        with pytest.raises(RepositoryNotFoundError) as coded:
            anonymous.model_info(repo_id)
        assert coded.value.response.status_code == 401
        hub.anonymous_repo_not_found_code = False
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/secret", "config.json", endpoint=hub.endpoint, token=BOB, cache_dir=cache_dir)
    assert HfApi(endpoint=hub.endpoint, token=ALICE).model_info("alice/secret").private is True
    hub.grant("alice/secret", BOB)
    assert bob.model_info("alice/secret").private is True


def test_unknown_revision_raises_revision_not_found(hub: FakeHub, api: HfApi, cache_dir: Path) -> None:
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        list(api.list_repo_tree(REPO, revision="0" * 40))
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(
            REPO, "config.json", revision="nope", endpoint=hub.endpoint, token=ALICE, cache_dir=cache_dir
        )


def test_missing_file_raises_remote_entry_not_found(hub: FakeHub, cache_dir: Path) -> None:
    with pytest.raises(RemoteEntryNotFoundError) as caught:
        hf_hub_download(REPO, "nope.bin", endpoint=hub.endpoint, token=ALICE, cache_dir=cache_dir)
    assert caught.value.response.headers["X-Repo-Commit"] == hub.head(REPO)
    with pytest.raises(RemoteEntryNotFoundError):
        get_hf_file_metadata(hf_hub_url(REPO, "nope.bin", endpoint=hub.endpoint), token=ALICE)


@pytest.mark.parametrize("gate", ["auto", "manual"])
def test_gated_repo_metadata_is_public_but_files_need_approval(
    hub: FakeHub, cache_dir: Path, gate: str
) -> None:
    hub.create_repo(
        "alice/gated", gated="auto" if gate == "auto" else "manual", files={"config.json": "{}\n"}
    )
    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    assert anonymous.model_info("alice/gated").gated == gate
    assert {entry.path for entry in anonymous.list_repo_tree("alice/gated")} == {
        ".gitattributes",
        "config.json",
    }
    anonymous.list_repo_refs("alice/gated")

    for token, status in ((False, 401), (BOB, 403)):
        with pytest.raises(GatedRepoError) as caught:
            hf_hub_download(
                "alice/gated", "config.json", endpoint=hub.endpoint, token=token, cache_dir=cache_dir
            )
        assert caught.value.response.status_code == status
        with pytest.raises(GatedRepoError):
            HfApi(endpoint=hub.endpoint, token=token).auth_check("alice/gated")

    hub.approve("alice/gated", BOB)
    HfApi(endpoint=hub.endpoint, token=BOB).auth_check("alice/gated")
    local = hf_hub_download(
        "alice/gated", "config.json", endpoint=hub.endpoint, token=BOB, cache_dir=cache_dir
    )
    assert Path(local).read_bytes() == b"{}\n"


def test_invalid_token_is_a_plain_401(hub: FakeHub, cache_dir: Path) -> None:
    with pytest.raises(HfHubHTTPError) as caught:
        HfApi(endpoint=hub.endpoint, token="hf_not_a_token").model_info(REPO)
    assert not isinstance(caught.value, RepositoryNotFoundError)
    assert caught.value.response.status_code == 401
    assert "X-Error-Code" not in caught.value.response.headers
    hub.revoke_token(BOB)
    with pytest.raises(HfHubHTTPError) as caught:
        hf_hub_download(REPO, "config.json", endpoint=hub.endpoint, token=BOB, cache_dir=cache_dir)
    assert caught.value.response.status_code == 401


def test_disabled_repo(hub: FakeHub, api: HfApi) -> None:
    hub.update_repo(REPO, disabled=True)
    with pytest.raises(DisabledRepoError):
        api.model_info(REPO)


def test_rate_limit_maps_to_http_error_with_retry_message(hub: FakeHub, api: HfApi) -> None:
    hub.faults.rate_limit(where="api", times=1, reset_in=7, quota=500, window=300)
    with pytest.raises(HfHubHTTPError) as caught:
        api.model_info(REPO)  # model_info never retries a 429
    assert caught.value.response.status_code == 429
    message = str(caught.value)
    assert "reached your 'api' rate limit" in message
    assert "Retry after 7 seconds (0/500 requests remaining in current 300s window)" in message
    assert caught.value.response.headers["Retry-After"] == "7"

    burst = hub.faults.rate_limit(where="api", times=1, reset_in=0)
    assert len(list(api.list_repo_tree(REPO))) > 0  # the tree retries after the reset + 1 s
    assert burst.hits == 1


def test_server_errors_on_api_routes(hub: FakeHub, api: HfApi) -> None:
    hub.faults.server_error(503, where="api")
    with pytest.raises(HfHubHTTPError) as caught:
        api.model_info(REPO)
    assert caught.value.response.status_code == 503
    assert api.model_info(REPO).sha == hub.head(REPO)


# -- wire-level rules and fault knobs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "span"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=100-", (100, 999)),
        ("bytes=-10", (990, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=990-5000", (990, 999)),
        ("bytes=999-999", (999, 999)),
        ("bytes=1000-", None),
        ("bytes=5-2", None),
        ("bytes=-0", None),
        ("bytes=0-1,4-5", None),
        ("bytes=a-b", None),
        ("items=0-1", None),
    ],
)
def test_parse_range(header: str, span: tuple[int, int] | None) -> None:
    assert parse_range(header, 1000) == span


def test_cdn_range_gives_206_and_416(hub: FakeHub) -> None:
    entry = hub.file(REPO, SHARD)
    data = hub.blob_path(entry.sha256).read_bytes()
    url = cdn_location(hub)

    status, headers, body = request(url, headers={"Range": "bytes=10-19"})
    assert (status, headers["Content-Range"], headers["Content-Length"]) == (
        206,
        f"bytes 10-19/{entry.size}",
        "10",
    )
    assert body == data[10:20]
    status, headers, body = request(url, headers={"Range": f"bytes={entry.size - 4}-"})
    assert status == 206 and body == data[-4:]
    status, headers, body = request(url, headers={"Range": f"bytes={entry.size}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{entry.size}"
    status, headers, body = request(url)
    assert status == 200 and body == data and headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Disposition"].startswith("inline;") and SHARD in headers["Content-Disposition"]
    # The bridge's ETag is the Xet hash, not the sha256; none of the Hub's own headers come along.
    assert headers["ETag"] != f'"{entry.sha256}"'
    assert not {"X-Repo-Commit", "X-Linked-Etag", "X-Linked-Size", "RateLimit"} & set(headers.keys())
    status, headers, body = request(url, "HEAD", {"Range": "bytes=0-99"})
    assert status == 206 and headers["Content-Length"] == "100" and body == b""


def test_every_response_has_content_length_and_hub_errors_have_codes(hub: FakeHub) -> None:
    auth = {"Authorization": f"Bearer {ALICE}"}
    cases = [
        (f"{hub.endpoint}/api/models/{REPO}", {}, 200, None),
        (f"{hub.endpoint}/api/models/alice/none", auth, 404, "RepoNotFound"),
        (f"{hub.endpoint}/api/models/alice/none", {}, 401, None),
        (f"{hub.endpoint}/api/models/{REPO}/revision/nope", {}, 404, "RevisionNotFound"),
        (f"{hub.endpoint}/api/models/{REPO}/tree/main/nope", {}, 404, "EntryNotFound"),
        (f"{hub.endpoint}/{REPO}/resolve/main/nope", {}, 404, "EntryNotFound"),
        (f"{hub.endpoint}/{REPO}/resolve/nope/config.json", {}, 404, "RevisionNotFound"),
        (f"{hub.endpoint}/alice/none/resolve/main/config.json", {}, 401, None),
        (f"{hub.endpoint}/{REPO}/resolve/main/config.json", {}, 307, None),
        (f"{hub.endpoint}/{REPO}/resolve/main/{SHARD}", {}, 302, None),
        (f"{hub.endpoint}/api/models/{REPO}", {"Authorization": "Bearer wrong"}, 401, None),
    ]
    for url, headers, status, code in cases:
        got, response_headers, body = request(url, "GET", headers)
        assert (got, response_headers.get("X-Error-Code")) == (status, code), url
        assert response_headers["Content-Length"] == str(len(body)), url
        if got >= 400:  # the message: as JSON from the API, as plain text from the resolvers
            message = response_headers["X-Error-Message"]
            resolver = "/resolve/" in url and code != "RevisionNotFound"
            assert (body.decode() if resolver else json.loads(body)["error"]) == message
            assert response_headers["Content-Type"].startswith(
                "text/plain" if resolver else "application/json"
            )
        head_status, head_headers, head_body = request(url, "HEAD", headers)
        assert (head_status, head_body) == (status, b"")
        assert head_headers.get("X-Error-Code") == code
        if status != 302:  # a fresh signed URL each time, so the redirect body's length varies
            assert head_headers["Content-Length"] == response_headers["Content-Length"], url
    got, headers, body = request(f"{hub.endpoint}/{REPO}/resolve/main/config.json")
    assert headers["X-Repo-Commit"] == hub.head(REPO)
    assert headers["Location"] == (
        f"/api/resolve-cache/models/{REPO}/{hub.head(REPO)}/config.json"
        f"?%2Falice%2Ftiny%2Fresolve%2Fmain%2Fconfig.json=&etag=%22{hub.file(REPO, 'config.json').blob_id}%22"
    )


def test_signed_urls_change_per_head_and_expire(tmp_path: Path) -> None:
    now = [1_000_000.0]
    with FakeHub(tmp_path / "hub", url_ttl=2.0, clock=lambda: now[0]) as fake:
        fake.add_token(ALICE, user="alice")
        make_model_repo(fake, REPO, shards=2, shard_size=4096)
        first, second = cdn_location(fake), cdn_location(fake)
        assert first != second and first.startswith(fake.cdn_url)
        assert request(first)[0] == request(second)[0] == 200
        now[0] += 3.5
        status, headers, body = request(first)
        assert (status, body) == (403, CLOUDFRONT["expired"]) and headers["Content-Type"] == "text/xml"
        assert request(cdn_location(fake))[0] == 200

        fresh = cdn_location(fake)
        assert request(fresh.replace("Signature=", "Signature=0"))[2] == CLOUDFRONT["expired"]
        unsigned = fresh.split("&Key-Pair-Id=")[0]
        assert request(unsigned)[:3:2] == (403, CLOUDFRONT["missing-key"])
        fake.rotate_signing_key()
        assert request(fresh)[:3:2] == (403, CLOUDFRONT["unknown-key"])
        for reason in ("expired", "missing-key", "unknown-key"):
            rule = fake.faults.expire(reason=reason)  # type: ignore[arg-type]
            assert request(cdn_location(fake))[:3:2] == (403, CLOUDFRONT[reason])
            assert request(cdn_location(fake))[0] == 200
            assert rule.hits == 1
        # Not signed for this object: refused like a bad signature.
        other = cdn_location(fake, "model-00002-of-00002.safetensors")
        swapped = other.replace(
            fake.file(REPO, "model-00002-of-00002.safetensors").sha256, fake.file(REPO, SHARD).sha256
        )
        assert request(swapped)[2] == CLOUDFRONT["expired"]


def test_cdn_never_needs_authorization(hub: FakeHub) -> None:
    url = cdn_location(hub)
    assert request(url)[0] == 200
    assert hub.cdn_log.snapshot()[-1].header("Authorization") is None
    assert request(url, headers={"Authorization": f"Bearer {ALICE}"})[0] == 200
    assert hub.cdn_log.snapshot()[-1].header("Authorization") is not None  # logged, so tests can catch leaks
    hub.cdn_reject_authorization = True
    assert request(url, headers={"Authorization": f"Bearer {ALICE}"})[0] == 400


def test_ignored_range_truncation_and_stale_range(hub: FakeHub) -> None:
    entry = hub.file(REPO, SHARD)
    data = hub.blob_path(entry.sha256).read_bytes()
    url = cdn_location(hub)

    hub.faults.ignore_range()
    status, headers, body = request(url, headers={"Range": "bytes=100-199"})
    assert status == 200 and body == data and "Content-Range" not in headers
    assert request(url, headers={"Range": "bytes=100-199"})[0] == 206

    hub.faults.stale_range()
    status, headers, _ = request(url, headers={"Range": "bytes=0-9"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{entry.size}"

    hub.faults.truncate(after=1000)
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    conn.request("GET", f"{parts.path}?{parts.query}")
    response = conn.getresponse()
    assert response.headers["Content-Length"] == str(entry.size)
    with pytest.raises(http.client.IncompleteRead) as caught:
        response.read()
    assert caught.value.partial == data[:1000]
    conn.close()


def test_flipped_bytes_keep_the_size(hub: FakeHub) -> None:
    entry = hub.file(REPO, SHARD)
    data = hub.blob_path(entry.sha256).read_bytes()
    url = cdn_location(hub)
    rule = hub.faults.flip_bytes(at=5000)
    assert request(url, headers={"Range": "bytes=0-999"})[2] == data[:1000]  # does not contain the byte
    status, _, body = request(url)
    assert status == 200 and len(body) == len(data)
    assert [i for i in range(len(data)) if body[i] != data[i]] == [5000]
    assert rule.hits == 1
    assert request(url)[2] == data


def test_connection_resets(hub: FakeHub) -> None:
    url = cdn_location(hub)
    hub.faults.reset()
    with pytest.raises(ConnectionResetError):
        request(url)
    hub.faults.reset(after=4096)
    with pytest.raises((ConnectionResetError, http.client.IncompleteRead)):
        request(url)
    hub.faults.reset(where="api")
    with pytest.raises(ConnectionResetError):
        request(f"{hub.endpoint}/api/models/{REPO}")
    assert request(url)[0] == 200


def test_stall_holds_the_body_until_released(hub: FakeHub) -> None:
    entry = hub.file(REPO, SHARD)
    parts = urlsplit(cdn_location(hub))
    rule = hub.faults.stall(after=1000)
    with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=10) as sock:
        sock.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: cdn\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < 1000:
            received += sock.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and len(body) == 1000
        assert select.select([sock], [], [], 0.3)[0] == []  # nothing more while stalled
        rule.release()
        while len(body) < entry.size:
            body += sock.recv(1 << 20)
    assert body == hub.blob_path(entry.sha256).read_bytes()
    beyond = hub.faults.stall(after=entry.size + 1)
    assert request(cdn_location(hub))[2] == body  # the body ends before the stall point
    assert beyond.hits == 1


def test_bandwidth_cap_and_served_byte_counter(hub: FakeHub) -> None:
    entry = hub.file(REPO, SHARD)
    url = cdn_location(hub)
    hub.bandwidth_cap = 2_000_000
    started = time.monotonic()
    status, _, body = request(url, headers={"Range": "bytes=0-399999"})
    elapsed = time.monotonic() - started
    assert status == 206 and len(body) == 400_000
    assert elapsed >= 0.15
    hub.bandwidth_cap = None
    assert request(url)[0] == 200
    assert hub.bytes_served(entry.sha256) == 400_000 + entry.size
    assert hub.bytes_served() == hub.bytes_served(entry.sha256)


def test_rate_limit_and_errors_on_resolve_and_cdn(hub: FakeHub) -> None:
    url = f"{hub.endpoint}/{REPO}/resolve/main/{SHARD}"
    hub.faults.rate_limit(where="resolve", times=2, reset_in=3, quota=3000)
    for _ in range(2):
        status, headers, _ = request(url, "HEAD")
        assert status == 429
        assert headers["RateLimit"] == '"resolvers";r=0;t=3'
        assert headers["RateLimit-Policy"] == '"fixed window";"resolvers";q=3000;w=300'
        assert headers["Retry-After"] == "3"
    assert request(url, "HEAD")[0] == 302
    location = cdn_location(hub)
    hub.faults.server_error(502, where="cdn")
    assert request(location)[0] == 502
    assert request(location)[0] == 200


# -- rate limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "bucket"),
    [
        ("/api/models/alice/tiny", "api"),
        ("/api/models/alice/tiny/tree/main", "api"),
        ("/api/whoami-v2", "api"),
        ("/alice/tiny/resolve/main/config.json", "resolvers"),
        ("/datasets/alice/data/resolve/main/x.parquet", "resolvers"),
        ("/api/resolve-cache/models/alice/tiny/0123/config.json", "resolvers"),
        ("/alice/tiny", "pages"),
        ("/datasets/alice/data", "pages"),
        ("/alice/tiny/blob/main/config.json", "pages"),
    ],
)
def test_every_hub_answer_names_its_bucket(hub: FakeHub, path: str, bucket: str) -> None:
    hub.create_repo("alice/data", repo_type="dataset", files={"x.parquet": b"1"})
    for method in ("GET", "HEAD"):
        _, headers, _ = request(f"{hub.endpoint}{path}", method, {"Authorization": f"Bearer {ALICE}"})
        assert headers["RateLimit"].startswith(f'"{bucket}";r=')
        assert headers["RateLimit-Policy"].startswith(f'"fixed window";"{bucket}";q=')


def test_rate_limits_count_per_caller_and_window_on_every_answer(tmp_path: Path) -> None:
    now = [1_000_000.0]
    with FakeHub(tmp_path / "hub", clock=lambda: now[0]) as fake:
        fake.add_token(ALICE, user="alice")
        fake.add_token(BOB, user="bob", plan="pro")
        make_model_repo(fake, REPO, shards=2, shard_size=4096)
        info = f"{fake.endpoint}/api/models/{REPO}"

        def limit(
            url: str, method: str = "GET", token: str | None = None
        ) -> tuple[int, str, str, str | None]:
            auth = {"Authorization": f"Bearer {token}"} if token else {}
            status, headers, _ = request(url, method, auth)
            return status, headers["RateLimit"], headers["RateLimit-Policy"], headers.get("X-HF-Warning")

        anonymous = limit(info)
        assert anonymous[:3] == (200, '"api";r=499;t=300', '"fixed window";"api";q=500;w=300')
        assert anonymous[3] is not None and anonymous[3].startswith(
            "unauthenticated; Warning: You are sending"
        )
        now[0] += 10
        assert limit(info)[1] == '"api";r=498;t=290'  # the same caller, the same window
        assert limit(info, token=ALICE)[1:] == (
            '"api";r=999;t=300',
            '"fixed window";"api";q=1000;w=300',
            None,
        )
        assert limit(info, token=BOB)[1:3] == ('"api";r=2499;t=300', '"fixed window";"api";q=2500;w=300')
        # Errors count and carry the headers too; a resolver HEAD counts in its own bucket.
        assert limit(f"{fake.endpoint}/api/models/alice/none", token=ALICE)[:2] == (404, '"api";r=998;t=300')
        resolve = f"{fake.endpoint}/{REPO}/resolve/main/{SHARD}"
        assert limit(resolve, "HEAD")[:2] == (302, '"resolvers";r=2999;t=300')
        assert limit(f"{fake.endpoint}/{REPO}")[:2] == (200, '"pages";r=99;t=300')
        # The CDN counts nothing and says nothing of the Hub's limits.
        _, headers, _ = request(cdn_location(fake))
        assert "RateLimit" not in headers and "X-HF-Warning" not in headers
        assert limit(resolve, "HEAD")[1] == '"resolvers";r=2998;t=300'  # cdn_location asked as alice

        fake.rate_limits.quotas["anonymous"]["api"] = 3
        assert limit(info)[:2] == (200, '"api";r=0;t=290')  # the last call of the window
        assert limit(info)[:2] == (429, '"api";r=0;t=290')
        api = HfApi(endpoint=fake.endpoint, token=False)
        with pytest.raises(HfHubHTTPError) as caught:
            api.model_info(REPO)
        response = caught.value.response
        assert response.status_code == 429 and response.headers["Retry-After"] == "290"
        message = str(caught.value)
        assert "reached your 'api' rate limit" in message
        assert "Retry after 290 seconds (0/3 requests remaining in current 300s window)" in message
        assert "We had to rate limit your IP (127.0.0.1)" in message
        assert limit(info, token=ALICE)[0] == 200  # another caller, its own count

        now[0] += 291  # the window is over
        assert limit(info)[:2] == (200, '"api";r=2;t=300')


def test_an_account_past_its_quota_gets_the_hubs_message(hub: FakeHub) -> None:
    hub.rate_limits.quotas["free"]["resolvers"] = 1
    url = hf_hub_url(REPO, SHARD, endpoint=hub.endpoint)
    get_hf_file_metadata(url, token=ALICE)
    with pytest.raises(HfHubHTTPError) as caught:
        get_hf_file_metadata(url, token=ALICE)
    assert caught.value.response.status_code == 429
    assert caught.value.response.headers["RateLimit"].startswith('"resolvers";r=0;t=')
    assert caught.value.response.headers["X-Error-Message"].startswith(
        "We had to rate limit you, you hit the quota of 1 resolvers requests per 5 minutes period."
    )  # on a HEAD, the headers are all there is


def test_range_bound_urls_serve_only_their_first_range(hub: FakeHub) -> None:
    entry = hub.file(REPO, SHARD)
    data = hub.blob_path(entry.sha256).read_bytes()
    rule = hub.faults.range_bound()
    url = cdn_location(hub)
    assert request(url, headers={"Range": "bytes=0-99"})[2] == data[:100]
    assert request(url, headers={"Range": "bytes=0-99"})[0] == 206  # the same range again
    status, headers, body = request(url, headers={"Range": "bytes=100-199"})
    assert (status, body) == (403, b"Auth failed: invalid range")
    assert request(url)[0] == 403  # nor the whole file
    assert request(cdn_location(hub), headers={"Range": "bytes=100-199"})[2] == data[100:200]
    # A /resolve asked with a Range signs its URL for that range only (reported, unverified).
    status, headers, _ = request(
        f"{hub.endpoint}/{REPO}/resolve/main/{SHARD}", "HEAD", {"Range": "bytes=500-599"}
    )
    assert request(headers["Location"], headers={"Range": "bytes=0-99"})[0] == 403
    rule.cancel()
    assert request(url, headers={"Range": "bytes=100-199"})[0] == 206


def test_match_limits_a_fault_to_one_file(hub: FakeHub) -> None:
    other = "model-00002-of-00002.safetensors"
    hub.faults.server_error(500, where="cdn", match=hub.file(REPO, other).sha256)
    assert request(cdn_location(hub, SHARD))[0] == 200
    assert request(cdn_location(hub, other))[0] == 500


def test_large_generated_file_streams_from_disk(hub: FakeHub) -> None:
    size = 96 << 20
    hub.commit(REPO, {"large.safetensors": Generated(size, seed=11)})
    entry = hub.file(REPO, "large.safetensors")
    parts = urlsplit(cdn_location(hub, "large.safetensors"))
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    conn.request("GET", f"{parts.path}?{parts.query}")
    response = conn.getresponse()
    digest = hashlib.sha256()
    while chunk := response.read(4 << 20):
        digest.update(chunk)
    conn.close()
    assert digest.hexdigest() == entry.sha256
    assert hub.bytes_served(entry.sha256) == size


# -- helpers for content and git ids ----------------------------------------------------------------


def test_generated_files_are_deterministic_and_distinct(tmp_path: Path) -> None:
    size = (9 << 20) + 123
    a = write_generated_file(tmp_path / "a", size, seed=1, prefix=b"head")
    b = write_generated_file(tmp_path / "b", size, seed=1, prefix=b"head")
    c = write_generated_file(tmp_path / "c", size, seed=2, prefix=b"head")
    assert a == b != c
    data = (tmp_path / "a").read_bytes()
    assert len(data) == size and data.startswith(b"head")
    assert hashlib.sha256(data).hexdigest() == a
    blocks = [data[4 + i * (4 << 20) : 4 + (i + 1) * (4 << 20)] for i in range(2)]
    assert blocks[0] != blocks[1]


def test_safetensors_shards_are_valid(hub: FakeHub) -> None:
    data = hub.blob_path(hub.file(REPO, SHARD).sha256).read_bytes()
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_size])
    (tensor,) = [name for name in header if name != "__metadata__"]
    begin, end = header[tensor]["data_offsets"]
    assert begin == 0
    assert 8 + header_size + end == len(data) == 1 << 20
    index = json.loads(hub.blob_path(hub.file(REPO, "model.safetensors.index.json").sha256).read_bytes())
    assert index["weight_map"][tensor] == SHARD


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_tree_and_commit_ids_are_real_git_ids(hub: FakeHub, tmp_path: Path) -> None:
    """git itself computes the same tree and commit ids from the same content and LFS pointers."""
    head = hub.commit(
        REPO, {"sub/dir/x.txt": "x\n", "sub/y.txt": "y\n"}, message="Nested", description="Body"
    )
    history = []
    sha: str | None = head
    while sha is not None:
        history.append(hub.get_commit(REPO, sha))
        sha = history[-1].parent
    work = tmp_path / "git"
    work.mkdir()
    base_env = {"HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1", "PATH": os.environ.get("PATH", "")}

    def git(*args: str, env: dict[str, str] = base_env) -> str:
        result = subprocess.run(
            ["git", *args], cwd=work, env=env, capture_output=True, text=True, check=True, timeout=30
        )
        return result.stdout.strip()

    git("init", "-q")
    parent: list[str] = []
    for commit in reversed(history):  # replay oldest first, so every parent exists in git
        for child in work.iterdir():
            if child.is_dir() and child.name != ".git":
                shutil.rmtree(child)
            elif child.is_file():
                child.unlink()
        for path, entry in commit.files.items():
            target = work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            content = (
                lfs_pointer(entry.sha256, entry.size)
                if entry.lfs
                else hub.blob_path(entry.sha256).read_bytes()
            )
            target.write_bytes(content)
        git("add", "-A")
        root = git("write-tree")
        assert root == commit.trees[""]
        for folder, tree_id in commit.trees.items():
            if folder:
                assert git("rev-parse", f"{root}:{folder}") == tree_id
        env = dict(base_env)
        stamp = f"{int(commit.date.timestamp())} +0000"
        for role in ("AUTHOR", "COMMITTER"):
            env |= {
                f"GIT_{role}_NAME": commit.author,
                f"GIT_{role}_EMAIL": f"{commit.author}@users.noreply.huggingface.co",
                f"GIT_{role}_DATE": stamp,
            }
        messages = ["-m", commit.title] + (["-m", commit.message] if commit.message else [])
        assert git("commit-tree", root, *parent, *messages, env=env) == commit.sha
        parent = ["-p", commit.sha]
    assert len(history) == 3
