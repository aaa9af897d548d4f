"""`relayctl add | list | remove | pause | resume | retry`: the watched repos and their transfers.

Every argument is validated before the catalogue is opened, so a typo never leaves a trace in it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from relayd.cli.app import App, echo_json, json_option, pass_app
from relayd.errors import UsageError
from relayd.names import validate_repo_id

if TYPE_CHECKING:
    from relayd.catalogue.schema import Repo

MIN_EVERY = 10.0
_BAD_REVISION = re.compile(r"[\s\x00-\x1f\x7f~^:?*\[\\]")


def _revision(text: str) -> str:
    """Return a branch, tag or commit name if git would accept it as one. Raise UsageError otherwise."""
    if (
        not text
        or len(text) > 255
        or text.startswith(("-", "/"))
        or ".." in text
        or _BAD_REVISION.search(text)
    ):
        raise UsageError(f"invalid --revision {text!r}: expected a branch, tag or commit such as 'main'")
    return text


def _every(text: str | None, default: float) -> float:
    from relayd.units import parse_duration

    if text is None:
        return default
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"invalid --every {text!r}: {exc}") from exc
    if seconds < MIN_EVERY:
        raise UsageError(f"invalid --every {text!r}: polls must be at least {MIN_EVERY:.0f}s apart")
    return seconds


def _route(text: str | None) -> tuple[str, ...]:
    """Return the route named by ``HOP,HOP,...`` (the default route if None); every hop must be installed."""
    from relayd.config import DEFAULT_ROUTE
    from relayd.hops import hop_names

    hops = DEFAULT_ROUTE if text is None else tuple(part.strip() for part in text.split(","))
    if not hops or any(not hop for hop in hops):
        raise UsageError(f"invalid --route {text!r}: expected hop names separated by commas")
    if len(set(hops)) != len(hops):
        raise UsageError(f"invalid --route {text!r}: a hop appears twice")
    known = hop_names()
    unknown = [hop for hop in hops if hop not in known]
    if unknown:
        which = "the default route" if text is None else "--route"
        raise UsageError(
            f"{which} names hops that are not installed: {', '.join(unknown)} "
            f"(installed: {', '.join(known) or 'none'})"
        )
    return hops


def _relative_dir(option: str, text: str) -> str:
    if not text.strip() or "\x00" in text or ".." in text.split("/"):
        raise UsageError(f"invalid {option} {text!r}: expected a folder path without '..'")
    return text


def _webhook(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"invalid --webhook {_safe_url(text)!r}: expected an http(s) URL")
    return text


def _safe_url(url: str) -> str:
    """Return *url* cut to its scheme and host: webhook URLs often carry their secret in the path."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}/…" if parts.scheme and host else "<url>"


def _known_hop(hop: str | None) -> str | None:
    from relayd.hops import hop_names

    if hop is not None and hop not in hop_names():
        raise UsageError(f"unknown hop {hop!r} (installed: {', '.join(hop_names()) or 'none'})")
    return hop


def _missing(name: str) -> UsageError:
    return UsageError(f"no repo named {name!r} (see `relayctl list`)")


def repo_as_dict(repo: Repo) -> dict[str, Any]:
    """Return the repo's settings as plain data (webhook URLs cut to their host)."""
    options = dict(repo.options or {})
    if "webhooks" in options:
        options["webhooks"] = [_safe_url(url) for url in options["webhooks"]]
    return {
        "name": repo.name,
        "type": repo.repo_type,
        "revision": repo.revision,
        "include": list(repo.include or []),
        "exclude": list(repo.exclude or []),
        "every_seconds": repo.every,
        "route": list(repo.route or []),
        "destinations": dict(repo.destinations or {}),
        "options": options,
        "paused": repo.paused,
        "head_commit": repo.head_commit,
    }


def describe_repo(repo: Repo) -> list[str]:
    """Return the repo's settings as indented text lines."""
    from relayd.units import format_duration

    data = repo_as_dict(repo)

    def pairs(values: dict[str, Any]) -> str:
        def show(value: Any) -> str:
            if isinstance(value, list):
                return " ".join(str(item) for item in value)
            return str(value).lower() if isinstance(value, bool) else str(value)

        return ", ".join(f"{key}={show(value)}" for key, value in values.items()) or "defaults"

    return [
        f"  type: {data['type']}",
        f"  revision: {data['revision']}",
        f"  include: {', '.join(data['include']) or 'all files'}",
        f"  exclude: {', '.join(data['exclude']) or 'nothing'}",
        f"  every: {format_duration(data['every_seconds'])}",
        f"  route: {' → '.join(data['route'])}",
        f"  destinations: {pairs(data['destinations'])}",
        f"  options: {pairs(data['options'])}",
        f"  paused: {'yes' if data['paused'] else 'no'}",
    ]


