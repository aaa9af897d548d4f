"""The VM side of lfs_push, run as the executors run it (``python -m relayd.vm.agent``, one JSON
request on stdin) against the sandbox git + LFS server, checked with the real git and git-lfs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from relayd.vm.agent.lfs_files import attribute_pattern, merge_attributes, pointer, wants_lfs
from relayd_sandbox.gitlfs import GitLfsServer, lfs_pointer
from relayd_sandbox.processes import processes_with_cmdline
from tests.support.hermetic_git import CREDENTIAL_HELPER, GitClient
from tests.support.lfs_support import OWNER, run_agent, start_agent

pytestmark = pytest.mark.timeout(120)


def oid_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_files(root: Path, files: dict[str, bytes]) -> dict[str, Path]:
    paths = {}
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths[name] = path
    return paths


def publish_params(
    server: GitLfsServer, name: str, work: Path, files: dict[str, Path], **extra: Any
) -> dict[str, Any]:
    entries = []
    for path, source in sorted(files.items()):
        data = source.read_bytes()
        lfs = wants_lfs(path, len(data), False)
        entry: dict[str, Any] = {"path": path, "size": len(data), "lfs": lfs, "source": str(source)}
        if lfs:
            entry["oid"] = oid_of(data)
        entries.append(entry)
    return {
        "remote": server.remote_url(OWNER, name),
        "branch": "master",
        "work_dir": str(work),
        "files": entries,
        "message": "Relay acme/model at 0123456789ab from Hugging Face\n",
        **extra,
    }


def upload_params(server: GitLfsServer, name: str, files: dict[str, Path], **extra: Any) -> dict[str, Any]:
    objects = [
        {"oid": oid_of(p.read_bytes()), "size": p.stat().st_size, "path": str(p)} for p in files.values()
    ]
    return {"remote": server.remote_url(OWNER, name), "ref": "refs/heads/master", "objects": objects, **extra}


def tree_of(git: GitClient, clone: Path) -> dict[str, str]:
    return {
        str(p.relative_to(clone)): oid_of(p.read_bytes())
        for p in clone.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(clone).parts
    }


# -- pure helpers ------------------------------------------------------------------------------------


def test_what_goes_to_lfs() -> None:
    assert wants_lfs("model.safetensors", 10, False)
    assert wants_lfs("big.txt", 64 * 1024 + 1, False)
    assert wants_lfs("training_args.bin", 5000, True)
    assert not wants_lfs("vocab.txt", 1000, False)
    for name in ("README.md", "config.json", "configuration.json", ".gitattributes", "sub/config.json"):
        assert not wants_lfs(name, 10 * 1024 * 1024, True)
    assert not wants_lfs("empty.bin", 0, True)
    assert pointer("a" * 64, 12) == lfs_pointer("a" * 64, 12)


def test_attribute_patterns_and_merge() -> None:
    assert attribute_pattern("a/b.bin") == "/a/b.bin"
    assert attribute_pattern("x*y[1].bin") == "/x\\*y\\[1].bin"
    assert attribute_pattern("with space.bin") == '"/with space.bin"'
    merged = merge_attributes("*.bin filter=lfs\n# mine\n", "*.bin filter=lfs\n*.pt filter=lfs\n")
    assert merged == ["*.bin filter=lfs", "# mine", "*.pt filter=lfs"]


# -- lfs_upload --------------------------------------------------------------------------------------


def test_upload_sends_missing_objects_and_skips_stored_ones(server: GitLfsServer, tmp_path: Path) -> None:
    server.new_repo(OWNER, "m")
    files = put_files(tmp_path / "vm", {"a.safetensors": os.urandom(300_000), "b.bin": os.urandom(5000)})
    run = run_agent("lfs_upload", upload_params(server, "m", files), server.token)
    assert [o["skipped"] for o in run.ok["objects"]] == [False, False]
    assert any(e["event"] == "progress" and e["sent"] == 300_000 for e in run.events)
    for path in files.values():
        data = path.read_bytes()
        assert server.read_object(OWNER, "m", oid_of(data)) == data
    before = server.counters()
    assert (before.puts_stored, before.verifies) == (2, 2)
    # The PUT carried the action's own header, never the user's Basic credentials.
    puts = [e for e in server.request_log.snapshot() if e.method == "PUT"]
    assert {e.header("Authorization") for e in puts} == {"Bearer [redacted]"}

    again = run_agent("lfs_upload", upload_params(server, "m", files), server.token)
    assert [o["skipped"] for o in again.ok["objects"]] == [True, True]
    after = server.counters()
    assert (after.puts, after.put_bytes) == (before.puts, before.put_bytes)
    assert after.batch_requests == before.batch_requests + 1


@pytest.mark.parametrize("verify", ["sha256", "stat"])
def test_a_changed_file_never_completes_an_upload(server: GitLfsServer, tmp_path: Path, verify: str) -> None:
    """Wrong bytes on the VM: with sha256 the last chunk is held back; with stat the server refuses
    them (422) and the agent, hashing the file then, blocks instead of retrying forever."""
    server.new_repo(OWNER, "m")
    data = os.urandom(3 * 1024 * 1024 + 5)
    files = put_files(tmp_path / "vm", {"w.bin": data})
    params = upload_params(server, "m", files, verify=verify)
    files["w.bin"].write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, wrong bytes
    run = run_agent("lfs_upload", params, server.token)
    assert run.error is not None
    assert (run.error["kind"], run.error["class"]) == ("blocked", "integrity")
    assert "does not match" in run.error["message"]
    assert server.wait_idle()
    assert server.objects(OWNER, "m") == {}
    assert server.counters().puts_stored == 0
    if verify == "sha256":
        assert server.counters().put_bytes < len(data)  # the last chunk was held back


def test_stat_mode_refuses_a_file_that_changes_while_it_is_sent(server: GitLfsServer, tmp_path: Path) -> None:
    server.new_repo(OWNER, "m")
    data = os.urandom(24 * 1024 * 1024)
    files = put_files(tmp_path / "vm", {"w.bin": data})
    server.put_bytes_per_second = 8 * 1024 * 1024
    touched = []

    def touch(event: dict[str, Any]) -> None:
        if event["event"] == "progress" and not touched:
            os.utime(files["w.bin"], ns=(time.time_ns(), time.time_ns()))
            touched.append(True)

    run = run_agent(
        "lfs_upload", upload_params(server, "m", files, verify="stat"), server.token, on_event=touch
    )
    assert touched and run.error is not None
    assert (run.error["kind"], run.error["class"]) == ("blocked", "integrity")
    assert "changed while it was sent" in run.error["message"]
    server.put_bytes_per_second = None
    assert server.wait_idle()
    assert server.objects(OWNER, "m") == {}


def test_wrong_bytes_refused_by_the_server_go_back_to_the_daemon_at_once(
    server: GitLfsServer, tmp_path: Path
) -> None:
    """A PUT damaged on the way and refused by the server (422) is reported as a mismatch without a
    retry inside the call: the daemon sends it again once and blocks when it repeats."""
    server.new_repo(OWNER, "m")
    data = os.urandom(100_000)
    files = put_files(tmp_path / "vm", {"w.bin": data})
    server.corrupt_puts = 1
    run = run_agent("lfs_upload", upload_params(server, "m", files, verify="stat"), server.token)
    assert run.error is not None
    assert (run.error["kind"], run.error["class"]) == ("retryable", "mismatch")
    assert oid_of(data)[:12] in run.error["message"] and "rejected" in run.error["message"]
    assert not any(e["event"] == "retry" for e in run.events)
    assert server.wait_idle()
    assert (server.counters().puts, server.counters().puts_stored) == (1, 0)
    again = run_agent("lfs_upload", upload_params(server, "m", files, verify="stat"), server.token)
    assert again.ok["objects"][0]["skipped"] is False
    assert server.counters().puts_stored == 1


@pytest.mark.parametrize(
    ("endpoint", "status", "kind", "error_class", "hint"),
    [
        ("batch", 403, "blocked", "auth", "write to"),
        ("batch", 507, "blocked", "quota", "quota"),
        ("batch", 413, "blocked", "too_large", "split the file"),
        ("upload", 507, "blocked", "quota", "quota"),
    ],
)
def test_refusals_block_with_what_to_do(
    server: GitLfsServer,
    tmp_path: Path,
    *,
    endpoint: str,
    status: int,
    kind: str,
    error_class: str,
    hint: str,
) -> None:
    server.new_repo(OWNER, "m")
    files = put_files(tmp_path / "vm", {"w.bin": os.urandom(1000)})
    server.fail_next(endpoint, status, message="refused here")  # type: ignore[arg-type]
    run = run_agent("lfs_upload", upload_params(server, "m", files), server.token)
    assert run.error is not None
    assert (run.error["kind"], run.error["class"]) == (kind, error_class)
    assert hint in run.error["hint"]
    assert "relayctl retry" in run.error["hint"]


def test_a_refused_token_and_a_missing_repo_block_without_showing_the_token(
    server: GitLfsServer, tmp_path: Path
) -> None:
    server.new_repo(OWNER, "m")
    files = put_files(tmp_path / "vm", {"w.bin": os.urandom(1000)})
    wrong = "wrong-token-0123456789"
    run = run_agent("lfs_upload", upload_params(server, "m", files), wrong)
    assert run.error is not None and (run.error["kind"], run.error["class"]) == ("blocked", "auth")
    assert "token" in run.error["hint"]
    assert wrong not in json.dumps(run.error)
    missing = run_agent("lfs_upload", upload_params(server, "nope", files), server.token)
    assert missing.error is not None and missing.error["class"] == "not_found"
    assert "create the model repo relay/nope" in missing.error["hint"]
    publish = run_agent("git_publish", publish_params(server, "m", tmp_path / "work", files), wrong)
    assert publish.error is not None and publish.error["class"] == "auth"
    assert wrong not in json.dumps(publish.error)
    assert server.branch_head(OWNER, "m") is None


def test_rate_limits_and_server_errors_are_retried(server: GitLfsServer, tmp_path: Path) -> None:
    server.new_repo(OWNER, "m")
    files = put_files(tmp_path / "vm", {"w.bin": os.urandom(1000)})
    server.fail_next("batch", 429, message="slow down", retry_after=1)
    server.fail_next("verify", 503)
    started = time.monotonic()
    run = run_agent("lfs_upload", upload_params(server, "m", files), server.token)
    assert run.ok["objects"][0]["skipped"] is False
    assert time.monotonic() - started >= 1  # Retry-After was honoured
    retries = [e for e in run.events if e["event"] == "retry"]
    assert len(retries) == 2


def test_server_down_for_a_while_then_the_upload_completes(server: GitLfsServer, tmp_path: Path) -> None:
    server.new_repo(OWNER, "m")
    data = os.urandom(2 * 1024 * 1024)
    files = put_files(tmp_path / "vm", {"w.bin": data})
    server.put_bytes_per_second = 512 * 1024
    oid = oid_of(data)

    def outage() -> None:
        deadline = time.monotonic() + 20
        while server.counters().put_bytes_by_oid.get(oid, 0) < 200_000 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.put_bytes_per_second = None
        server.restart(down_for=1.5)

    thread = threading.Thread(target=outage)
    thread.start()
    run = run_agent("lfs_upload", upload_params(server, "m", files, attempts=5), server.token)
    thread.join()
    assert run.ok["objects"][0]["skipped"] is False
    assert server.read_object(OWNER, "m", oid) == data
    assert any(e["event"] == "retry" for e in run.events)


def test_an_interrupted_upload_resumes_by_object(server: GitLfsServer, tmp_path: Path) -> None:
    """Kill the agent mid-object (as a dead link does): the objects done stay done, the one
    interrupted starts again from byte 0, and nothing is sent twice otherwise."""
    server.new_repo(OWNER, "m")
    # Big enough that the socket buffers (up to 36 MiB on loopback here) cannot hold the rest when
    # the agent dies.
    small, big = os.urandom(200_000), os.urandom(48 * 1024 * 1024)
    files = put_files(tmp_path / "vm", {"a.bin": small, "b.bin": big})
    server.put_bytes_per_second = 4 * 1024 * 1024
    params = upload_params(server, "m", files)

    def watch(event: dict[str, Any]) -> None:
        if (
            event["event"] == "progress"
            and server.counters().put_bytes_by_oid.get(oid_of(big), 0) > 1_000_000
        ):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_agent("lfs_upload", params, server.token, on_event=watch)
    server.put_bytes_per_second = None
    assert server.wait_idle()
    first = server.counters().put_bytes_by_oid
    assert first[oid_of(small)] == len(small)
    assert 0 < first[oid_of(big)] < len(big)
    assert list(server.objects(OWNER, "m")) == [oid_of(small)]

    run = run_agent("lfs_upload", params, server.token)
    assert [o["skipped"] for o in run.ok["objects"]] == [True, False]
    second = server.counters().put_bytes_by_oid
    assert second[oid_of(small)] == len(small)  # not sent again
    assert second[oid_of(big)] == first[oid_of(big)] + len(big)  # restarted at byte 0
    assert server.read_object(OWNER, "m", oid_of(big)) == big


def test_cancel_stops_an_upload_at_once(server: GitLfsServer, tmp_path: Path) -> None:
    server.new_repo(OWNER, "m")
    files = put_files(tmp_path / "vm", {"b.bin": os.urandom(48 * 1024 * 1024)})
    server.put_bytes_per_second = 1024 * 1024
    child = start_agent("lfs_upload", upload_params(server, "m", files), server.token)
    assert child.stdin is not None and child.stdout is not None
    for line in child.stdout:
        if json.loads(line)["event"] == "progress":
            break
    child.stdin.write('{"cancel": true}\n')
    child.stdin.flush()
    started = time.monotonic()
    result = json.loads(child.stdout.readline())
    while result["event"] != "result":
        result = json.loads(child.stdout.readline())
    assert result["error"]["kind"] == "cancelled"
    assert time.monotonic() - started < 3
    child.stdin.close()
    child.wait(10)
    server.put_bytes_per_second = None
    assert server.wait_idle()
    assert server.objects(OWNER, "m") == {}


# -- git_publish -------------------------------------------------------------------------------------


def test_publish_round_trip_with_real_git(server: GitLfsServer, git: GitClient, tmp_path: Path) -> None:
    server.new_repo(OWNER, "m")
    server.commit_server_side(
        OWNER,
        "m",
        {".gitattributes": b"*.onnx filter=lfs diff=lfs merge=lfs -text\n# kept\n", "LICENSE": b"MIT\n"},
    )
    content = {
        "model-00001.safetensors": os.urandom(400_000),
        "sub/dir/weights.pt": os.urandom(100_000),
        "tokenizer.json": os.urandom(70_000),  # over 64 KiB: LFS although no LFS suffix
        "vocab.txt": b"a\nb\n",
        "README.md": b"# model\n" + b"x" * 100_000,  # big, but the hub parses it: plain
        "config.json": b'{"hidden": 1}\n',
        "configuration.json": b'{"framework": "pytorch"}\n',
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "odd name [1].bin": os.urandom(1000),
    }
    files = put_files(tmp_path / "vm", content)
    uploads = {k: v for k, v in files.items() if wants_lfs(k, v.stat().st_size, False)}
    assert run_agent("lfs_upload", upload_params(server, "m", uploads), server.token).ok is not None
    before = server.counters()
    run = run_agent("git_publish", publish_params(server, "m", tmp_path / "work", files), server.token)
    result = run.ok
    assert result["pushed"] is True and result["uploaded"] == 0
    assert result["confirmed"] == len(uploads)
    assert server.branch_head(OWNER, "m") == result["commit"]
    assert server.counters().puts == before.puts  # the push sent no object again

    clone = git.clone(server.remote_url(OWNER, "m"), tmp_path / "clone")
    tree = tree_of(git, clone)
    for path, data in content.items():
        if path != ".gitattributes":
            assert tree[path] == oid_of(data), path
    assert tree["LICENSE"] == oid_of(b"MIT\n")  # a file relayd did not put there stays
    for path in uploads:
        data = content[path]
        assert server.show_file(OWNER, "m", path) == lfs_pointer(oid_of(data), len(data))
    for path in ("README.md", "config.json", "configuration.json", "vocab.txt"):
        assert server.show_file(OWNER, "m", path) == content[path]  # plain, not a pointer
    attributes = server.show_file(OWNER, "m", ".gitattributes").decode()
    assert attributes.startswith("*.onnx filter=lfs diff=lfs merge=lfs -text\n# kept\n")
    assert "*.safetensors filter=lfs" in attributes
    attrs = git.run("check-attr", "filter", "--", *content, cwd=clone).stdout
    for path in content:
        expected = "lfs" if path in uploads else "unspecified"
        assert f"{path}: filter: {expected}" in attrs
    message = git.run("log", "-1", "--format=%B", cwd=clone).stdout
    assert "Relay acme/model at 0123456789ab" in message

    # Publishing the same snapshot again changes nothing (e.g. after a crash right after the push).
    again = run_agent("git_publish", publish_params(server, "m", tmp_path / "work", files), server.token).ok
    assert again["pushed"] is False and again["commit"] == result["commit"]


def test_second_snapshot_replaces_changed_and_removes_deleted(
    server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    server.new_repo(OWNER, "m")
    one = {
        "a.bin": os.urandom(100_000),
        "b.bin": os.urandom(100_000),
        "gone/c.bin": os.urandom(5000),
        "x": b"1",
    }
    files = put_files(tmp_path / "vm1", one)
    lfs_files = {k: v for k, v in files.items() if k != "x"}
    assert run_agent("lfs_upload", upload_params(server, "m", lfs_files), server.token).ok is not None
    first = run_agent("git_publish", publish_params(server, "m", tmp_path / "work", files), server.token).ok
    before = server.counters()

    two = {"a.bin": one["a.bin"], "b.bin": os.urandom(100_000), "x": b"2", "new/d.bin": os.urandom(7000)}
    files2 = put_files(tmp_path / "vm2", two)
    up = run_agent(
        "lfs_upload", upload_params(server, "m", {k: v for k, v in files2.items() if k != "x"}), server.token
    ).ok
    assert sorted(o["skipped"] for o in up["objects"]) == [False, False, True]
    sent = server.counters().put_bytes - before.put_bytes
    assert sent == len(two["b.bin"]) + len(two["new/d.bin"])  # only the changed objects
    second = run_agent(
        "git_publish",
        publish_params(server, "m", tmp_path / "work", files2, removed=["gone/c.bin"]),
        server.token,
    ).ok
    assert second["parent"] == first["commit"]
    clone = git.clone(server.remote_url(OWNER, "m"), tmp_path / "clone")
    tree = tree_of(git, clone)
    assert {k: v for k, v in tree.items() if k != ".gitattributes"} == {k: oid_of(v) for k, v in two.items()}
    assert not (clone / "gone").exists()


def test_a_push_rejected_as_non_fast_forward_is_rebuilt_on_the_new_tip(
    server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    server.new_repo(OWNER, "m")
    files = put_files(tmp_path / "vm", {"w.bin": os.urandom(80_000), "README.md": b"# ours\n"})
    assert (
        run_agent("lfs_upload", upload_params(server, "m", {"w.bin": files["w.bin"]}), server.token).ok
        is not None
    )
    raced: list[str] = []

    def race(owner: str, name: str, path: str, service: str) -> None:
        # Someone commits on the hub between relayd's fetch and its push.
        if service == "git-receive-pack" and not raced:
            raced.append(server.commit_server_side(OWNER, "m", {"NOTES.md": b"edited on the hub\n"}))

    server.before_git = race
    run = run_agent("git_publish", publish_params(server, "m", tmp_path / "work", files), server.token)
    result = run.ok
    assert raced and result["rebuilt"] == 1
    assert result["parent"] == raced[0]
    assert any(e.get("step") == "rejected" for e in run.events)
    clone = git.clone(server.remote_url(OWNER, "m"), tmp_path / "clone")
    assert (clone / "NOTES.md").read_bytes() == b"edited on the hub\n"
    assert (clone / "w.bin").read_bytes() == files["w.bin"].read_bytes()


def test_force_push_replaces_a_racing_commit_only_when_configured(
    server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    server.new_repo(OWNER, "m")
    files = put_files(tmp_path / "vm", {"README.md": b"# ours\n"})
    raced: list[str] = []

    def race(owner: str, name: str, path: str, service: str) -> None:
        if service == "git-receive-pack" and not raced:
            raced.append(server.commit_server_side(OWNER, "m", {"NOTES.md": b"edited on the hub\n"}))

    server.before_git = race
    result = run_agent(
        "git_publish", publish_params(server, "m", tmp_path / "work", files, force_push=True), server.token
    ).ok
    assert result["rebuilt"] == 0 and server.branch_head(OWNER, "m") == result["commit"]
    log = git.run("ls-remote", server.remote_url(OWNER, "m")).stdout
    assert raced[0] not in log


def test_an_object_missing_everywhere_stops_the_publish(server: GitLfsServer, tmp_path: Path) -> None:
    server.new_repo(OWNER, "m")
    params = {
        "remote": server.remote_url(OWNER, "m"),
        "branch": "master",
        "work_dir": str(tmp_path / "work"),
        "files": [{"path": "w.bin", "size": 10, "lfs": True, "oid": "ab" * 32, "source": None}],
    }
    run = run_agent("git_publish", params, server.token)
    assert run.error is not None and (run.error["kind"], run.error["class"]) == ("blocked", "missing")
    assert server.branch_head(OWNER, "m") is None


def test_the_pre_push_hook_is_a_safety_net(server: GitLfsServer, tmp_path: Path) -> None:
    """The scratch repository has git-lfs's pre-push hook, which refuses a pointer whose object the
    server lacks (were relayd's own check ever bypassed)."""
    server.new_repo(OWNER, "m")
    files = put_files(tmp_path / "vm", {"README.md": b"# ours\n"})
    assert (
        run_agent("git_publish", publish_params(server, "m", tmp_path / "work", files), server.token).ok
        is not None
    )
    scratch = next((tmp_path / "work" / "repos").glob("*.git"))
    hook = (scratch / "hooks" / "pre-push").read_text()
    assert "git lfs pre-push" in hook
    env = {
        "PATH": os.environ["PATH"],
        "GIT_DIR": str(scratch),
        "HOME": str(tmp_path / "work" / "home"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "MS_TOKEN": server.token,
        "GIT_TERMINAL_PROMPT": "0",
    }
    dangling = pointer("cd" * 32, 99)
    blob = (
        subprocess.run(
            ["git", "hash-object", "-w", "--stdin"], input=dangling, env=env, capture_output=True, check=True
        )
        .stdout.decode()
        .strip()
    )
    tree = (
        subprocess.run(
            ["git", "mktree"],
            input=f"100644 blob {blob}\tw.bin\n".encode(),
            env=env,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    commit = (
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit-tree", tree, "-m", "dangling"],
            env=env,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    pushed = subprocess.run(
        [
            "git",
            "-c",
            f"credential.helper={CREDENTIAL_HELPER}",
            "-c",
            "lfs.locksverify=false",
            "push",
            server.remote_url(OWNER, "m"),
            f"{commit}:refs/heads/dangling",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert pushed.returncode != 0
    assert server.branch_head(OWNER, "m", "dangling") is None


def test_the_agent_ops_run_on_python_3_8(server: GitLfsServer, git: GitClient, tmp_path: Path) -> None:
    """The VM may have only python 3.8: upload and publish with it when this machine has one."""
    found = sorted(Path.home().glob(".pyenv/versions/3.8*/bin/python3.8")) or [
        Path(p) for p in ("/usr/bin/python3.8",) if Path(p).exists()
    ]
    if not found:
        pytest.skip("no python 3.8 here")
    python = str(found[0])
    server.new_repo(OWNER, "m")
    files = put_files(tmp_path / "vm", {"w.bin": os.urandom(90_000), "README.md": b"# m\n"})
    upload = run_agent(
        "lfs_upload", upload_params(server, "m", {"w.bin": files["w.bin"]}), server.token, python=python
    )
    assert upload.ok["objects"][0]["skipped"] is False
    publish = run_agent(
        "git_publish", publish_params(server, "m", tmp_path / "work", files), server.token, python=python
    )
    assert server.branch_head(OWNER, "m") == publish.ok["commit"]
    clone = git.clone(server.remote_url(OWNER, "m"), tmp_path / "clone")
    assert (clone / "w.bin").read_bytes() == files["w.bin"].read_bytes()


@pytest.mark.parametrize("how", ["link", "cancel"])
def test_git_children_die_as_a_group(server: GitLfsServer, tmp_path: Path, how: str) -> None:
    """A push hanging in git (and its git-lfs pre-push hook) is killed as a whole when the link dies
    or the daemon cancels; nothing keeps running on the VM."""
    server.new_repo(OWNER, "m")
    files = put_files(tmp_path / "vm", {"README.md": b"# m\n"})
    entered = threading.Event()
    release = threading.Event()

    def hang(owner: str, name: str, path: str, service: str) -> None:
        if service == "git-receive-pack":
            entered.set()
            release.wait(30)

    server.before_git = hang
    remote = server.remote_url(OWNER, "m")
    child = start_agent("git_publish", publish_params(server, "m", tmp_path / "work", files), server.token)
    assert child.stdin is not None and child.stdout is not None
    try:
        assert entered.wait(30), "the push never reached the server"
        assert processes_with_cmdline(remote), "git push is not running"
        if how == "link":
            child.stdin.close()  # the daemon or the SSH connection is gone
        else:
            child.stdin.write('{"cancel": true}\n')
            child.stdin.flush()
            lines = [json.loads(line) for line in child.stdout]
            assert lines[-1]["event"] == "result" and lines[-1]["error"]["kind"] == "cancelled"
        child.wait(15)
        deadline = time.monotonic() + 10
        while processes_with_cmdline(remote) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_with_cmdline(remote) == []
    finally:
        release.set()
        if child.poll() is None:
            child.kill()
    assert server.branch_head(OWNER, "m") is None


def test_the_publish_is_done_only_when_every_object_is_confirmed(
    server: GitLfsServer, tmp_path: Path
) -> None:
    """An object lost by the server after the pre-push check: the push lands, the batch download
    check finds the object missing and the publish fails (retryable); the next publish sends the
    object again from the VM's file and succeeds without a new commit."""
    server.new_repo(OWNER, "m")
    data = os.urandom(70_000)
    files = put_files(tmp_path / "vm", {"w.bin": data, "README.md": b"# m\n"})
    assert run_agent("lfs_upload", upload_params(server, "m", {"w.bin": files["w.bin"]}), server.token).ok
    lost: list[bool] = []

    def lose(owner: str, name: str, path: str, service: str) -> None:
        if path == "/git-receive-pack" and not lost:
            server.store.path(OWNER, "m", oid_of(data)).unlink()
            lost.append(True)

    server.before_git = lose
    failed = run_agent("git_publish", publish_params(server, "m", tmp_path / "work", files), server.token)
    assert lost and failed.error is not None
    assert (failed.error["kind"], failed.error["class"]) == ("retryable", "integrity")
    assert "not on the server after the push" in failed.error["message"]
    pushed = server.branch_head(OWNER, "m")
    assert pushed is not None

    again = run_agent("git_publish", publish_params(server, "m", tmp_path / "work", files), server.token).ok
    assert again["uploaded"] == 1 and again["pushed"] is False and again["commit"] == pushed
    assert server.read_object(OWNER, "m", oid_of(data)) == data
