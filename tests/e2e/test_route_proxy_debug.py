"""The whole default route under the real daemon at debug level, every service behind one real forwarding
proxy (tinyproxy, with credentials) given by hub.proxy, drive.proxy, vm.proxy and modelscope.proxy, and
the webhooks behind the environment's http_proxy: every request of every hop reaches its fake through
the proxy, and the whole debug log holds no secret: no token, no signature of a signed URL, no webhook
URL, no proxy password."""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from relayd_sandbox.route import REPO, RouteSandbox
from tests.support.proxybox import LOCKED_PASSWORD, Tinyproxy, via_proxy
from tests.support.routewatch import Catalogue, wait_for

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_proxy_variables")]

MiB = 1024 * 1024


class Hooks(ThreadingHTTPServer):
    """A webhook receiver that records what reached it and whether through the proxy."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, bool, dict[str, Any]]] = []
        super().__init__(("127.0.0.1", 0), _HookHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self) -> str:
        """A fresh webhook URL with a token in its path and query, as chat services give out."""
        return (
            f"http://127.0.0.1:{self.server_address[1]}/hook/{secrets.token_hex(12)}?k={secrets.token_hex(6)}"
        )


class _HookHandler(BaseHTTPRequestHandler):
    server: Hooks

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append((self.path, via_proxy(dict(self.headers.items())), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def issued_tokens(box: RouteSandbox) -> list[str]:
    """Record every access and refresh token the fake drive issues from now on."""
    assert box.drive is not None
    issued: list[str] = []
    store: Any = box.drive.store
    for name in ("issue_refresh_token", "issue_access_token"):
        original: Callable[..., str] = getattr(store, name)

        def issue(user: Any, *args: Any, _original: Callable[..., str] = original, **kwargs: Any) -> str:
            token = _original(user, *args, **kwargs)
            issued.append(token)
            return token

        setattr(store, name, issue)
    return issued


def query_values(paths: list[str], name: str) -> set[str]:
    return {value for path in paths for value in parse_qs(urlsplit(path).query).get(name, [])}


def test_the_route_through_a_proxy_at_debug_level_logs_no_secret(
    tmp_path: Path, locked_proxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = RouteSandbox(tmp_path / "route", shards=2, shard_size=MiB, ssh=False, piece_size="256 KiB")
    hooks = Hooks()
    box.start()
    try:
        assert box.hub is not None and box.drive is not None and box.git is not None
        tokens = issued_tokens(box)
        global_hook, repo_hook = hooks.url(), hooks.url()
        proxy = f'proxy = "{locked_proxy.url}"'
        config = box.config_path.read_text()
        for section in ("[hub]", "[drive]", "[vm]", "[modelscope]"):
            config = config.replace(f"{section}\n", f"{section}\n{proxy}\n", 1)
        box.config_path.write_text(config + f'\n[notify]\nwebhooks = ["{global_hook}"]\n')
        monkeypatch.setenv("http_proxy", locked_proxy.url)  # the daemon's environment: the webhooks
        daemon = box.start_daemon("--log-level", "debug")
        try:
            added = box.relayctl("-vv", "add", REPO, "--every", "1h", "--webhook", repo_hook)
            assert added.returncode == 0, added.stderr
            wait_for(lambda: Catalogue(box).snapshot_done(box.head), 200, "the snapshot", box.log_path)
            wait_for(lambda: len(hooks.bodies) >= 2, 60, "both webhooks", box.log_path)
        finally:
            box.stop_daemon(daemon)
        # Every hop's requests went through the proxy (git-lfs's pre-push hook aside: Go never
        # proxies a loopback address), and so did both webhooks.
        seen = {
            "hub": box.hub.hub_log.snapshot(),
            "cdn": box.hub.cdn_log.snapshot(),
            "drive": box.drive.requests.snapshot(),
            "git": [
                e
                for e in box.git.request_log.snapshot()
                if not (e.header("User-Agent") or "").startswith("git-lfs/")
            ],
        }
        for name, entries in seen.items():
            assert entries and all(via_proxy(e.headers) for e in entries), name
        rows, _ = box.verify()  # (its clone talks to the git server directly)
        assert all(row.ok for row in rows), rows
        assert {path.split("?")[0] for path, _, _ in hooks.bodies} == {
            urlsplit(global_hook).path,
            urlsplit(repo_hook).path,
        }
        assert all(proxied for _, proxied, _ in hooks.bodies)

        signatures = query_values([e.path for e in seen["cdn"]], "Signature") | query_values(
            [e.path for e in seen["drive"]], "x-oss-signature"
        )
        assert len(signatures) >= 4
        secret_values = {
            "the Hub token": [box.hub_token],
            "the ModelScope token": [box.ms_token],
            "a drive token": [*tokens, (box.root / "drive-refresh-token").read_text().strip()],
            "a URL signature": sorted(signatures),
            "a webhook URL": [urlsplit(hook).path.rsplit("/", 1)[1] for hook in (global_hook, repo_hook)],
            "the proxy password": [LOCKED_PASSWORD],
        }
        log = box.log_path.read_text(errors="replace") + added.stderr
        assert re.search(r" DEBUG +\S+: ", log), "the daemon logged at debug level"
        for what, values in secret_values.items():
            leaked = [value for value in values if value and value in log]
            assert not leaked, f"{what} reached the debug log"
    finally:
        hooks.shutdown()
        hooks.server_close()
        box.stop()
