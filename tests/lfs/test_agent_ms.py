"""The agent's ModelScope HTTP upload ops (relayd/vm/agent/ms_api.py) against the sandbox's ModelScope
API: pre-check, guarded PUT, stash, commit; read back with the real git and git-lfs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from relayd.vm.agent.ms_api import COMMIT_ACTIONS, batches, commit_actions
from relayd_sandbox.gitlfs import GitLfsServer
from tests.support.hermetic_git import GitClient
from tests.support.lfs_support import OWNER, run_agent

pytestmark = pytest.mark.timeout(120)


def _params(server: GitLfsServer, name: str, **more: Any) -> dict[str, Any]:
    return {"endpoint": server.base_url, "repo": f"{OWNER}/{name}", "repo_type": "model", **more}


def _file(folder: Path, name: str, data: bytes) -> tuple[str, int, str]:
    path = folder / name
    path.write_bytes(data)
    return str(path), len(data), hashlib.sha256(data).hexdigest()


def test_upload_sends_only_what_modelscope_lacks_then_one_commit_clones_back(
    server: GitLfsServer, git: GitClient, tmp_path: Path
) -> None:
    server.new_repo(OWNER, "m")
    server.new_repo(OWNER, "elsewhere")
    held = os.urandom(150_000)
    server.store_object(OWNER, "elsewhere", held)  # another repo has it: global dedupe
    fresh = os.urandom(400_000)
    p_held, n_held, oid_held = _file(tmp_path, "a.safetensors", held)
    p_fresh, n_fresh, oid_fresh = _file(tmp_path, "b.safetensors", fresh)
    objects = [
        {"oid": oid_held, "size": n_held, "path": p_held},
        {"oid": oid_fresh, "size": n_fresh, "path": p_fresh},
    ]

    checked = run_agent("ms_precheck", _params(server, "m", objects=objects), server.token).ok
    assert checked == {"present": [oid_held], "missing": [oid_fresh]}
    result = run_agent("ms_blobs", _params(server, "m", objects=objects), server.token).ok
    assert result["objects"] == [
        {"oid": oid_held, "size": n_held, "skipped": True, "sent": 0},
        {"oid": oid_fresh, "size": n_fresh, "skipped": False, "sent": n_fresh},
    ]
    assert server.counters().put_bytes == n_fresh
    puts = [e for e in server.request_log.snapshot() if e.method == "PUT"]
    assert [e.header("Authorization") for e in puts] == ["Bearer [redacted]"]

    work = str(tmp_path / "work")
    config = b'{"model_type": "bert"}\n'
    p_config, _, _ = _file(tmp_path, "config.json", config)
    stash = run_agent("ms_stash", {"work_dir": work, "path": p_config}, server.token).ok
    files = [
        {"path": "a.safetensors", "lfs": True, "oid": oid_held, "size": n_held},
        {"path": "sub/b.safetensors", "lfs": True, "oid": oid_fresh, "size": n_fresh},
        {"path": "config.json", "stash": stash["key"]},
    ]
    made = run_agent(
        "ms_commit", _params(server, "m", work_dir=work, files=files, message="relay"), server.token
    ).ok
    assert made["commits"] == [server.branch_head(OWNER, "m")]
    clone = git.clone(server.remote_url(OWNER, "m"), tmp_path / "clone")
    git.run("lfs", "pull", cwd=clone)
    assert (clone / "a.safetensors").read_bytes() == held
    assert (clone / "sub" / "b.safetensors").read_bytes() == fresh
    assert (clone / "config.json").read_bytes() == config
    attributes = (clone / ".gitattributes").read_text()
    assert "/sub/b.safetensors filter=lfs" in attributes
    # Nothing of the token reached git's config or the agent's events.
    assert server.token not in (clone / ".git" / "config").read_text()


def test_rate_limits_are_waited_out_and_a_huge_blob_blocks_saying_split_the_file(
    server: GitLfsServer, tmp_path: Path
) -> None:
    server.new_repo(OWNER, "r")
    data = os.urandom(50_000)
    path, size, oid = _file(tmp_path, "w.bin", data)
    server.fail_next("ms_batch", 429, message="slow down", retry_after=1)
    server.fail_next("ms_upload", 503, message="busy")
    run = run_agent(
        "ms_blobs", _params(server, "r", objects=[{"oid": oid, "size": size, "path": path}]), server.token
    )
    assert run.ok["objects"][0]["skipped"] is False
    retries = [e for e in run.events if e["event"] == "retry"]
    assert [r["what"] for r in retries] == ["pre-check", f"upload {oid[:12]}"]
    assert retries[0]["delay"] >= 1

    big = os.urandom(3000)
    server.max_object_size = 2000
    path, size, oid = _file(tmp_path, "big.bin", big)
    run = run_agent(
        "ms_blobs", _params(server, "r", objects=[{"oid": oid, "size": size, "path": path}]), server.token
    )
    assert run.error is not None
    assert (run.error["kind"], run.error["class"]) == ("blocked", "too_large")
    assert "split the file" in run.error["message"]


def test_refusals_block_with_what_to_do(server: GitLfsServer, tmp_path: Path) -> None:
    missing = run_agent("ms_precheck", _params(server, "absent", objects=[]), server.token)
    assert missing.error is not None and missing.error["class"] == "not_found"
    server.new_repo(OWNER, "x")
    wrong = run_agent("ms_precheck", _params(server, "x", objects=[]), "not-the-token")
    assert wrong.error is not None and (wrong.error["kind"], wrong.error["class"]) == ("blocked", "auth")
    assert "not-the-token" not in str(wrong.error)


def test_wrong_bytes_measured_by_the_server_go_back_to_the_daemon(
    server: GitLfsServer, tmp_path: Path
) -> None:
    server.new_repo(OWNER, "c")
    path, size, oid = _file(tmp_path, "w.bin", os.urandom(20_000))
    server.corrupt_puts = 1
    objects = [{"oid": oid, "size": size, "path": path}]
    run = run_agent("ms_blobs", _params(server, "c", objects=objects, verify="stat"), server.token)
    assert run.error is not None and run.error["class"] == "mismatch"


def test_commits_are_split_at_256_actions_and_8_mib_inline() -> None:
    actions = [{"content": "", "path": f"f{i}"} for i in range(COMMIT_ACTIONS + 1)]
    assert [len(group) for group in batches(actions)] == [COMMIT_ACTIONS, 1]
    big = [{"content": "x" * (5 * 1024 * 1024)} for _ in range(3)]
    assert [len(group) for group in batches(big)] == [1, 1, 1]


def test_removed_paths_become_delete_actions_and_unsafe_paths_are_refused(tmp_path: Path) -> None:
    actions = commit_actions([], ["old.bin"], str(tmp_path))
    assert actions == [{"action": "delete", "path": "old.bin"}]
    with pytest.raises(Exception, match="unsafe path"):
        commit_actions([{"path": "../x", "lfs": True, "oid": "0" * 64, "size": 1}], [], str(tmp_path))


def test_a_small_file_too_large_to_commit_inline_blocks(server: GitLfsServer, tmp_path: Path) -> None:
    path, _, _ = _file(tmp_path, "README.md", b"x" * 2000)
    run = run_agent("ms_stash", {"work_dir": str(tmp_path / "w"), "path": path, "limit": 1000}, server.token)
    assert run.error is not None and (run.error["kind"], run.error["class"]) == ("blocked", "too_large")
    kept = run_agent("ms_stash", {"work_dir": str(tmp_path / "w"), "path": path, "limit": 2000}, server.token)
    assert kept.ok["size"] == 2000
