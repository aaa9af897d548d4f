"""The sandbox git smart-HTTP + LFS server, driven by the real git and git-lfs clients.

Every test gets its own server and a hermetic git: a private HOME, no system config, no prompts, and
a credential helper that reads the token from ``$MS_TOKEN`` so it never appears in a URL, in argv or
in ``.git/config`` (the recipe relayd itself uses against ModelScope).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
import requests

from relayd_sandbox.gitlfs import GitLfsServer, lfs_pointer
from relayd_sandbox.systools import require_git_lfs
from tests.support.hermetic_git import GitClient, hermetic_git

require_git_lfs()

pytestmark = pytest.mark.timeout(60)

OWNER = "relay"
LFS_JSON = "application/vnd.git-lfs+json"


@pytest.fixture
def server(gitlfs_server: GitLfsServer) -> GitLfsServer:
    """The plugin's git + LFS server."""
    return gitlfs_server


@pytest.fixture
def git(tmp_path: Path, server: GitLfsServer) -> GitClient:
    return hermetic_git(tmp_path / "home", server.token)


def _auth(server: GitLfsServer, token: str | None = None) -> tuple[str, str]:
    return ("oauth2", server.token if token is None else token)


def _lfs_batch(
    server: GitLfsServer,
    name: str,
    operation: str,
    objects: list[dict[str, object]],
    token: str | None = None,
) -> requests.Response:
    return requests.post(
        f"{server.lfs_url(OWNER, name)}/objects/batch",
        json={"operation": operation, "transfers": ["basic"], "objects": objects, "hash_algo": "sha256"},
        headers={"Accept": LFS_JSON, "Content-Type": LFS_JSON},
        auth=_auth(server, token),
        timeout=10,
    )


def _commit_lfs_file(git: GitClient, work: Path, path: str, data: bytes) -> str:
    """Track *.bin, write *data* at *path*, commit, and return the object's oid."""
    git.run("lfs", "track", "*.bin", cwd=work)
    (work / path).write_bytes(data)
    git.run("add", ".gitattributes", path, cwd=work)
    git.run("commit", "-q", "-m", f"add {path}", cwd=work)
    return hashlib.sha256(data).hexdigest()


def _clone(git: GitClient, server: GitLfsServer, name: str, dest: Path) -> Path:
    git.run("clone", "-q", server.remote_url(OWNER, name), str(dest))
    return dest


def _assert_no_token_in_git_config(work: Path, token: str) -> None:
    config = (work / ".git" / "config").read_text()
    assert token not in config
    assert "@127.0.0.1" not in config


def _push_until_put(git: GitClient, server: GitLfsServer, work: Path, oid: str, amount: int) -> Popen[str]:
    """Start `git push origin master` in *work* in its own process group; return it once the server has
    received *amount* bytes of the object *oid*. Fail if the push ends first or 20 s pass."""
    push = git.popen("push", "origin", "master", cwd=work)
    deadline = time.monotonic() + 20
    while server.counters().put_bytes_by_oid.get(oid, 0) < amount:
        assert push.poll() is None, push.communicate()
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.02)
    return push


def test_clone_of_an_empty_repo(server: GitLfsServer, git: GitClient, tmp_path: Path) -> None:
    server.new_repo(OWNER, "empty")
    result = git.run("clone", server.remote_url(OWNER, "empty"), str(tmp_path / "empty"))
    assert "empty repository" in result.stderr
    assert (tmp_path / "empty" / ".git").is_dir()
    assert server.branch_head(OWNER, "empty") is None
    auths = [e.header("Authorization") for e in server.request_log.snapshot() if e.status == 200]
    assert auths and all(a == "Basic [redacted]" for a in auths)


