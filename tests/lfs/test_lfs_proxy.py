"""The push from the VM through a real forwarding proxy (tinyproxy), run by the local executor as the
lfs_push hop runs it: modelscope.proxy (with credentials the proxy demands) carries the agent's LFS
requests and git's, handed to git as http.proxy through its environment (never argv); the VM's own
proxy variables do when nothing is configured; NO_PROXY sends the push straight."""

from __future__ import annotations

import hashlib
import io
import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from relayd.vm.agent.core import Context
from relayd.vm.agent.git_runner import GitRunner
from relayd.vm.executor import Executor, make_executor
from relayd_sandbox._http import LoggedRequest
from relayd_sandbox.gitlfs import GitLfsServer
from relayd_sandbox.vm_testkit import vm_config
from tests.support.lfs_support import OWNER
from tests.support.proxybox import LOCKED_PASSWORD, Tinyproxy, via_proxy

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_proxy_variables")]


class Push:
    """Two files on the VM, pushed to the sandbox server's relay/m by lfs_upload then git_publish."""

    def __init__(self, tmp_path: Path, server: GitLfsServer) -> None:
        self.server = server
        self.work = tmp_path / "work"
        server.new_repo(OWNER, "m")
        self.files = {"w.safetensors": os.urandom(200_000), "config.json": b'{"hidden": 1}\n'}
        self.paths = {}
        for name, data in self.files.items():
            path = tmp_path / "vm" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            self.paths[name] = path

    def run(self, proxy: str) -> str:
        """Push through the local executor (the agent inherits this process's environment, as on a VM
        it has its login's); return the commit."""
        executor: Executor = make_executor(vm_config(root=str(self.work.parent / "vm")))
        remote = self.server.remote_url(OWNER, "m")
        weights = self.files["w.safetensors"]
        oid = hashlib.sha256(weights).hexdigest()
        credentials = {"token": self.server.token, "proxy": proxy}
        try:
            executor.call(
                "lfs_upload",
                {
                    "remote": remote,
                    "ref": "refs/heads/master",
                    "objects": [{"oid": oid, "size": len(weights), "path": str(self.paths["w.safetensors"])}],
                },
                secrets=credentials,
            )
            entries: list[dict[str, Any]] = [
                {"path": "w.safetensors", "size": len(weights), "lfs": True, "oid": oid, "source": ""},
                {
                    "path": "config.json",
                    "size": len(self.files["config.json"]),
                    "lfs": False,
                    "source": str(self.paths["config.json"]),
                },
            ]
            result = executor.call(
                "git_publish",
                {
                    "remote": remote,
                    "branch": "master",
                    "work_dir": str(self.work),
                    "files": entries,
                    "message": "Relay acme/m through a proxy\n",
                },
                secrets=credentials,
            )
        finally:
            executor.close()
        assert self.server.read_object(OWNER, "m", oid) == weights
        assert self.server.branch_head(OWNER, "m") == result["commit"]
        return str(result["commit"])


def requests_by_client(server: GitLfsServer) -> tuple[list[LoggedRequest], list[LoggedRequest]]:
    """Split the server's requests into relayd's and git's, and those of git-lfs's pre-push hook. Go's
    proxy rules (golang.org/x/net/http/httpproxy, useProxy) never proxy a loopback address, so against
    the 127.0.0.1 sandbox the hook's batch requests go straight whatever http.proxy says."""
    seen = server.request_log.snapshot()
    hook = [e for e in seen if (e.header("User-Agent") or "").startswith("git-lfs/")]
    return [e for e in seen if e not in hook], hook


def test_modelscope_proxy_carries_the_lfs_requests_and_git_push(
    tmp_path: Path, server: GitLfsServer, locked_proxy: Tinyproxy
) -> None:
    push = Push(tmp_path, server)
    push.run(locked_proxy.url)

    ours, hook = requests_by_client(server)
    assert ours and all(via_proxy(entry.headers) for entry in ours)
    assert not any(via_proxy(entry.headers) for entry in hook)
    base = server.base_url
    assert locked_proxy.carried(f"{base}/{OWNER}/m.git/info/lfs/objects/batch", "POST")  # the agent's
    assert locked_proxy.carried(f"{base}/{OWNER}/m.git/info/refs?service=git-receive-pack", "GET")  # git
    assert locked_proxy.carried(f"{base}/{OWNER}/m.git/git-receive-pack", "POST")


def test_the_proxy_reaches_git_through_its_environment_never_argv(tmp_path: Path) -> None:
    proxy = f"http://relayd:{LOCKED_PASSWORD}@proxy.example:3128"
    runner = GitRunner(
        str(tmp_path / "scratch.git"),
        str(tmp_path / "home"),
        "token-" + secrets.token_hex(8),
        Context(io.StringIO()),
        remote="https://modelscope.example/owner/m.git",
        activity_timeout=60,
        proxy=proxy,
    )
    assert LOCKED_PASSWORD not in " ".join(runner.argv(["push", "origin", "HEAD"]))
    assert (runner.env["GIT_CONFIG_KEY_0"], runner.env["GIT_CONFIG_VALUE_0"]) == ("http.proxy", proxy)
    assert runner.env["GIT_CONFIG_COUNT"] == "1"


def test_the_vms_proxy_variables_carry_the_push_when_none_is_configured(
    tmp_path: Path, server: GitLfsServer, tinyproxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", tinyproxy.url)  # git (curl) reads only the lowercase one for http
    Push(tmp_path, server).run("")

    ours, _ = requests_by_client(server)
    assert ours and all(via_proxy(entry.headers) for entry in ours)
    assert tinyproxy.carried("/info/lfs/objects/batch") and tinyproxy.carried("/git-receive-pack")


def test_no_proxy_sends_the_push_straight_even_past_modelscope_proxy(
    tmp_path: Path, server: GitLfsServer, tinyproxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    Push(tmp_path, server).run(tinyproxy.url)

    assert server.request_log.snapshot()
    assert not any(via_proxy(entry.headers) for entry in server.request_log.snapshot())
    assert tinyproxy.requests() == []
