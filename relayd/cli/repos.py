"""`relayctl add | list | remove | pause | resume | retry`: the watched repos and their transfers.

Every argument is validated before the catalogue is opened, so a typo never leaves a trace in it: a
route whose hops lack their input is refused (relayd.hops.routes), and a pasted Hub URL is read as the
repo it names.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote, urlsplit

import click

from relayd.cli.app import App, complete_hop, complete_repo, echo_json, json_option, pass_app
from relayd.errors import HopError, RelayError, UsageError
from relayd.names import validate_repo_id

if TYPE_CHECKING:
    from collections.abc import Sequence

    from relayd.catalogue.schema import Repo
    from relayd.catalogue.store import RepoSpec, Store
    from relayd.config import Config

MIN_EVERY = 10.0
_BAD_REVISION = re.compile(r"[\s\x00-\x1f\x7f~^:?*\[\\]")
#: The Hugging Face Hub's own hosts; the configured hub.endpoint's host is accepted as well.
HUB_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")
#: Words that follow a repo id in a Hub URL (a page of the repo, not part of its name).
_REPO_PAGES = frozenset({"tree", "blob", "resolve", "commit", "commits", "discussions", "settings", "edit"})


class RepoRef(NamedTuple):
    """A repo as named on the command line: its id, and the type and revision a URL gave (or None)."""

    name: str
    repo_type: str | None = None
    revision: str | None = None


def parse_repo(text: str, endpoint: str) -> RepoRef:
    """Given ``OWNER/NAME`` (or ``NAME``) or a Hub URL of a repo (``https://huggingface.co/OWNER/NAME``,
    ``…/datasets/OWNER/NAME``, ``…/tree/REV``, ``hf.co``, or the host of *endpoint*), return the repo it
    names. Raise UsageError saying what is wrong otherwise."""
    configured = urlsplit(endpoint)
    hosts = {*HUB_HOSTS, (configured.netloc or "").lower()}
    bare = text.split("/", 1)[0].lower()
    if "://" not in text and not (bare in hosts and "/" in text):
        return RepoRef(validate_repo_id(text))
    parts = urlsplit(text if "://" in text else f"https://{text}")
    if parts.scheme not in ("http", "https") or parts.netloc.lower() not in hosts:
        raise UsageError(
            f"{text!r} is not a URL of the Hub ({', '.join(sorted(hosts - {''}))}): give OWNER/NAME, or the "
            "repo's URL on the Hub that hub.endpoint names"
        )
    path = [unquote(part) for part in parts.path.split("/") if part]
    repo_type = None
    if path[:1] == ["spaces"]:
        raise UsageError(f"{text!r} is a Space: relayd relays models and datasets")
    if path[:1] == ["datasets"]:
        repo_type, path = "dataset", path[1:]
    if len(path) >= 2 and not (path[1] in _REPO_PAGES and len(path) > 2):
        name, rest = "/".join(path[:2]), path[2:]
    elif path:
        name, rest = path[0], path[1:]  # a repo without an owner (gpt2)
    else:
        raise UsageError(f"{text!r} names no repo: expected a URL such as https://huggingface.co/OWNER/NAME")
    validate_repo_id(name)
    revision = None
    if rest[:1] == ["tree"] and len(rest) >= 2:
        revision = rest[1]
        if len(rest) > 2:
            folder = "/".join(rest[2:])
            raise UsageError(
                f"{text!r} shows the folder {folder!r} of {name}: give the repo (OWNER/NAME or its URL) and "
                f"choose files with --include '{folder}/*'"
            )
    elif rest:
        raise UsageError(
            f"{text!r} is a page of {name}, not the repo: give OWNER/NAME or the repo's URL "
            "(choose files with --include)"
        )
    return RepoRef(name, repo_type, revision)


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
    """Return the route named by ``HOP,HOP,...`` (the default route if None). Every hop must be
    installed, and have its input: read from the source (the first) or produced by a hop before it."""
    from relayd.hops import DEFAULT_ROUTE, hop_names

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
    _check_inputs(hops, "the default route" if text is None else f"--route {','.join(hops)}")
    return hops


def _check_inputs(hops: tuple[str, ...], which: str) -> None:
    """Raise UsageError naming the hop of *hops* that has nothing to read, and a route that works."""
    from relayd.hops import DEFAULT_ROUTE, hop_names, load_hop_class, loadable
    from relayd.hops.routes import find_gap, suggest

    if find_gap(hops, {hop: load_hop_class(hop) for hop in hops}) is None:
        return
    installed = loadable(hop_names())  # a broken plugin cannot be part of a route that works
    gap = find_gap(hops, installed)  # again, to name every hop that could fill the gap
    assert gap is not None  # noqa: S101 - the same route, the same hops
    better = suggest(hops, installed)
    advice = f"; a route that works: --route {','.join(better)}" if better else ""
    if (
        better
        and better != DEFAULT_ROUTE
        and set(hops) <= set(DEFAULT_ROUTE)
        and set(DEFAULT_ROUTE) <= installed.keys()
        and find_gap(DEFAULT_ROUTE, installed) is None
    ):
        advice += f" (or the default route {','.join(DEFAULT_ROUTE)}: leave --route out)"
    raise UsageError(f"{which} cannot work: {gap.reason}{advice}")


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


class UnknownRepo(UsageError):
    """No repo of that name is watched (the web API answers 404)."""


def unknown_repo(name: str) -> UnknownRepo:
    """Return the error for a repo *name* that is not watched."""
    return UnknownRepo(f"no repo named {name!r} (see `relayctl list`)")


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


def describe_repo(data: dict[str, Any]) -> list[str]:
    """Return a repo's settings (``repo_as_dict``) as indented text lines."""
    from relayd.units import format_duration

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
@click.option(
    "--keep-copies/--no-keep-copies",
    default=None,
    help="Move every file through every hop, even what the destination already holds (to keep the "
    "drive and VM copies) [default: daemon.keep_copies].",
)
@click.option("--webhook", "webhooks", multiple=True, metavar="URL", help="Notify this URL (repeatable).")
@click.option("--replace", is_flag=True, help="Overwrite the settings of a repo that exists.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="List the files the globs select now, with sizes and the total; write nothing.",
)
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
    keep_copies: bool | None,
    webhooks: tuple[str, ...],
    replace: bool,
    dry_run: bool,
) -> None:
    """Watch REPO and relay its files along a route.

    REPO is OWNER/NAME on the Hub, or its URL as a browser shows it (https://huggingface.co/OWNER/NAME,
    …/datasets/OWNER/NAME for a dataset, …/tree/REVISION for a branch or tag). A route whose hops cannot
    get their input (each hop reads what the hop before it produced) is refused.
    """
    context = click.get_current_context()

    def given(parameter: str, value: str) -> str | None:
        source = context.get_parameter_source(parameter)
        return None if source in (click.core.ParameterSource.DEFAULT, None) else value

    spec = repo_spec(
        app.config,
        repo,
        repo_type=given("repo_type", repo_type),
        revision=given("revision", revision),
        include=include,
        exclude=exclude,
        every=every,
        route=route,
        drive_folder=drive_folder,
        vm_dir=vm_dir,
        modelscope_repo=modelscope_repo,
        vm_from_staging=vm_from_staging,
        keep_copies=keep_copies,
        webhooks=webhooks,
    )
    lines = dry_run_lines(app.config, spec) if dry_run else add_repo(app.store(), spec, replace=replace)[1]
    for line in lines:
        click.echo(line)


