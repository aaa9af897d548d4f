"""The sandbox's ModelScope HTTP upload API (relayd_sandbox.ms_api), driven with plain HTTP the way the
modelscope SDK drives the real one: pre-check, blob PUT, commit; then read back with the real git and
git-lfs clients from the same server."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import requests

from relayd_sandbox.gitlfs import GitLfsServer, lfs_pointer
from relayd_sandbox.systools import require_git_lfs
from tests.support.hermetic_git import hermetic_git

require_git_lfs()

pytestmark = pytest.mark.timeout(60)

OWNER = "relay"


def _api(server: GitLfsServer, name: str, rest: str) -> str:
    return f"{server.base_url}/api/v1/repos/models/{OWNER}/{name}/{rest}"


def _cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"m_session_id={token}"}


def _precheck(server: GitLfsServer, name: str, objects: list[dict[str, Any]]) -> requests.Response:
    return requests.post(
        _api(server, name, "info/lfs/objects/batch"),
        json={"operation": "upload", "objects": objects},
        headers=_cookie(server.token),
        timeout=10,
    )


def _commit(server: GitLfsServer, name: str, actions: list[dict[str, Any]]) -> requests.Response:
    return requests.post(
        _api(server, name, "commit/master"),
        json={"commit_message": "upload", "actions": actions},
        headers=_cookie(server.token),
        timeout=10,
    )


def _lfs_action(path: str, data: bytes) -> dict[str, Any]:
    oid = hashlib.sha256(data).hexdigest()
    return {
        "action": "create",
        "path": path,
        "type": "lfs",
        "size": len(data),
        "sha256": oid,
        "content": "",
        "encoding": "",
    }


def _normal_action(path: str, data: bytes) -> dict[str, Any]:
    return {
        "action": "create",
        "path": path,
        "type": "normal",
        "size": len(data),
        "sha256": "",
        "content": base64.b64encode(data).decode(),
        "encoding": "base64",
    }


def _assert_envelope(answer: requests.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    document: dict[str, Any] = answer.json()
    assert set(document) == {"Code", "Data", "Message", "RequestId", "Success"}
    assert document["Code"] == status
    assert document["Success"] is (status == 200)
    assert answer.headers["x-request-id"] == document["RequestId"]
    return document


def test_precheck_put_commit_then_clone_and_lfs_pull_read_it_back(
    gitlfs_server: GitLfsServer, tmp_path: Path
) -> None:
    server = gitlfs_server
    server.new_repo(OWNER, "model")
    weights = os.urandom(300_000)
    oid = hashlib.sha256(weights).hexdigest()

    answer = _assert_envelope(_precheck(server, "model", [{"oid": oid, "size": len(weights)}]), 200)
    [item] = answer["Data"]["objects"]
    href = item["actions"]["upload"]["href"]
    put = requests.put(href, data=weights, headers=_cookie(server.token), timeout=10)
    _assert_envelope(put, 200)
    # Now present: no upload action any more.
    again = _assert_envelope(_precheck(server, "model", [{"oid": oid, "size": len(weights)}]), 200)
    assert again["Data"]["objects"] == [{"oid": oid, "size": len(weights)}]

    config = b'{"framework": "pytorch"}\n'
    made = _assert_envelope(
        _commit(
            server,
            "model",
            [_lfs_action("model.safetensors", weights), _normal_action("config.json", config)],
        ),
        200,
    )
    commit = made["Data"]["oid"]
    assert server.branch_head(OWNER, "model", "master") == commit
    assert server.show_file(OWNER, "model", "model.safetensors") == lfs_pointer(oid, len(weights))
    assert server.modelscope.commits == [(f"{OWNER}/model", "master", 2, commit)]

    git = hermetic_git(tmp_path / "home", server.token)
    clone = git.clone(server.remote_url(OWNER, "model"), tmp_path / "clone")
    git.run("lfs", "pull", cwd=clone)
    assert (clone / "model.safetensors").read_bytes() == weights
    assert (clone / "config.json").read_bytes() == config


def test_a_blob_any_repo_holds_is_present_for_every_repo(gitlfs_server: GitLfsServer, tmp_path: Path) -> None:
    server = gitlfs_server
    server.new_repo(OWNER, "first")
    server.new_repo(OWNER, "second")
    data = os.urandom(200_000)
    oid = server.store_object(OWNER, "first", data)

    answer = _assert_envelope(_precheck(server, "second", [{"oid": oid, "size": len(data)}]), 200)
    assert "actions" not in answer["Data"]["objects"][0]
    server.omit_stored = True  # the other way to say "present": left out of the answer
    assert _assert_envelope(_precheck(server, "second", [{"oid": oid, "size": len(data)}]), 200)["Data"] == {
        "objects": []
    }
    # A different size is different content: it must be uploaded.
    other = _assert_envelope(_precheck(server, "second", [{"oid": oid, "size": len(data) + 1}]), 200)
    assert "upload" in other["Data"]["objects"][0]["actions"]

    _assert_envelope(_commit(server, "second", [_lfs_action("w.bin", data)]), 200)
    assert server.counters().puts == 0
    git = hermetic_git(tmp_path / "home", server.token)
    clone = git.clone(server.remote_url(OWNER, "second"), tmp_path / "clone")
    git.run("lfs", "pull", cwd=clone)
    assert (clone / "w.bin").read_bytes() == data


def test_auth_is_the_session_cookie_or_a_bearer_token(gitlfs_server: GitLfsServer) -> None:
    server = gitlfs_server
    server.new_repo(OWNER, "auth")
    url = _api(server, "auth", "info/lfs/objects/batch")
    body = {"operation": "upload", "objects": []}
    none = _assert_envelope(requests.post(url, json=body, timeout=10), 401)
    assert none["Message"] == "用户未登录"
    _assert_envelope(requests.post(url, json=body, headers=_cookie("wrong"), timeout=10), 403)
    bearer = {"Authorization": f"Bearer {server.token}"}
    _assert_envelope(requests.post(url, json=body, headers=bearer, timeout=10), 200)
    basic = requests.post(url, json=body, auth=("oauth2", server.token), timeout=10)
    assert basic.status_code == 401  # the git side's Basic credentials are not the API's
    missing = _assert_envelope(_precheck(server, "absent", []), 404)
    assert missing["Message"] == "模型不存在"


def test_limits_on_prechecks_and_commits(gitlfs_server: GitLfsServer) -> None:
    server = gitlfs_server
    server.new_repo(OWNER, "limits")
    objects = [{"oid": f"{i:064x}", "size": 1} for i in range(65)]
    refused = _assert_envelope(_precheck(server, "limits", objects), 400)
    assert "64" in refused["Message"]
    _assert_envelope(_precheck(server, "limits", objects[:64]), 200)

    server.modelscope.max_commit_actions = 2
    actions = [_normal_action(f"f{i}.txt", b"x") for i in range(3)]
    _assert_envelope(_commit(server, "limits", actions), 422)
    _assert_envelope(_commit(server, "limits", actions[:2]), 200)
    # A commit naming a blob nobody uploaded is refused, and commits nothing.
    head = server.branch_head(OWNER, "limits")
    never = _assert_envelope(_commit(server, "limits", [_lfs_action("w.bin", b"never uploaded")]), 400)
    assert "has not been uploaded" in never["Message"]
    assert server.branch_head(OWNER, "limits") == head


def test_a_blob_over_the_size_limit_gets_nginx_413_and_wrong_bytes_store_nothing(
    gitlfs_server: GitLfsServer,
) -> None:
    server = gitlfs_server
    server.new_repo(OWNER, "big")
    server.max_object_size = 1000
    data = os.urandom(2000)
    href = _api(server, "big", f"info/lfs/objects/{hashlib.sha256(data).hexdigest()}")
    too_big = requests.put(href, data=data, headers=_cookie(server.token), timeout=10)
    assert too_big.status_code == 413
    assert "<title>413 Request Entity Too Large</title>" in too_big.text

    small = os.urandom(500)
    wrong = requests.put(
        _api(server, "big", f"info/lfs/objects/{hashlib.sha256(small).hexdigest()}"),
        data=os.urandom(500),
        headers=_cookie(server.token),
        timeout=10,
    )
    assert "sha256" in _assert_envelope(wrong, 400)["Message"]
    assert server.objects(OWNER, "big") == {}
    assert server.incoming(OWNER, "big") == []


def test_injected_429_carries_retry_after_in_the_envelope(gitlfs_server: GitLfsServer) -> None:
    server = gitlfs_server
    server.new_repo(OWNER, "busy")
    server.fail_next("ms_commit", 429, message="Too many commits", retry_after=7)
    answer = _commit(server, "busy", [_normal_action("a.txt", b"a")])
    assert _assert_envelope(answer, 429)["Message"] == "Too many commits"
    assert answer.headers["Retry-After"] == "7"
    assert server.branch_head(OWNER, "busy") is None
    _assert_envelope(_commit(server, "busy", [_normal_action("a.txt", b"a")]), 200)