@click.command("add")
@click.argument("repo")
@click.option(
    "--type", "repo_type", type=click.Choice(["model", "dataset"]), default="model", show_default=True
)
@click.option("--revision", default="main", show_default=True, help="Branch, tag or commit to follow.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching (repeatable).")
@click.option("--every", metavar="DURATION", help="Poll interval such as 30m [default: hub.default_every].")
@click.option("--route", metavar="HOP,HOP,...", help="Hops in order [default: the full default route].")
@click.option("--drive-folder", metavar="PATH", help="Folder on the drive [default: chosen by the hop].")
@click.option("--vm-dir", metavar="PATH", help="Directory on the VM [default: chosen by the hop].")
@click.option("--modelscope-repo", metavar="OWNER/NAME", help="ModelScope repo [default: the same id].")
@click.option(
    "--vm-from-staging/--no-vm-from-staging",
    default=None,
    help="Let the VM read the staging disk instead of the drive [default: vm.from_staging].",
)
@click.option("--webhook", "webhooks", multiple=True, metavar="URL", help="Notify this URL (repeatable).")
@click.option("--replace", is_flag=True, help="Overwrite the settings of a repo that exists.")
@pass_app
def add(
    app: App,
    *,
    repo: str,
    repo_type: str,
    revision: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    every: str | None,
    route: str | None,
    drive_folder: str | None,
    vm_dir: str | None,
    modelscope_repo: str | None,
    vm_from_staging: bool | None,
    webhooks: tuple[str, ...],
    replace: bool,
) -> None:
    """Watch REPO (OWNER/NAME on Hugging Face) and relay its files along a route."""
    from relayd.catalogue.store import RepoSpec

    name = validate_repo_id(repo)
    for glob in (*include, *exclude):
        if not glob.strip():
            raise UsageError("--include and --exclude need a non-empty glob")
    destinations: dict[str, Any] = {}
    if drive_folder is not None:
        destinations["drive_folder"] = _relative_dir("--drive-folder", drive_folder)
    if vm_dir is not None:
        destinations["vm_dir"] = _relative_dir("--vm-dir", vm_dir)
    if modelscope_repo is not None:
        if validate_repo_id(modelscope_repo).count("/") != 1:
            raise UsageError(f"invalid --modelscope-repo {modelscope_repo!r}: expected OWNER/NAME")
        destinations["modelscope_repo"] = modelscope_repo
    options: dict[str, Any] = {}
    if vm_from_staging is not None:
        options["vm_from_staging"] = vm_from_staging
    if webhooks:
        options["webhooks"] = [_webhook(url) for url in webhooks]
    spec = RepoSpec(
        name=name,
        every=_every(every, app.config.hub.default_every),
        route=_route(route),
        repo_type=repo_type,
        revision=_revision(revision),
        include=include,
        exclude=exclude,
        destinations=destinations,
        options=options,
    )
    stored, outcome = app.store().add_repo(spec, replace=replace)
    if outcome == "exists":
        click.echo(f"{name} is already watched; nothing changed (use --replace to change it):")
    elif outcome == "updated":
        click.echo(f"replaced the settings of {name}:")
    else:
        click.echo(f"added {name}:")
    for line in describe_repo(stored):
        click.echo(line)


@click.command("list")
@json_option
@pass_app
def list_repos(app: App, as_json: bool) -> None:
    """List the watched repos."""
    from relayd.units import format_duration

    repos = app.store().repos()
    if as_json:
        echo_json({"format": 1, "repos": [repo_as_dict(repo) for repo in repos]})
        return
    if not repos:
        click.echo("no repos are watched (add one with `relayctl add OWNER/NAME`)")
        return
    rows = [("NAME", "TYPE", "REVISION", "ROUTE", "EVERY", "PAUSED", "HEAD")]
    rows += [
        (
            repo.name,
            repo.repo_type,
            repo.revision,
            ",".join(repo.route or []),
            format_duration(repo.every),
            "yes" if repo.paused else "no",
            (repo.head_commit or "-")[:12],
        )
        for repo in repos
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@click.command("remove")
@click.argument("repo")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def remove(app: App, repo: str, yes: bool) -> None:
    """Stop watching REPO and forget everything recorded for it (copies already made stay)."""
    store = app.store()
    if store.repo(repo) is None:
        raise _missing(repo)
    if not yes:
        click.confirm(f"forget {repo} and all its transfer records?", abort=True, err=True)
    if not store.remove_repo(repo):
        raise _missing(repo)
    click.echo(f"removed {repo}")


@click.command("pause")
@click.argument("repo")
@pass_app
def pause(app: App, repo: str) -> None:
    """Stop polling REPO and starting its transfers (running ones finish)."""
    if not app.store().set_paused(repo, True):
        raise _missing(repo)
    click.echo(f"paused {repo}")


@click.command("resume")
@click.argument("repo")
@pass_app
def resume(app: App, repo: str) -> None:
    """Poll REPO and run its transfers again."""
    if not app.store().set_paused(repo, False):
        raise _missing(repo)
    click.echo(f"resumed {repo}")


@click.command("retry")
@click.argument("repo", required=False)
@click.option("--hop", metavar="HOP", help="Only transfers of this hop.")
@click.option("--all", "all_repos", is_flag=True, help="Every repo.")
@pass_app
def retry(app: App, repo: str | None, hop: str | None, all_repos: bool) -> None:
    """Make blocked and waiting transfers of REPO (or --all) runnable now, and their polls due."""
    if (repo is None) == (not all_repos):
        raise UsageError("name a REPO or give --all (not both)")
    count = app.store().retry(repo, _known_hop(hop))
    noun = "transfer" if count == 1 else "transfers"
    where = f" of {repo}" if repo else ""
    click.echo(f"made {count} {noun}{where} runnable")
    if hop is None:
        click.echo("polls that were waiting or blocked are due now")
