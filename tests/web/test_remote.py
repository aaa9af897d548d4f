"""relayctl --url against a real daemon serving [web]: the same documents and text as relayctl on the
catalogue, every verb with the token from a file or the environment (never argv), and a reload that
moves the server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner, Result

from relayd.catalogue.store import RepoSpec, Store
from relayd.cli import cli
from relayd_sandbox._http import free_port
from tests.support.webbox import timeless

TOKEN = "remote-token-" + "y" * 20


class Daemon:
    """relayd run over a local_copy route, with [web] on a free loopback port and a token file."""

    def __init__(self, root: Path, make_config: Callable[..., Path]) -> None:
        self.root = root
        self.make_config = make_config
        self.token_file = root / "web-token"
        self.token_file.write_text(TOKEN + "\n")
        self.port = free_port()
        self.write_config()
        self.store = Store(f"sqlite:///{root / 'catalogue.db'}")
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        self.config = self.make_config(
            self.root,
            daemon={"poll_jitter": "0s", "idle_wait": "0.2s"},
            local_copy={"piece_size": "64 KiB", "max_rate": "256 KiB"},
            web={"listen": f"127.0.0.1:{self.port}", "token_file": str(self.token_file)},
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, serving: bool = True) -> None:
        log = (self.root / "daemon.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relayd", "run", "-c", str(self.config)], stdout=log, stderr=log
        )
        if serving:
            self.wait_for(lambda: self.answers(self.url), "the web server")

    def answers(self, url: str) -> bool:
        try:
            return requests.get(f"{url}/api/v1/status", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        log = (self.root / "daemon.log").read_text(errors="replace")[-3000:]
        raise AssertionError(f"timed out waiting for {what}\n{log}")

    def remote(
        self, *args: str, env: dict[str, str | None] | None = None, input: str | None = None
    ) -> Result:
        return CliRunner().invoke(
            cli,
            ["--url", self.url, *args],
            env={"COLUMNS": None, "RELAYCTL_TOKEN": None, "RELAYCTL_TOKEN_FILE": None, **(env or {})},
            input=input,
            prog_name="relayctl",
        )

    def local(self, *args: str) -> Result:
        return CliRunner().invoke(
            cli, ["-c", str(self.config), *args], env={"COLUMNS": None}, prog_name="relayctl"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
        self.store.close()


@pytest.fixture
def daemon(tmp_path: Path, make_config: Callable[..., Path]) -> Iterator[Daemon]:
    box = Daemon(tmp_path, make_config)
    source = tmp_path / "source" / "org" / "model"
    source.mkdir(parents=True)
    (source / "weights.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    (source / "config.json").write_text('{"layers": 2}')
    box.start()
    box.store.add_repo(RepoSpec(name="org/model", every=3600, route=("local_copy",)))
    try:
        yield box
    finally:
        box.stop()


def parsed(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_status_through_the_daemon_is_relayctl_status(daemon: Daemon) -> None:
    daemon.wait_for(
        lambda: (
            (parsed(daemon.local("status", "--json"))["repos"][0]["snapshot"] or {}).get("state") == "done"
        ),
        "the snapshot relayed",
    )
    # The same document, unless the daemon published a fact between the two reads: then read again.
    for _ in range(5):
        remote, local = (
            timeless(parsed(daemon.remote("status", "--json"))),
            timeless(parsed(daemon.local("status", "--json"))),
        )
        if remote == local:
            break
    assert remote == local
    remote = parsed(daemon.remote("status", "org/model", "--json"))
    assert sorted(item["path"] for item in remote["files"]) == ["config.json", "weights.bin"]
    assert parsed(daemon.remote("list", "--json")) == parsed(daemon.local("list", "--json"))
    assert daemon.remote("list").stdout == daemon.local("list").stdout
    text = daemon.remote("status", "org/model").stdout
    assert text.startswith("org/model  model@main")
    assert "FILES 2" in text
    missing = daemon.remote("status", "org/none")
    assert missing.exit_code == 2
    assert "no repo named 'org/none'" in missing.output


def test_every_verb_with_the_token_from_a_file_or_the_environment(daemon: Daemon) -> None:
    refused = daemon.remote("pause", "org/model")
    assert refused.exit_code == 2
    assert "401" in refused.output and "RELAYCTL_TOKEN" in refused.output
    assert daemon.store.repo("org/model").paused is False  # type: ignore[union-attr]

    from_file = {"RELAYCTL_TOKEN_FILE": str(daemon.token_file)}
    assert daemon.remote("pause", "org/model", env=from_file).stdout == "paused org/model\n"
    assert daemon.store.repo("org/model").paused is True  # type: ignore[union-attr]
    assert daemon.remote("--token-file", str(daemon.token_file), "resume", "org/model").exit_code == 0
    assert daemon.store.repo("org/model").paused is False  # type: ignore[union-attr]
    from_env = {"RELAYCTL_TOKEN": TOKEN}
    assert daemon.remote("pause", "org/model", env=from_env).stdout == "paused org/model\n"
    assert daemon.remote("resume", "org/model", env=from_env).stdout == "resumed org/model\n"
    assert daemon.store.repo("org/model").paused is False  # type: ignore[union-attr]

    added = daemon.remote("add", "org/other", "--route", "local_copy", "--every", "2h", env=from_env)
    assert added.exit_code == 0, added.output
    assert added.stdout.splitlines()[0] == "added org/other:"
    assert "  every: 2h00m" in added.stdout
    assert daemon.store.repo("org/other").every == 7200  # type: ignore[union-attr]
    assert daemon.remote("retry", "--all", env=from_env).stdout.startswith("made 0 transfers runnable")
    assert daemon.remote("remove", "org/other", env=from_env, input="n\n").exit_code == 1  # asked, declined
    assert daemon.store.repo("org/other") is not None
    assert daemon.remote("remove", "org/other", "--yes", env=from_env).stdout == "removed org/other\n"
    assert daemon.store.repo("org/other") is None

    wrong = daemon.remote("pause", "org/model", env={"RELAYCTL_TOKEN": "not-the-token-xxxxxxxx"})
    assert wrong.exit_code == 2 and "wrong token" in wrong.output


def test_what_relayctl_url_cannot_do_is_said_plainly(daemon: Daemon) -> None:
    other = daemon.remote("doctor")
    assert other.exit_code == 2
    assert "relayctl --url runs add, list, pause, remove, resume, retry, status" in other.output
    gone = CliRunner().invoke(cli, ["--url", f"http://127.0.0.1:{free_port()}", "status"])
    assert gone.exit_code == 1
    assert "cannot reach relayd" in gone.output


def test_a_reload_moves_the_server_and_the_plot_keeps_what_moved(daemon: Daemon) -> None:
    daemon.wait_for(
        lambda: parsed(daemon.local("status", "--json"))["repos"][0]["snapshot"] is not None, "a poll"
    )
    daemon.wait_for(
        lambda: (
            requests.get(f"{daemon.url}/api/v1/throughput", timeout=5).json()["moved"].get("local_copy", 0)
            > 0
        ),
        "bytes moved",
    )
    old = daemon.url
    daemon.port = free_port()
    daemon.write_config()
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: daemon.answers(daemon.url), "the web server on its new port")
    assert not daemon.answers(old)
    moved = requests.get(f"{daemon.url}/api/v1/throughput", timeout=5).json()["moved"]
    assert moved["local_copy"] > 0
    facts = parsed(daemon.local("status", "--json"))["service"]
    web = next(fact for fact in facts if fact["key"] == "web")
    assert web["value"] == {"state": "serving", "url": f"{daemon.url}/"}
    daemon.stop()
    facts = parsed(daemon.local("status", "--json"))["service"]
    assert next(fact for fact in facts if fact["key"] == "web")["value"] == {"state": "stopped"}


def test_a_port_in_use_leaves_the_relay_running_and_says_why(
    tmp_path: Path, make_config: Callable[..., Path]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        box = Daemon(tmp_path, make_config)
        box.port = taken.getsockname()[1]
        box.write_config()
        try:
            box.start(serving=False)

            def web_fact() -> dict[str, Any] | None:
                facts = parsed(box.local("status", "--json"))["service"]
                return next((fact["value"] for fact in facts if fact["key"] == "web"), None)

            box.wait_for(lambda: web_fact() is not None, "the web fact")
            fact = web_fact()
            assert fact is not None and fact["state"] == "failed"
            assert "Address already in use" in fact["error"]
            assert parsed(box.local("status", "--json"))["daemon"]["state"] == "running"
            assert "the status page is off" in (tmp_path / "daemon.log").read_text()
        finally:
            box.stop()