def repo_spec(
    config: Config,
    repo: str,
    *,
    repo_type: str | None = None,
    revision: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    every: str | None = None,
    route: str | None = None,
    drive_folder: str | None = None,
    vm_dir: str | None = None,
    modelscope_repo: str | None = None,
    vm_from_staging: bool | None = None,
    keep_copies: bool | None = None,
    webhooks: Sequence[str] = (),
) -> RepoSpec:
    """Given what `relayctl add` was told (None: not given, so the URL's or the default), return the repo
    to watch. Raise UsageError saying what is wrong; nothing is written."""
    from relayd.catalogue.store import RepoSpec

    ref = parse_repo(repo, config.hub.endpoint)
    if repo_type not in (None, "model", "dataset"):
        raise UsageError(f"invalid --type {repo_type!r}: expected 'model' or 'dataset'")
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
    if keep_copies is not None:
        options["keep_copies"] = keep_copies
    if webhooks:
        options["webhooks"] = [_webhook(url) for url in webhooks]
    return RepoSpec(
        name=ref.name,
        every=_every(every, config.hub.default_every),
        route=_route(route),
        repo_type=_from_url("--type", repo_type, ref.repo_type, "model"),
        revision=_revision(_from_url("--revision", revision, ref.revision, "main")),
        include=tuple(include),
        exclude=tuple(exclude),
        destinations=destinations,
        options=options,
    )


