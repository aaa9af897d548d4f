"""The VM side of lfs_push against each way a real LFS server may answer (the batch API's action shapes,
expiry, no verify, objects left out, size limits, redirects, answers that are too long), and where the
token may go: the agent run as the executors run it, against the sandbox git + LFS server."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from relayd.vm.agent.core import Context
from relayd.vm.agent.git_runner import GitRunner
from relayd.vm.agent.lfs_answers import expires_at, expiring
from relayd.vm.agent.lfs_client import LfsClient
from relayd_sandbox.gitlfs import GitLfsServer
from tests.support.lfs_support import OWNER, run_agent

pytestmark = pytest.mark.timeout(120)


def oid_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def vm_files(root: Path, files: dict[str, bytes]) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return {name: root / name for name in files}


def upload_params(server: GitLfsServer, files: dict[str, Path], **extra: Any) -> dict[str, Any]:
    objects = [
        {"oid": oid_of(p.read_bytes()), "size": p.stat().st_size, "path": str(p)} for p in files.values()
    ]
    return {"remote": server.remote_url(OWNER, "m"), "ref": "refs/heads/master", "objects": objects, **extra}


def publish_params(server: GitLfsServer, work: Path, files: dict[str, Path]) -> dict[str, Any]:
    entries = []
    for name, path in sorted(files.items()):
        data = path.read_bytes()
        lfs = name.endswith(".bin")
        entry: dict[str, Any] = {"path": name, "size": len(data), "lfs": lfs, "source": str(path)}
        if lfs:
            entry["oid"] = oid_of(data)
        entries.append(entry)
    return {"remote": server.remote_url(OWNER, "m"), "work_dir": str(work), "files": entries}


def statuses(server: GitLfsServer) -> list[int]:
    return [e.status for e in server.request_log.snapshot() + server.storage_log.snapshot()]


@pytest.fixture
def server(gitlfs_server: GitLfsServer) -> GitLfsServer:
    gitlfs_server.new_repo(OWNER, "m")
    return gitlfs_server


# -- the batch API's answer shapes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action_auth", "action_expiry", "verify_action", "omit_stored"),
    [
        ("header", "expires_in", True, False),
        ("header", "expires_at", False, True),
        ("basic", "both", True, True),
        ("basic", "none", False, False),
        ("signed_url", "expires_at", True, False),
        ("signed_url", "none", False, True),
    ],
)
def test_every_shape_of_batch_answer_uploads_skips_and_publishes(
    server: GitLfsServer,
    tmp_path: Path,
    *,
    action_auth: Any,
    action_expiry: Any,
    verify_action: bool,
    omit_stored: bool,
) -> None:
    server.action_auth, server.action_expiry = action_auth, action_expiry
    server.verify_action, server.omit_stored = verify_action, omit_stored
    files = vm_files(tmp_path / "vm", {"a.bin": os.urandom(200_000), "b.bin": os.urandom(3000)})

    run = run_agent("lfs_upload", upload_params(server, files), server.token)

    assert [o["skipped"] for o in run.ok["objects"]] == [False, False]
    for path in files.values():
        assert server.read_object(OWNER, "m", oid_of(path.read_bytes())) == path.read_bytes()
    counters = server.counters()
    assert (counters.puts_stored, counters.verifies) == (2, 2 if verify_action else 0)
    puts = [e for e in server.request_log.snapshot() if e.method == "PUT"]
    stored_puts = [e for e in server.storage_log.snapshot() if e.method == "PUT"]
    if action_auth == "signed_url":  # the storage host: the signature is in the URL, no credentials
        assert not puts and len(stored_puts) == 2
        assert all(e.header("Authorization") is None for e in server.storage_log.snapshot())
    else:  # the action's own header, or (none given, same origin) the user's Basic credentials
        expected = "Bearer [redacted]" if action_auth == "header" else "Basic [redacted]"
        assert [e.header("Authorization") for e in puts] == [expected, expected] and not stored_puts

    again = run_agent("lfs_upload", upload_params(server, files), server.token)
    assert [o["skipped"] for o in again.ok["objects"]] == [True, True]
    assert server.counters().puts == counters.puts

    published = run_agent("git_publish", publish_params(server, tmp_path / "work", files), server.token)
    assert published.ok["confirmed"] == 2 and published.ok["pushed"]
    assert server.counters().puts == counters.puts


@pytest.mark.parametrize("action_expiry", ["expires_in", "expires_at", "both"])
def test_an_action_about_to_expire_is_asked_for_again_not_used(
    server: GitLfsServer, tmp_path: Path, action_expiry: Any
) -> None:
    """Actions live 2 s and each upload takes longer: every action is asked for again before it is
    used (git-lfs's 5 s margin), and the verify action that expired during the PUT is replaced by a
    fresh answer, so no request ever carries an expired token."""
    server.action_lifetime, server.action_expiry = 2, action_expiry
    server.put_bytes_per_second = 150_000
    files = vm_files(tmp_path / "vm", {"a.bin": os.urandom(300_000), "b.bin": os.urandom(300_000)})

    run = run_agent("lfs_upload", upload_params(server, files), server.token)

    assert [o["skipped"] for o in run.ok["objects"]] == [False, False]
    assert 403 not in statuses(server), "a request went out with an expired action token"
    assert server.counters().puts_stored == 2
    assert server.counters().batch_requests >= 5  # the first, then two per object


def test_an_action_that_expired_unannounced_is_refused_and_asked_for_again(
    server: GitLfsServer, tmp_path: Path
) -> None:
    """Actions that do not say when they expire (``none``) but do: the second object's token has
    expired when its turn comes, the server answers its PUT 403 (as git-lfs expects of an expired
    token, tq/basic_upload.go), and the agent asks the batch API again."""
    server.action_lifetime, server.action_expiry = 1, "none"
    server.put_bytes_per_second = 150_000
    files = vm_files(tmp_path / "vm", {"a.bin": os.urandom(300_000), "b.bin": os.urandom(3000)})

    run = run_agent("lfs_upload", upload_params(server, files), server.token)

    assert [o["skipped"] for o in run.ok["objects"]] == [False, False]
    assert 403 in statuses(server) and server.counters().puts_stored == 2
    assert any(e["event"] == "retry" and "403" in e["error"] for e in run.events)


def test_expiry_rules() -> None:
    assert expires_at("2016-11-10T15:29:07Z") == 1478791747.0
    assert expires_at("2016-11-10T16:29:07.123456789+01:00") == 1478791747.0
    assert expires_at("0001-01-01T00:00:00Z") is None  # Go's zero time: no expiry
    assert expires_at("tomorrow") is None and expires_at(None) is None
    now = time.monotonic()
    assert expiring({"expires_in": 3}, now, 5) and not expiring({"expires_in": 30}, now, 5)
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3))
    assert expiring({"expires_at": soon}, now, 5) and not expiring({"expires_at": soon}, now, 0)
    # expires_in wins over expires_at (the batch API); 0 means "not given", as in git-lfs.
    assert not expiring({"expires_in": 60, "expires_at": soon}, now, 5)
    assert expiring({"expires_in": 0, "expires_at": soon}, now, 5)
    assert not expiring({}, now, 5)


# -- objects over the server's size limit ------------------------------------------------------------


@pytest.mark.parametrize(
    ("size_limit_at", "size"),
    [("batch", 2 * 1024 * 1024), ("upload", 2 * 1024 * 1024), ("upload", 70 * 1024 * 1024)],
)
def test_an_object_over_the_size_limit_blocks_saying_split_the_file(
    server: GitLfsServer, tmp_path: Path, size_limit_at: Any, size: int
) -> None:
    """Refused in the batch answer (a per-object error 413), or at the PUT as nginx answers a body over
    its limit (413 at once; for a body larger than it drains, it closes the connection mid-upload and
    the answer is read after the failed send)."""
    server.max_object_size, server.size_limit_at = 1024 * 1024, size_limit_at
    files = vm_files(tmp_path / "vm", {"huge.bin": os.urandom(size)})

    run = run_agent("lfs_upload", upload_params(server, files, verify="stat"), server.token)

    assert run.error is not None
    assert (run.error["kind"], run.error["class"]) == ("blocked", "too_large")
    assert run.error["message"].startswith("the object is larger than the server accepts: split the file")
    assert f"{size} bytes" in run.error["message"] and str(files["huge.bin"]) in run.error["message"]
    assert "split the file" in run.error["hint"] and "quota" not in run.error["hint"]
    assert not any(e["event"] == "retry" for e in run.events), "a size refusal is not retried"
    assert server.wait_idle()
    assert server.objects(OWNER, "m") == {}
    assert (413 in statuses(server)) == (size_limit_at == "upload")


def test_a_batch_request_refused_as_too_large_is_asked_in_halves(
    server: GitLfsServer, tmp_path: Path
) -> None:
    """HTTP 413 to the batch request itself means "too many objects" (batch API)."""
    server.max_batch_objects = 2
    files = vm_files(tmp_path / "vm", {f"{i}.bin": os.urandom(1000 + i) for i in range(5)})
    run = run_agent("lfs_upload", upload_params(server, files), server.token)
    assert [o["skipped"] for o in run.ok["objects"]] == [False] * 5
    assert server.counters().puts_stored == 5
    # 5 refused, then 2 answered and 3 refused, then 1 and 2 answered.
    assert [len(b.oids) for b in server.batches()] == [5, 2, 3, 1, 2]


# -- answers that are too long -----------------------------------------------------------------------


def test_an_oversized_batch_answer_fails_cleanly(server: GitLfsServer, tmp_path: Path) -> None:
    server.answer_padding = 64 * 1024 * 1024
    files = vm_files(tmp_path / "vm", {"a.bin": os.urandom(1000)})
    run = run_agent("lfs_upload", upload_params(server, files), server.token)
    assert run.error is not None and run.error["class"] == "protocol"
    assert "more than 8388608 bytes" in run.error["message"]
    assert server.counters().puts == 0


def test_an_oversized_error_answer_is_read_only_in_part(server: GitLfsServer, tmp_path: Path) -> None:
    server.answer_padding = 64 * 1024 * 1024
    server.fail_next("batch", 404, message="Repository relay/m not found")
    files = vm_files(tmp_path / "vm", {"a.bin": os.urandom(1000)})
    run = run_agent("lfs_upload", upload_params(server, files), server.token)
    assert run.error is not None and run.error["class"] == "not_found"
    assert "Repository relay/m not found" in run.error["message"] and len(run.error["message"]) < 1000


# -- where the token may go ----------------------------------------------------------------------------


def test_the_user_token_goes_only_to_the_remotes_own_origin() -> None:
    client = LfsClient("https://hub.example:8443/relay/m.git", "tok-" + "x" * 20, Context(io.StringIO()))
    basic = client._action_headers({"href": "https://hub.example:8443/o"})["Authorization"]
    assert basic.startswith("Basic ")
    assert client._action_headers({"href": "https://HUB.example:8443/other/path?x=1"}) == {
        "Authorization": basic
    }
    for elsewhere in (
        "http://hub.example:8443/o",  # same host and port, but in clear
        "https://hub.example/o",  # another port (443)
        "https://hub.example:9443/o",
        "https://storage.example:8443/o",
        "https://hub.example.evil:8443/o",
    ):
        assert client._action_headers({"href": elsewhere}) == {}, elsewhere
    # Default ports are the same origin whether written or not.
    implied = LfsClient("https://hub.example/relay/m.git", "tok-" + "x" * 20, Context(io.StringIO()))
    assert "Authorization" in implied._action_headers({"href": "https://hub.example:443/o"})
    # The action's own header is sent as given, wherever it points.
    own = {"href": "https://storage.example/o", "header": {"Authorization": "Bearer abc", "X-Amz-Acl": "p"}}
    assert implied._action_headers(own) == {"Authorization": "Bearer abc", "X-Amz-Acl": "p"}


def _credential(runner: GitRunner, url: str) -> str:
    scheme, _, rest = url.partition("://")
    query = f"protocol={scheme}\nhost={rest.split('/', 1)[0]}\n\n".encode()
    code, out, _ = runner.run(["credential", "fill"], data=query, check=False)
    return out.decode() if code == 0 else ""


def test_the_credential_helper_answers_only_for_the_remotes_scheme_host_and_port(
    server: GitLfsServer, tmp_path: Path
) -> None:
    remote = server.remote_url(OWNER, "m")
    runner = GitRunner(
        str(tmp_path / "scratch.git"),
        str(tmp_path / "home"),
        server.token,
        Context(io.StringIO()),
        remote=remote,
        activity_timeout=60,
    )
    assert f"password={server.token}" in _credential(runner, remote)
    port = server.port
    for elsewhere in (
        f"https://127.0.0.1:{port}/relay/m.git",
        f"http://127.0.0.1:{port + 1}/relay/m.git",
        "http://127.0.0.1/relay/m.git",
        f"http://localhost:{port}/relay/m.git",
    ):
        assert server.token not in _credential(runner, elsewhere), elsewhere

    # Asked by a second host for credentials, git gets none: the host sees no token.
    with GitLfsServer(tmp_path / "other", token=server.token) as other:
        other.new_repo(OWNER, "m")
        code, _, err = runner.run(["ls-remote", other.remote_url(OWNER, "m")], check=False)
        assert code != 0 and "could not read Username" in err
        assert [e.header("Authorization") for e in other.request_log.snapshot()] == [None]


@pytest.mark.parametrize("with_lfs", [False, True])
def test_a_redirect_to_another_host_is_not_followed_and_blocks(
    server: GitLfsServer, tmp_path: Path, with_lfs: bool
) -> None:
    """The remote redirects everything to another server that would take the same token: git (with
    http.followRedirects=false) and relayd's own LFS client stop there, and nothing reaches it."""
    names = {"README.md": b"# m\n", **({"w.bin": os.urandom(5000)} if with_lfs else {})}
    files = vm_files(tmp_path / "vm", names)
    with GitLfsServer(tmp_path / "other", token=server.token, auto_create_repos=True) as other:
        server.redirect = (301, other.base_url)
        run = run_agent("git_publish", publish_params(server, tmp_path / "work", files), server.token)
        assert run.error is not None
        assert (run.error["kind"], run.error["class"]) == ("blocked", "redirect")
        assert "[modelscope] remote" in run.error["hint"]
        if with_lfs:  # relayd's own client names where the redirect leads
            assert f"redirects to {other.base_url}/relay/m.git/info/lfs/objects/batch" in run.error["message"]
        assert other.request_log.snapshot() == [] and other.storage_log.snapshot() == []
        assert server.token not in json.dumps(run.error)


def test_a_git_slower_than_the_poll_still_gets_its_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner polls its child every 0.2 s (to notice a cancel): a git that takes longer before it
    reads stdin must still get the whole input once, not an error about input sent twice."""
    real_git = shutil.which("git")
    assert real_git
    slow = tmp_path / "bin"
    slow.mkdir()
    (slow / "git").write_text(f'#!/bin/sh\nsleep 0.6\nexec {real_git} "$@"\n')
    (slow / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{slow}:{os.environ['PATH']}")
    runner = GitRunner(
        str(tmp_path / "scratch.git"),
        str(tmp_path / "home"),
        "tok-" + "x" * 20,
        Context(io.StringIO()),
        remote="https://hub.example/relay/m.git",
        activity_timeout=30,
    )
    code, out, _ = runner.run(["hash-object", "--stdin"], data=b"hello\n")
    assert code == 0
    assert out.decode().strip() == hashlib.sha1(b"blob 6\x00hello\n").hexdigest()  # git's object id