def test_push_stores_lfs_object_and_fresh_clone_smudges_it(
    server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    server.new_repo(OWNER, "model")
    work = _clone(git, server, "model", tmp_path / "work")
    data = os.urandom(1024 * 1024 + 17)
    oid = _commit_lfs_file(git, work, "weights.bin", data)
    (work / "config.json").write_text('{"inline": true}\n')
    git.run("add", "config.json", cwd=work)
    git.run("commit", "-q", "-m", "config", cwd=work)

    git.run("push", "-q", "origin", "master", cwd=work)

    assert list(server.objects(OWNER, "model")) == [oid]
    assert hashlib.sha256(server.read_object(OWNER, "model", oid)).hexdigest() == oid
    assert server.show_file(OWNER, "model", "weights.bin") == lfs_pointer(oid, len(data))
    assert server.show_file(OWNER, "model", "config.json") == b'{"inline": true}\n'
    local_head = git.run("rev-parse", "HEAD", cwd=work).stdout.strip()
    assert server.branch_head(OWNER, "model") == local_head
    counters = server.counters()
    assert (counters.puts, counters.puts_stored, counters.verifies) == (1, 1, 1)
    assert counters.put_bytes_by_oid == {oid: len(data)}
    assert server.batches()[-1].operation == "upload"
    assert server.batches()[-1].ref == "refs/heads/master"
    # The PUT carried the action's own short-lived token, never the user's Basic credentials.
    puts = [e for e in server.request_log.snapshot() if e.method == "PUT"]
    assert [e.header("Authorization") for e in puts] == ["Bearer [redacted]"]

    clone = _clone(git, server, "model", tmp_path / "fresh")
    assert (clone / "weights.bin").read_bytes() == data
    assert server.counters().downloads == 1
    for checkout in (work, clone):
        _assert_no_token_in_git_config(checkout, server.token)


def test_second_push_of_a_stored_object_batches_without_put(
    server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    server.new_repo(OWNER, "dedupe")
    work = _clone(git, server, "dedupe", tmp_path / "work")
    data = os.urandom(300_000)
    oid = _commit_lfs_file(git, work, "a.bin", data)
    git.run("push", "-q", "origin", "master", cwd=work)
    before = server.counters()

    # A scratch repo with unrelated history (as relayd builds one per publish) knows nothing of the
    # remote, so git-lfs must ask the batch API, which omits the actions for the stored object.
    scratch = tmp_path / "scratch"
    git.run("init", "-q", str(scratch))
    _commit_lfs_file(git, scratch, "copy-of-a.bin", data)
    git.run("push", "-q", server.remote_url(OWNER, "dedupe"), "master:refs/heads/second", cwd=scratch)

    after = server.counters()
    assert after.batch_requests == before.batch_requests + 1
    assert server.batches()[-1].oids == (oid,)
    assert (after.puts, after.put_bytes) == (before.puts, before.put_bytes)
    assert (
        server.branch_head(OWNER, "dedupe", "second")
        == git.run("rev-parse", "HEAD", cwd=scratch).stdout.strip()
    )


def test_put_of_wrong_bytes_is_rejected_and_nothing_stored(server: GitLfsServer) -> None:
    server.new_repo(OWNER, "strict")
    data = os.urandom(200_000)
    oid = hashlib.sha256(data).hexdigest()
    answer = _lfs_batch(server, "strict", "upload", [{"oid": oid, "size": len(data)}])
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == LFS_JSON
    actions = answer.json()["objects"][0]["actions"]
    upload, verify = actions["upload"], actions["verify"]
    assert upload["expires_in"] > 0
    assert server.token not in str(answer.json())

    wrong = requests.put(upload["href"], data=os.urandom(len(data)), headers=upload["header"], timeout=10)
    assert wrong.status_code == 422
    assert "sha256" in wrong.json()["message"]
    short = requests.put(upload["href"], data=data[:-1], headers=upload["header"], timeout=10)
    assert short.status_code == 422
    user_creds = requests.put(upload["href"], data=data, auth=_auth(server), timeout=10)
    assert user_creds.status_code == 403
    assert server.objects(OWNER, "strict") == {}
    assert server.incoming(OWNER, "strict") == []
    checked = requests.post(
        verify["href"], json={"oid": oid, "size": len(data)}, headers=verify["header"], timeout=10
    )
    assert checked.status_code == 404

    good = requests.put(upload["href"], data=data, headers=upload["header"], timeout=10)
    assert good.status_code == 200
    checked = requests.post(
        verify["href"], json={"oid": oid, "size": len(data)}, headers=verify["header"], timeout=10
    )
    assert checked.status_code == 200
    assert server.read_object(OWNER, "strict", oid) == data

    again = _lfs_batch(server, "strict", "upload", [{"oid": oid, "size": len(data)}]).json()["objects"][0]
    assert "actions" not in again
    missing = "0" * 64
    download = _lfs_batch(
        server, "strict", "download", [{"oid": oid, "size": len(data)}, {"oid": missing, "size": 1}]
    )
    found, absent = download.json()["objects"]
    assert absent["error"]["code"] == 404
    get = found["actions"]["download"]
    ranged = requests.get(get["href"], headers={**get["header"], "Range": "bytes=100-199"}, timeout=10)
    assert ranged.status_code == 206
    assert ranged.content == data[100:200]
    assert ranged.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    # A token is bound to its operation and object: the download token cannot upload.
    assert requests.put(get["href"], data=data, headers=get["header"], timeout=10).status_code == 403

    server.action_lifetime = 0
    other = os.urandom(10)
    other_oid = hashlib.sha256(other).hexdigest()
    stale = _lfs_batch(server, "strict", "upload", [{"oid": other_oid, "size": 10}]).json()["objects"][0]
    late = requests.put(
        stale["actions"]["upload"]["href"],
        data=other,
        headers=stale["actions"]["upload"]["header"],
        timeout=10,
    )
    assert late.status_code == 403
    assert "expired" in late.json()["message"]


def test_bad_or_missing_token_gets_401_on_both_legs(
    server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    server.new_repo(OWNER, "private")
    result = git.run("ls-remote", server.remote_url(OWNER, "private"), check=False, token="not-the-token")
    assert result.returncode != 0
    assert "Authentication failed" in result.stderr

    refs = f"{server.remote_url(OWNER, 'private')}/info/refs?service=git-upload-pack"
    for auth in (None, _auth(server, "wrong")):
        answer = requests.get(refs, auth=auth, timeout=10)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Basic realm=")
    bad = _lfs_batch(server, "private", "upload", [{"oid": "0" * 64, "size": 1}], token="wrong")
    assert bad.status_code == 401
    assert bad.headers["Content-Type"] == LFS_JSON
    assert bad.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert "oauth2" in bad.json()["message"]
    assert server.counters().batch_requests == 0


def test_missing_repo_fails_clearly_unless_created_on_demand(
    server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    result = git.run("clone", server.remote_url(OWNER, "nope"), str(tmp_path / "nope"), check=False)
    assert result.returncode != 0
    assert "not found" in result.stderr
    missing = _lfs_batch(server, "nope", "upload", [{"oid": "0" * 64, "size": 1}])
    assert missing.status_code == 404
    assert missing.json()["message"] == f"Repository {OWNER}/nope not found"

    server.auto_create_repos = True
    work = tmp_path / "work"
    git.run("init", "-q", str(work))
    oid = _commit_lfs_file(git, work, "w.bin", b"on demand\n" * 1000)
    git.run("push", "-q", server.remote_url(OWNER, "fresh"), "master", cwd=work)
    assert server.has_repo(OWNER, "fresh")
    assert list(server.objects(OWNER, "fresh")) == [oid]


def test_interrupted_throttled_push_restarts_the_object_and_completes(
    server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    server.new_repo(OWNER, "big")
    work = _clone(git, server, "big", tmp_path / "work")
    # Larger than what loopback's socket buffers can hold (the tcp_wmem and tcp_rmem maxima, 36 MiB
    # here): bytes already sent when the client dies still reach the server and must not be all of it.
    data = os.urandom(48 * 1024 * 1024)
    oid = _commit_lfs_file(git, work, "shard.bin", data)
    server.put_bytes_per_second = 1024 * 1024

    push = _push_until_put(git, server, work, oid, 256 * 1024)
    os.killpg(push.pid, signal.SIGTERM)
    push.communicate(timeout=10)
    server.put_bytes_per_second = None  # let the server drain the dead connection quickly
    assert server.wait_idle(timeout=10)
    partial = server.counters().put_bytes_by_oid[oid]
    assert partial < len(data)
    assert server.objects(OWNER, "big") == {}
    assert server.incoming(OWNER, "big") == []
    assert server.branch_head(OWNER, "big") is None

    git.run("push", "-q", "origin", "master", cwd=work)
    counters = server.counters()
    assert server.read_object(OWNER, "big", oid) == data
    assert counters.puts == 2
    assert counters.put_bytes_by_oid[oid] == partial + len(data)  # basic transfer restarts at byte 0
    assert server.branch_head(OWNER, "big") == git.run("rev-parse", "HEAD", cwd=work).stdout.strip()


def test_server_restarts_on_the_same_port(server: GitLfsServer, git: GitClient, tmp_path: Path) -> None:
    server.new_repo(OWNER, "bounce")
    work = _clone(git, server, "bounce", tmp_path / "work")
    data = os.urandom(100_000)
    _commit_lfs_file(git, work, "w.bin", data)
    port = server.port

    server.stop()
    down = git.run("push", "origin", "master", cwd=work, check=False)
    assert down.returncode != 0
    assert "Failed to connect" in down.stderr or "Connection refused" in down.stderr
    server.start()

    assert server.port == port
    git.run("push", "-q", "origin", "master", cwd=work)
    clone = tmp_path / "clone"
    git.run("clone", "-q", server.remote_url(OWNER, "bounce", models_prefix=True), str(clone))
    assert (clone / "w.bin").read_bytes() == data


def test_outage_mid_put_aborts_the_push_and_a_retry_after_restart_completes(
    server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    server.new_repo(OWNER, "outage")
    work = _clone(git, server, "outage", tmp_path / "work")
    data = os.urandom(2 * 1024 * 1024)
    oid = _commit_lfs_file(git, work, "w.bin", data)
    server.put_bytes_per_second = 512 * 1024

    push = _push_until_put(git, server, work, oid, 128 * 1024)
    server.stop()  # cuts the PUT's connection, as a crash would
    _, stderr = push.communicate(timeout=40)
    assert push.returncode != 0, stderr
    assert server.wait_idle(timeout=10)
    assert server.objects(OWNER, "outage") == {}
    assert server.incoming(OWNER, "outage") == []

    server.put_bytes_per_second = None
    server.start()
    git.run("push", "-q", "origin", "master", cwd=work)
    assert server.read_object(OWNER, "outage", oid) == data
    assert server.branch_head(OWNER, "outage") == git.run("rev-parse", "HEAD", cwd=work).stdout.strip()


def test_non_fast_forward_push_is_rejected_after_a_server_side_commit(
    server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    server.new_repo(OWNER, "race")
    work = _clone(git, server, "race", tmp_path / "work")
    _commit_lfs_file(git, work, "one.bin", b"first\n")
    git.run("push", "-q", "origin", "master", cwd=work)
    server.commit_server_side(
        OWNER, "race", {"README.md": b"# edited on the hub\n", "docs/a/b.md": b"deep\n"}
    )
    server_commit = server.commit_server_side(OWNER, "race", {"docs/a/b.md": None}, message="delete")
    (work / "notes.txt").write_text("local change\n")
    git.run("add", "notes.txt", cwd=work)
    git.run("commit", "-q", "-m", "local", cwd=work)

    rejected = git.run("push", "origin", "master", cwd=work, check=False)
    assert rejected.returncode != 0
    assert "rejected" in rejected.stderr
    assert server.branch_head(OWNER, "race") == server_commit

    git.run("pull", "-q", "--rebase", "origin", "master", cwd=work)
    git.run("push", "-q", "origin", "master", cwd=work)
    assert server.show_file(OWNER, "race", "README.md") == b"# edited on the hub\n"
    assert server.show_file(OWNER, "race", "notes.txt") == b"local change\n"
    assert not (work / "docs").exists()


def test_injected_batch_failure_aborts_the_push_then_it_succeeds(
    server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    server.new_repo(OWNER, "quota")
    work = _clone(git, server, "quota", tmp_path / "work")
    oid = _commit_lfs_file(git, work, "w.bin", b"x" * 5000)
    server.fail_next("batch", 507, message="quota exceeded for relay/quota")

    failed = git.run("push", "origin", "master", cwd=work, check=False)
    assert failed.returncode != 0
    assert "quota exceeded" in failed.stderr
    assert server.branch_head(OWNER, "quota") is None
    assert server.objects(OWNER, "quota") == {}

    git.run("push", "-q", "origin", "master", cwd=work)
    assert list(server.objects(OWNER, "quota")) == [oid]

    server.fail_next("git", 503, message="maintenance")
    assert git.run("ls-remote", "origin", cwd=work, check=False).returncode != 0
    assert git.run("ls-remote", "origin", cwd=work).stdout.split()[0] == server.branch_head(OWNER, "quota")

    server.fail_next("batch", 429, message="slow down", retry_after=7)
    limited = _lfs_batch(server, "quota", "download", [{"oid": oid, "size": 5000}])
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "7")
    assert limited.json()["message"] == "slow down"


def test_chunked_pack_upload_and_locks_verify_404(
    server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    """A pack above http.postBuffer goes up chunked; git-lfs's locks/verify gets 404 and carries on."""
    git.locksverify = True
    server.new_repo(OWNER, "plain")
    work = _clone(git, server, "plain", tmp_path / "work")
    (work / "noise.dat").write_bytes(os.urandom(1536 * 1024))  # incompressible, not LFS
    git.run("add", "noise.dat", cwd=work)
    _commit_lfs_file(git, work, "w.bin", b"tiny lfs object\n")

    git.run("push", "-q", "origin", "master", cwd=work)

    log = server.request_log.snapshot()
    packs = [
        e for e in log if e.method == "POST" and e.path.endswith("/git-receive-pack") and e.status == 200
    ]
    # git probes with a tiny request first, then sends the pack chunked; the log order of the two
    # depends on timing, so look for the chunked one among them.
    assert any(pack.header("Transfer-Encoding") == "chunked" for pack in packs)
    assert any(e.path.endswith("/info/lfs/locks/verify") and e.status == 404 for e in log)
    clone = _clone(git, server, "plain", tmp_path / "clone")
    assert (clone / "noise.dat").read_bytes() == (work / "noise.dat").read_bytes()
    assert len(server.objects(OWNER, "plain")) == 1


# -- the batch API's answer shapes, as the real git-lfs takes them -------------------------------------


@pytest.mark.parametrize(
    ("action_auth", "action_expiry", "verify_action"),
    [
        ("header", "expires_in", True),
        ("basic", "expires_at", False),
        ("signed_url", "both", True),
        ("signed_url", "none", False),
    ],
)
def test_each_action_shape_works_with_the_real_git_lfs(
    server: GitLfsServer,
    git: GitClient,
    tmp_path: Path,
    action_auth: Any,
    action_expiry: Any,
    verify_action: bool,
) -> None:
    server.action_auth, server.action_expiry, server.verify_action = action_auth, action_expiry, verify_action
    server.new_repo(OWNER, "shapes")
    data = os.urandom(100_000)
    oid = hashlib.sha256(data).hexdigest()
    answer = _lfs_batch(server, "shapes", "upload", [{"oid": oid, "size": len(data)}]).json()["objects"][0]
    actions = answer["actions"]
    assert ("verify" in actions) == verify_action
    upload = actions["upload"]
    assert ("header" in upload) == (action_auth == "header")
    assert answer.get("authenticated") is (None if action_auth == "basic" else True)
    assert upload["href"].startswith(server.storage_url if action_auth == "signed_url" else server.base_url)
    assert ("expires_in" in upload) == (action_expiry in ("expires_in", "both"))
    if action_expiry in ("expires_at", "both"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", upload["expires_at"])
    else:
        assert "expires_at" not in upload

    work = _clone(git, server, "shapes", tmp_path / "work")
    _commit_lfs_file(git, work, "w.bin", data)
    git.run("push", "-q", "origin", "master", cwd=work)

    assert server.read_object(OWNER, "shapes", oid) == data
    assert server.counters().verifies == (1 if verify_action else 0)
    clone = _clone(git, server, "shapes", tmp_path / "clone")
    assert (clone / "w.bin").read_bytes() == data
    transfers = [
        e for e in server.request_log.snapshot() + server.storage_log.snapshot() if "/objects/" in e.path
    ]
    assert {e.method for e in transfers} >= {"PUT", "GET"}
    if action_auth == "signed_url":
        assert all(e.header("Authorization") is None for e in server.storage_log.snapshot())


def test_stored_objects_can_be_left_out_of_an_upload_answer(server: GitLfsServer) -> None:
    """The spec's skip rule says "omit the actions"; ModelScope's own client also reads an object left
    out of the answer as present (``omit_stored``). git-lfs 3.3.0 itself waits for ever on such an
    answer, which is why relayd's push skips its pre-push upload then (docs/real-services.md)."""
    server.new_repo(OWNER, "omit")
    stored = server.store_object(OWNER, "omit", b"already here\n")
    missing = {"oid": hashlib.sha256(b"not yet").hexdigest(), "size": 7}
    objects = [{"oid": stored, "size": 13}, missing]
    assert [o["oid"] for o in _lfs_batch(server, "omit", "upload", objects).json()["objects"]] == [
        stored,
        missing["oid"],
    ]
    server.omit_stored = True
    assert [o["oid"] for o in _lfs_batch(server, "omit", "upload", objects).json()["objects"]] == [
        missing["oid"]
    ]
    # A download answer still names every object (the spec: an action or an error for each).
    download = _lfs_batch(server, "omit", "download", objects).json()["objects"]
    assert [o["oid"] for o in download] == [stored, missing["oid"]] and "error" in download[1]


@pytest.mark.parametrize("size_limit_at", ["batch", "upload"])
def test_an_object_over_the_size_limit_is_refused_to_the_real_git_lfs(
    server: GitLfsServer, git: GitClient, tmp_path: Path, size_limit_at: Any
) -> None:
    server.max_object_size, server.size_limit_at = 1024 * 1024, size_limit_at
    server.new_repo(OWNER, "big")
    data = os.urandom(2 * 1024 * 1024)
    oid = hashlib.sha256(data).hexdigest()
    answer = _lfs_batch(server, "big", "upload", [{"oid": oid, "size": len(data)}]).json()["objects"][0]
    if size_limit_at == "batch":
        assert answer["error"]["code"] == 413 and "actions" not in answer
    else:
        assert "upload" in answer["actions"]
        put = requests.put(
            answer["actions"]["upload"]["href"],
            data=data,
            headers=answer["actions"]["upload"]["header"],
            timeout=10,
        )
        assert (put.status_code, put.reason) == (413, "Request Entity Too Large")
        assert (
            put.headers["Content-Type"] == "text/html" and "<title>413 Request Entity Too Large" in put.text
        )

    work = _clone(git, server, "big", tmp_path / "work")
    _commit_lfs_file(git, work, "huge.bin", data)
    # git-lfs retries a refused PUT (8 times, with back-off, by default): once is enough here.
    push = git.run("-c", "lfs.transfer.maxretries=1", "push", "origin", "master", cwd=work, check=False)

    assert push.returncode != 0 and "413" in push.stderr
    assert server.objects(OWNER, "big") == {}
    assert server.branch_head(OWNER, "big") is None


def test_a_batch_request_with_too_many_objects_gets_413(server: GitLfsServer) -> None:
    server.new_repo(OWNER, "many")
    server.max_batch_objects = 2
    objects = [{"oid": hashlib.sha256(bytes([i])).hexdigest(), "size": 1} for i in range(3)]
    refused = _lfs_batch(server, "many", "upload", objects)
    assert refused.status_code == 413 and "at most 2 objects" in refused.json()["message"]
    assert _lfs_batch(server, "many", "upload", objects[:2]).status_code == 200


def test_a_redirect_is_followed_by_the_real_git_by_default(
    server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    """The redirect knob as git sees it: with its default http.followRedirects (initial) git follows
    the first request's redirect to the other server and talks to it from then on."""
    with GitLfsServer(tmp_path / "other", token=server.token) as other:
        other.new_repo(OWNER, "moved")
        commit = other.commit_server_side(OWNER, "moved", {"README.md": b"# moved\n"})
        server.redirect = (301, other.base_url)
        listed = git.run("ls-remote", server.remote_url(OWNER, "moved"))
        assert commit in listed.stdout
        assert [e.status for e in server.request_log.snapshot()] == [301]
        location = requests.get(
            server.remote_url(OWNER, "moved") + "/info/refs", allow_redirects=False, timeout=5
        )
        assert location.headers["Location"] == other.remote_url(OWNER, "moved") + "/info/refs"


def test_answer_padding_makes_an_oversized_answer(server: GitLfsServer) -> None:
    server.new_repo(OWNER, "padded")
    server.answer_padding = 3 * 1024 * 1024
    answer = _lfs_batch(server, "padded", "download", [{"oid": "a" * 64, "size": 1}])
    assert answer.headers["Transfer-Encoding"] == "chunked" and len(answer.content) > 3 * 1024 * 1024
    assert answer.json()["objects"][0]["error"]["code"] == 404