def add_repo(store: Store, spec: RepoSpec, *, replace: bool) -> tuple[dict[str, Any], list[str]]:
    """Watch *spec* (replacing the settings of a repo of that name only if *replace*); return the stored
    settings and what to tell the person."""
    stored, outcome = store.add_repo(spec, replace=replace)
    name = spec.name
    if outcome == "exists":
        heading = f"{name} is already watched; nothing changed (use --replace to change it):"
    elif outcome == "updated":
        heading = f"replaced the settings of {name}:"
    else:
        heading = f"added {name}:"
    data = repo_as_dict(stored)
    return {**data, "outcome": outcome}, [heading, *describe_repo(data)]


def _from_url(option: str, given: str | None, from_url: str | None, default: str) -> str:
    """Return the value of *option*: the one *given*, else what the URL said, else *default*. Raise
    UsageError when both were given and disagree."""
    if given is None:
        return from_url or default
    if from_url is not None and from_url != given:
        raise UsageError(f"{option} {given} disagrees with the URL, which names {from_url!r}")
    return given


def dry_run_lines(config: Config, spec: RepoSpec) -> list[str]:
    """Return what adding *spec* would relay now: the files its globs select at the source's head, with
    sizes and the total. Ask the source (the route's first hop's), write nothing. Raise RelayError when
    the source cannot answer."""
    from relayd.catalogue.schema import Repo
    from relayd.hops import load_hop_class
    from relayd.poll import check_listing, load_source, matches
    from relayd.units import format_size

    kind = load_hop_class(spec.route[0]).source
    if kind is None:
        raise UsageError(f"the route's first hop {spec.route[0]} has no source to list")
    repo = Repo(
        name=spec.name,
        repo_type=spec.repo_type,
        revision=spec.revision,
        include=list(spec.include),
        exclude=list(spec.exclude),
        route=list(spec.route),
        destinations=dict(spec.destinations),
        options=dict(spec.options),
    )
    try:
        source = load_source(kind, config)
        head = source.head(repo)
        listing = source.list_files(repo, head)
        check_listing(listing)
    except HopError as exc:
        raise RelayError(f"cannot list {spec.name}: {_source_failure(exc, config, kind)}") from exc
    wanted = sorted(
        (item for item in listing if matches(item.path, repo.include, repo.exclude)), key=lambda f: f.path
    )
    total = sum(item.size for item in wanted)
    width = max([len(format_size(item.size)) for item in wanted] or [0])
    lines = [
        f"{spec.name} ({spec.repo_type}@{spec.revision}, at {head[:12]}): {len(wanted)} of {len(listing)} "
        f"files selected, {format_size(total)}"
    ]
    lines += [f"  {format_size(item.size).rjust(width)}  {item.path}" for item in wanted]
    lines.append(f"  {format_size(total).rjust(width)}  total ({len(wanted)} files)")
    lines.append(f"dry run: nothing was written; run it again without --dry-run to watch {spec.name}")
    return lines


def _source_failure(exc: HopError, config: Config, kind: str) -> str:
    """Return why the source could not be listed, a network failure in plain words, with the hint."""
    from relayd.neterrors import plain_network_error
    from relayd.poll import SOURCES

    section_name = SOURCES[kind][1]
    section = getattr(config, section_name)
    endpoint = str(getattr(section, "endpoint", ""))
    timeout = float(getattr(section, "timeout", 0) or 0)
    setting = f"{section_name}.endpoint"
    plain = plain_network_error(exc, endpoint, setting=setting, timeout=timeout) if endpoint else None
    if plain is not None:
        return f"{plain.detail} (hint: {plain.hint})"
    hint = str(getattr(exc, "hint", ""))
    return f"{exc} (hint: {hint})" if hint else str(exc)


