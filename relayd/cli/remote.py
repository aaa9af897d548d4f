"""`relayctl --url URL …`: status, list, add, pause, resume, retry and remove, run by a daemon through its
web API (docs/web.md) instead of on the catalogue.

Each command takes the same arguments as its local twin (their click parameters are reused) and prints
what the local one prints: the daemon answers with the same documents and the same lines. The token
comes from ``--token-file`` ($RELAYCTL_TOKEN_FILE) or $RELAYCTL_TOKEN, never from the command line,
where any user of the machine could read it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import click
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from relayd.cli import repos as local_repos
from relayd.cli import status as local_status
from relayd.cli.app import App, echo_json, pass_app
from relayd.config import is_loopback
from relayd.errors import RelayError, UsageError

log = logging.getLogger(__name__)

TOKEN_ENV = "RELAYCTL_TOKEN"  # noqa: S105 - the variable's name, not a token
TIMEOUT = (10.0, 120.0)  # connect, read: a dry run lists the repo at the Hub


class Remote:
    """The web API of the daemon at *url*."""

    def __init__(self, url: str, token: str | None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(
                f"--url {url!r}: expected http(s)://HOST:PORT, the daemon's web.listen or a proxy"
            )
        if token and parts.scheme == "http" and not is_loopback(parts.hostname):
            log.warning(
                "the token goes to %s in clear text: put a TLS proxy in front of relayd (https://…) or "
                "reach it through an SSH tunnel (README: the status page)",
                parts.hostname,
            )
        self.base = url.rstrip("/") + "/api/v1/"
        self.session = requests.Session()
        # A read is idempotent: one dropped on the way (a daemon reloading its web server) is asked
        # again; a verb is sent once.
        retry = Retry(total=2, backoff_factor=0.2, allowed_methods=frozenset({"GET"}), status_forcelist=())
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        self.session.headers["Accept"] = "application/json"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str, **params: str) -> dict[str, Any]:
        return self._send("GET", path, params=params)

    def post(self, verb: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._send("POST", verb, json=body)

    def _send(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.session.request(method, self.base + path, timeout=TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            raise RelayError(
                f"cannot reach relayd at {self.base}: {type(exc).__name__} (is the daemon running, with "
                "web.listen set to that address?)"
            ) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise RelayError(f"{self.base}{path} answered {response.status_code} without JSON: is it relayd?")
        if response.status_code < 400:
            return data
        message = f"relayd answered {response.status_code}: {data.get('error') or response.reason}"
        if response.status_code == 401:
            message += f" (set ${TOKEN_ENV} or --token-file to the daemon's web.token)"
        if response.status_code >= 500:
            raise RelayError(message)
        raise UsageError(message)


def _token(app: App) -> str | None:
    if app.token_file is not None:
        try:
            return app.token_file.read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise UsageError(f"--token-file {app.token_file}: {exc.strerror}") from exc
    return os.environ.get(TOKEN_ENV) or None


def _remote(app: App) -> Remote:
    assert app.url is not None  # noqa: S101 - these commands run only with --url
    return Remote(app.url, _token(app))


def _echo(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


def _twin(local: click.Command, callback: Callable[..., None]) -> click.Command:
    """Return a command with *local*'s name, arguments and help that runs *callback* instead."""
    return click.Command(
        local.name,
        params=list(local.params),
        callback=pass_app(callback),
        help=local.help,
        short_help=local.short_help,
        epilog=local.epilog,
    )


def _status(app: App, repo: str | None, as_json: bool, watch: bool, interval: float) -> None:
    from relayd.cli.term import output_width, use_colour

    if watch and as_json:
        raise UsageError("--watch and --json cannot be combined")
    remote = _remote(app)
    path = "status" if repo is None else f"status/{quote(repo, safe='')}"
    if as_json:
        echo_json(remote.get(path))
        return

    def lines(width: int | None, colour: bool) -> list[str]:
        params = {"view": "text", "colour": "1" if colour else "0"}
        if width:
            params["width"] = str(width)
        return [str(line) for line in remote.get(path, **params)["lines"]]

    if watch:
        local_status.redraw(lines, interval)
        return
    colour = use_colour()
    click.echo("\n".join(lines(output_width(), colour)), color=colour)


def _list(app: App, as_json: bool) -> None:
    document = _remote(app).get("repos")
    if as_json:
        echo_json(document)
        return
    _echo(local_repos.list_lines(document["repos"]))


def _add(app: App, **options: Any) -> None:
    context = click.get_current_context()
    body: dict[str, Any] = {
        "repo": options["repo"],
        "include": list(options["include"]),
        "exclude": list(options["exclude"]),
        "webhooks": list(options["webhooks"]),
        "replace": options["replace"],
        "dry_run": options["dry_run"],
    }
    for option, key in (("repo_type", "type"), ("revision", "revision")):
        if context.get_parameter_source(option) not in (click.core.ParameterSource.DEFAULT, None):
            body[key] = options[option]
    for key in (
        "every",
        "route",
        "drive_folder",
        "vm_dir",
        "modelscope_repo",
        "vm_from_staging",
        "keep_copies",
    ):
        if options[key] is not None:
            body[key] = options[key]
    _echo(_remote(app).post("add", body)["lines"])


def _remove(app: App, repo: str, yes: bool) -> None:
    if not yes:
        click.confirm(f"forget {repo} and all its transfer records?", abort=True, err=True)
    _echo(_remote(app).post("remove", {"repo": repo})["lines"])


def _pause(app: App, repo: str) -> None:
    _echo(_remote(app).post("pause", {"repo": repo})["lines"])


def _resume(app: App, repo: str) -> None:
    _echo(_remote(app).post("resume", {"repo": repo})["lines"])


def _retry(app: App, repo: str | None, hop: str | None, all_repos: bool) -> None:
    _echo(_remote(app).post("retry", {"repo": repo, "hop": hop, "all": all_repos})["lines"])


status = _twin(local_status.status, _status)
list_repos = _twin(local_repos.list_repos, _list)
add = _twin(local_repos.add, _add)
remove = _twin(local_repos.remove, _remove)
pause = _twin(local_repos.pause, _pause)
resume = _twin(local_repos.resume, _resume)
retry = _twin(local_repos.retry, _retry)
