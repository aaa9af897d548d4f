"""A catalogue and the web server of a daemon over it, served in process on 127.0.0.1.

A helper module, not a test file: the tests of this directory import it by its bare name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from click.testing import CliRunner

from relayd.catalogue import migrate
from relayd.catalogue.schema import BLOCKED
from relayd.catalogue.store import FileSpec, RepoSpec, Store
from relayd.cli import cli
from relayd.config import load_config
from relayd.web.server import WebServer, serve
from relayd.web.throughput import Throughput

#: Fields that say when a document was made; they differ between two documents made a moment apart.
MOMENTS = {"generated_at", "age_seconds", "heartbeat_age_seconds", "failing_seconds", "detail"}
TOKEN = "web-token-" + "x" * 24
WORKER = "test-worker"


class WebBox:
    """A config, its catalogue, and the web server of a daemon over it (started by ``serve``)."""

    def __init__(self, root: Path, make_config: Callable[..., Path]) -> None:
        self.root = root
        self.make_config = make_config
        self.config_path = make_config(root)
        self.store = Store(f"sqlite:///{root / 'catalogue.db'}")
        migrate.ensure_schema(self.store.engine, auto_upgrade=False)
        self.server: WebServer | None = None
        self.session = requests.Session()

    def serve(self, **web: Any) -> WebServer:
        """Start the web server with ``[web]`` set to *web* (listen defaults to a free loopback port)."""
        self.stop()
        self.config_path = self.make_config(self.root, web={"listen": "127.0.0.1:0", **web})
        config = load_config(self.config_path)
        self.server = serve(config, self.store, Throughput())
        return self.server

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=30, **kwargs)

    def post(
        self, verb: str, body: dict[str, Any], token: str | None = TOKEN, **headers: str
    ) -> requests.Response:
        sent = {"Content-Type": "application/json", **headers}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return self.session.post(f"{self.url}api/v1/{verb}", json=body, headers=sent, timeout=30)

    def relayctl(self, *args: str, env: dict[str, str | None] | None = None) -> Any:
        return CliRunner().invoke(
            cli,
            ["-c", str(self.config_path), *args],
            env={"COLUMNS": None, **(env or {})},
            prog_name="relayctl",
        )

    # -- catalogue builders --------------------------------------------------------------------------

    def add_repo(self, name: str, files: dict[str, int], route: tuple[str, ...] = ("local_copy",)) -> int:
        self.store.add_repo(RepoSpec(name=name, every=600, route=route))
        repo = self.store.repo(name)
        assert repo is not None
        specs = [
            FileSpec(path=path, size=size, lfs=False, git_blob_id=f"{name}:{path}:{size}")
            for path, size in files.items()
        ]
        self.store.record_snapshot(repo.id, "a" * 40, specs)
        return repo.id

    def claim(self, hop: str) -> int:
        transfer = self.store.claim(hop, WORKER, 600)
        assert transfer is not None, f"nothing runnable on {hop}"
        return transfer.id

    def finish(self, hop: str, handles: dict[str, Any] | None = None) -> None:
        self.store.complete(self.claim(hop), WORKER, handles or {"where": hop})

    def block(self, hop: str, error: str, hint: str) -> None:
        self.store.defer(self.claim(hop), WORKER, state=BLOCKED, error=error, error_class="auth", hint=hint)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def close(self) -> None:
        self.stop()
        self.session.close()
        self.store.close()


def timeless(data: Any) -> Any:
    """Return a status document without the fields that say when it was made."""
    if isinstance(data, dict):
        return {key: timeless(value) for key, value in data.items() if key not in MOMENTS}
    if isinstance(data, list):
        return [timeless(item) for item in data]
    return data