@click.command("list")
@json_option
@pass_app
def list_repos(app: App, as_json: bool) -> None:
    """List the watched repos."""
    document = list_document(app.store())
    if as_json:
        echo_json(document)
        return
    for line in list_lines(document["repos"]):
        click.echo(line)


def list_document(store: Store) -> dict[str, Any]:
    """Return the document `relayctl list --json` writes (docs/status-json.md)."""
    return {"format": 1, "repos": [repo_as_dict(repo) for repo in store.repos()]}


def list_lines(repos: list[dict[str, Any]]) -> list[str]:
    """Return the table `relayctl list` prints for *repos* (``repo_as_dict``)."""
    from relayd.units import format_duration

    if not repos:
        return ["no repos are watched (add one with `relayctl add OWNER/NAME`)"]
    rows = [("NAME", "TYPE", "REVISION", "ROUTE", "EVERY", "PAUSED", "HEAD")]
    rows += [
        (
            repo["name"],
            repo["type"],
            repo["revision"],
            ",".join(repo["route"]),
            format_duration(repo["every_seconds"]),
            "yes" if repo["paused"] else "no",
            (repo["head_commit"] or "-")[:12],
        )
        for repo in repos
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


@click.command("remove")
@click.argument("repo", shell_complete=complete_repo)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def remove(app: App, repo: str, yes: bool) -> None:
    """Stop watching REPO and forget everything recorded for it (copies already made stay)."""
    store = app.store()
    if store.repo(repo) is None:
        raise unknown_repo(repo)
    if not yes:
        click.confirm(f"forget {repo} and all its transfer records?", abort=True, err=True)
    click.echo(remove_repo(store, repo))


def remove_repo(store: Store, name: str) -> str:
    """Forget the repo *name*; return what to tell the person. Raise UnknownRepo if there is none."""
    if not store.remove_repo(name):
        raise unknown_repo(name)
    return f"removed {name}"


@click.command("pause")
@click.argument("repo", shell_complete=complete_repo)
@pass_app
def pause(app: App, repo: str) -> None:
    """Stop polling REPO and starting its transfers (running ones finish)."""
    click.echo(pause_repo(app.store(), repo, paused=True))


@click.command("resume")
@click.argument("repo", shell_complete=complete_repo)
@pass_app
def resume(app: App, repo: str) -> None:
    """Poll REPO and run its transfers again."""
    click.echo(pause_repo(app.store(), repo, paused=False))


def pause_repo(store: Store, name: str, *, paused: bool) -> str:
    """Pause (or resume) the repo *name*; return what to tell the person. Raise UnknownRepo if there is
    none."""
    if not store.set_paused(name, paused):
        raise unknown_repo(name)
    return f"{'paused' if paused else 'resumed'} {name}"


@click.command("retry")
@click.argument("repo", required=False, shell_complete=complete_repo)
@click.option("--hop", metavar="HOP", shell_complete=complete_hop, help="Only transfers of this hop.")
@click.option("--all", "all_repos", is_flag=True, help="Every repo.")
@pass_app
def retry(app: App, repo: str | None, hop: str | None, all_repos: bool) -> None:
    """Make blocked and waiting transfers of REPO (or --all) runnable now, and their polls due."""
    for line in retry_repos(app.store(), repo, hop, all_repos=all_repos)[1]:
        click.echo(line)


def retry_repos(store: Store, repo: str | None, hop: str | None, *, all_repos: bool) -> tuple[int, list[str]]:
    """Make the blocked and waiting transfers of *repo* (or of every repo) and of *hop* (or every hop)
    runnable now; return how many, and what to tell the person. Raise UsageError for a bad request."""
    if (repo is None) == (not all_repos):
        raise UsageError("name a REPO or give --all (not both)")
    count = store.retry(repo, _known_hop(hop))
    noun = "transfer" if count == 1 else "transfers"
    where = f" of {repo}" if repo else ""
    lines = [f"made {count} {noun}{where} runnable"]
    if hop is None:
        lines.append("polls that were waiting or blocked are due now")
    return count, lines
