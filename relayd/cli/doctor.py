"""`relayctl doctor`: check everything relayd needs, each failure with the fix.

The checks follow the routes of the watched repos (every built-in hop of the default route when no
repo is watched yet): the config, the catalogue's schema and the daemon's heartbeat; the Hub endpoint,
token and read access to each repo (gated ones included); the drive login and API; the VM (reachable,
python3, git, git-lfs, free space); the ModelScope token and each destination repo (through the
agent's ``lfs_check``, on the VM or here), or its host while no repo pushes there; the staging disk.
Local checks run first, in this thread; the network checks run in daemon threads, each with its own
deadline (``--timeout``), so doctor never hangs on a silent host. A check starts once the checks it
needs are in, and is skipped with the reason when one of them failed. A service that cannot be reached
is named in plain words (relayd.neterrors). Nothing here writes to the catalogue, and no secret is ever
shown.

Exit status: 0 when nothing failed (warnings allowed), 1 when a check failed, 2 for an invalid config.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from relayd.catalogue.queries import START_HINT
from relayd.cli.app import EXIT_RUNTIME, EXIT_USAGE, App, echo_json, json_option, pass_app
from relayd.errors import ConfigError, RelayError, UsageError
from relayd.neterrors import plain_network_error, status_words

if TYPE_CHECKING:
    from relayd.catalogue.queries import Reader, RepoTarget
    from relayd.config import Config
    from relayd.vm.executor import Executor

log = logging.getLogger(__name__)

FORMAT = 1
OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
STATUSES = (OK, WARN, FAIL, SKIP)
DEFAULT_TIMEOUT = 10.0
#: How long past its own deadline a network check's thread may take before doctor gives up on it.
GRACE = 2.0


@dataclass(frozen=True)
class Row:
    """One line of the report: what was checked, how it went, and what to do about it."""

    group: str
    name: str
    status: str
    detail: str
    hint: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Probe:
    """A check that may wait on the network: run in its own thread, given up after the deadline.

    ``url`` and ``setting`` name where it goes (a network failure is then told in plain words, see
    relayd.neterrors). ``needs`` maps the rows it depends on to how a person names them: when one of
    them failed or was skipped, this probe is skipped with that reason instead of failing again.
    ``also`` lists the (group, name) of the other rows it reports, skipped when it fails before
    reporting them; ``label`` names it in those reasons ("the VM").
    """

    group: str
    name: str
    run: Callable[[], list[Row]]
    timeout_hint: str = ""
    url: str = ""
    setting: str = ""
    label: str = ""
    needs: Mapping[str, str] = field(default_factory=dict)
    also: tuple[tuple[str, str], ...] = ()


@dataclass
class Plan:
    """What to check: the hops the repos' routes use and the repos themselves."""

    hops: list[str]
    repos: list[RepoTarget] = field(default_factory=list)
    needed_on_vm: int = 0  # bytes of current snapshots not yet pulled onto the VM


def _failure(group: str, name: str, exc: BaseException, default_hint: str = "") -> Row:
    hint = str(getattr(exc, "hint", "") or default_hint)
    return Row(group, name, FAIL, str(exc) or type(exc).__name__, hint)


def _minutes(seconds: float) -> str:
    from relayd.units import format_duration

    return format_duration(seconds)


# -- config --------------------------------------------------------------------------------------------


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None


def config_rows(config: Config, load_warnings: Sequence[str], hops: Sequence[str]) -> list[Row]:
    """Return the config's rows: valid, secrets readable by others, other warnings, hops not installed."""
    from relayd.hops import load_hop_class

    rows = [Row("config", "config", OK, f"valid: {config.path}")]
    inline = [ref.key for ref in config.secrets() if ref.value]
    mode = _mode(config.path)
    if inline and mode is not None and mode & 0o077:
        rows.append(
            Row(
                "config",
                "config secrets",
                WARN,
                f"{config.path} holds secrets ({', '.join(inline)}) and others can read it (mode {mode:o})",
                f"chmod 600 {config.path}, or move the secrets to token_env / token_file",
            )
        )
    for ref in config.secrets():
        if ref.file is None:
            continue
        file_mode = _mode(ref.file)
        if file_mode is not None and file_mode & 0o077:
            rows.append(
                Row(
                    "config",
                    "config secrets",
                    WARN,
                    f"{ref.file} ({ref.key}_file) is readable by others (mode {file_mode:o})",
                    f"chmod 600 {ref.file}",
                )
            )
    for message in load_warnings:
        if "holds secrets" not in message:
            rows.append(Row("config", "config warning", WARN, message))
    for hop in hops:
        try:
            load_hop_class(hop)
        except Exception as exc:  # noqa: BLE001 - a broken plugin is a finding here, not a crash
            rows.append(_failure("config", f"hop {hop}", exc, "install the hop's package, or fix the route"))
    return rows


# -- catalogue and daemon ------------------------------------------------------------------------------


def _head_revision() -> str:
    from relayd.catalogue.revisions import fast_head_revision

    head = fast_head_revision()
    if head is None:
        from relayd.catalogue import migrate

        head = migrate.head_revision()
    return head


def catalogue_rows(config: Config, plan: Plan) -> tuple[list[Row], Reader | None]:
    """Return the catalogue's rows and an open reader (None when there is no usable catalogue).

    Never creates the catalogue: a missing file is a warning (the daemon creates it).
    """
    from relayd.catalogue import queries
    from relayd.cli.config_cmd import mask_url

    url = config.catalogue.url
    path = queries.sqlite_file(url)
    if path is not None and not path.exists():
        return [
            Row(
                "catalogue",
                "catalogue",
                WARN,
                f"no catalogue at {path} yet",
                "it is created by `relayd run` or the first `relayctl add`",
            )
        ], None
    try:
        reader = queries.open_reader(url)
        revision = queries.schema_revision(reader)
    except Exception as exc:  # noqa: BLE001 - any database error is this check's finding
        return [_failure("catalogue", "catalogue", exc, f"check catalogue.url ({mask_url(url)})")], None
    head = _head_revision()
    if revision != head:
        reader.close()
        return [
            Row(
                "catalogue",
                "catalogue",
                FAIL,
                f"schema {revision or 'none'}, this relayd needs {head}",
                "back up the catalogue and run `relayctl db upgrade` (or set catalogue.auto_upgrade)",
            )
        ], None
    plan.repos = queries.repo_targets(reader)
    count = len(plan.repos)
    detail = f"schema at head ({head}); {count} repo{'s' if count != 1 else ''}"
    return [Row("catalogue", "catalogue", OK, detail)], reader


def catalogue_checks(config: Config, plan: Plan, timeout: float, now: datetime) -> list[Row]:
    """Return the catalogue's and the daemon's rows, and fill in the plan's repos and the bytes still
    due on the VM. The reads run in a thread with a deadline: a database server that does not answer
    fails the check (and the default route is checked) instead of hanging doctor."""
    found: list[tuple[list[Row], list[RepoTarget], int]] = []

    def work() -> None:
        probe = Plan(hops=[])
        reader: Reader | None = None
        try:
            rows, reader = catalogue_rows(config, probe)
            rows.append(daemon_row(reader, now))
            rows += drive_rate_rows(reader)
            needed = _vm_bytes_needed(reader)
        except Exception as exc:
            log.debug("reading the catalogue failed", exc_info=True)
            failure = _failure("catalogue", "catalogue", exc, "check the catalogue (`relayctl status`)")
            found.append(([failure, daemon_row(None, now)], [], 0))
            return
        finally:
            if reader is not None:
                reader.close()
        found.append((rows, probe.repos, needed))

    thread = threading.Thread(target=work, name="relayctl-doctor-catalogue", daemon=True)
    thread.start()
    thread.join(timeout + GRACE)
    if not found:
        hint = "check catalogue.url and the database server"
        return [
            Row("catalogue", "catalogue", FAIL, f"no answer within {timeout:g} s", hint),
            daemon_row(None, now),
        ]
    rows, plan.repos, plan.needed_on_vm = found[0]
    return rows


def daemon_row(reader: Reader | None, now: datetime) -> Row:
    """Return whether a daemon serves this catalogue, by its heartbeat and its instance lock (a warning
    when not)."""
    from relayd.catalogue.queries import DAEMON_RUNNING, daemon_of, service_facts

    if reader is None:
        return Row("daemon", "daemon", WARN, "no catalogue, so no daemon", START_HINT)
    facts = service_facts(reader)
    daemon = daemon_of(reader, now, facts)
    if daemon.state != DAEMON_RUNNING:
        return Row("daemon", "daemon", WARN, daemon.detail, daemon.hint)
    fact = next((item for item in facts if item.key == "daemon"), None)
    running = fact.value.get("running") if fact is not None else None
    busy = f", {running} transfer(s) running" if running is not None else ""
    return Row("daemon", "daemon", OK, f"{daemon.detail}{busy}")


# -- disk ----------------------------------------------------------------------------------------------


def staging_row(config: Config) -> Row:
    """Return the staging disk's budget: free space against min_free, use against max_bytes."""
    from relayd.staging import Budget, Staging
    from relayd.units import format_size

    root = config.staging.dir
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if (root / "blobs").is_dir() and (root / "partial").is_dir() and (root / "quarantine").is_dir():
            budget = Staging(config.staging).budget()
        else:
            import shutil

            budget = Budget(
                0, shutil.disk_usage(probe).free, config.staging.max_bytes, config.staging.min_free
            )
    except OSError as exc:
        return _failure("disk", "staging disk", exc, f"check staging.dir ({root}) and its permissions")
    limits = (
        f"{format_size(budget.free)} free (floor {format_size(budget.min_free)}), "
        f"{format_size(budget.used)} staged (maximum {format_size(budget.max_bytes)}) at {root}"
    )
    if budget.free <= budget.min_free:
        return Row(
            "disk",
            "staging disk",
            FAIL,
            limits,
            f"free space on the disk holding {root}, or lower staging.min_free: downloads wait until then",
        )
    if budget.used >= budget.max_bytes:
        return Row(
            "disk",
            "staging disk",
            WARN,
            limits,
            "downloads wait until later hops release staged copies (or raise staging.max_bytes)",
        )
    return Row("disk", "staging disk", OK, limits)


# -- the Hub -------------------------------------------------------------------------------------------


def hub_probes(config: Config, repos: Sequence[RepoTarget], timeout: float) -> list[Probe]:
    """Return the Hub endpoint's reach, the token's check and one access check per repo that downloads
    from the Hub; each later one needs the one before it."""
    endpoint = config.hub.endpoint.rstrip("/")
    reach = f"check hub.endpoint ({endpoint}) and the network path to it"

    def answers() -> list[Row]:
        from relayd.hub import HubClient

        url = HubClient(config.hub).endpoint + "/"
        from huggingface_hub import get_session  # after relayd.hub, which sets huggingface_hub up

        response = get_session().head(url, timeout=timeout, follow_redirects=False)
        return [_answer_row("hub", "hub endpoint", endpoint, response.status_code, reach)]

    def token() -> list[Row]:
        from relayd.hub import HubClient

        client = HubClient(config.hub)
        secret = client.token()
        if not secret:
            return [
                Row(
                    "hub",
                    "hub token",
                    OK,
                    f"none ({config.hub.token.describe()}): public repos of {endpoint} only",
                )
            ]
        return [Row("hub", "hub token", OK, f"valid for {client.whoami()} on {endpoint}")]

    def access(repo: RepoTarget) -> Callable[[], list[Row]]:
        def run() -> list[Row]:
            from relayd.hub import HubClient

            client = HubClient(config.hub)
            client.check_access(repo.name, repo.repo_type)
            commit = client.head_commit(repo.name, repo.repo_type, repo.revision)
            return [Row("hub", f"hub {repo.name}", OK, f"readable; {repo.revision} is at {commit[:12]}")]

        return run

    def probe(name: str, run: Callable[[], list[Row]], needs: Mapping[str, str]) -> Probe:
        return Probe("hub", name, run, reach, endpoint, "hub.endpoint", "the Hub endpoint", needs)

    probes = [
        probe("hub endpoint", answers, {}),
        probe("hub token", token, {"hub endpoint": "the Hub endpoint"}),
    ]
    needs = {"hub endpoint": "the Hub endpoint", "hub token": "the Hub token check"}
    probes += [probe(f"hub {repo.name}", access(repo), needs) for repo in repos if "download" in repo.route]
    return probes


def hub_rate_row(config: Config) -> Row:
    """Return what the Hub's answers to the checks above said is left of its rate limits (the same
    count the daemon draws on: the Hub counts per token, or per IP address without one)."""
    from relayd.hub import HubClient, describe_rate_limits

    client = HubClient(config.hub)
    try:
        states, anonymous = client.rate_limits(), not client.token()
    except RelayError as exc:
        return Row("hub", "hub rate limit", SKIP, str(exc))
    if not states:
        return Row(
            "hub", "hub rate limit", SKIP, "no answer from the Hub said what is left of its rate limits"
        )
    low = any(state.low for state in states)
    hint = (
        "set a token (hub.token_env, hub.token_file or hub.token): an account's limits are larger and not "
        "shared with everyone behind this IP address"
        if anonymous
        else "relayd waits for the window to reset; if this lasts, spread the repos' polls out (--every)"
    )
    return Row(
        "hub", "hub rate limit", WARN if low else OK, describe_rate_limits(states), hint if low else ""
    )


def _answer_row(group: str, name: str, url: str, status: int, hint: str) -> Row:
    """Return whether a service answered: any answer but a server error or a proxy's refusal will do
    (the checks that follow ask the questions that matter)."""
    if status >= 500 or status == 407:
        return Row(group, name, FAIL, f"{url} answered {status_words(status)}", hint)
    return Row(group, name, OK, f"{url} answers")


# -- the drive -----------------------------------------------------------------------------------------


def drive_probes(config: Config, timeout: float) -> list[Probe]:
    """Return the drive login's check (no network: the saved token's lifetime) and the API's reach."""
    from relayd.drive.base import LOGIN_HINT

    def login() -> list[Row]:
        if config.drive.backend != "aligo":
            raise ConfigError(f"drive.backend: unknown backend {config.drive.backend!r} (known: 'aligo')")
        from relayd.drive.tokens import TokenStore

        tokens = TokenStore(config.daemon.state_dir / "drive")
        if tokens.directory.exists() and not os.access(tokens.directory, os.R_OK | os.X_OK):
            return [
                Row(
                    "drive",
                    "drive login",
                    FAIL,
                    f"cannot read {tokens.directory}",
                    "run doctor as the user relayd runs as",
                )
            ]
        lifetime = tokens.lifetime()
        if lifetime.state == "refused":
            return [Row("drive", "drive login", FAIL, "the drive refused relayd's refresh token", LOGIN_HINT)]
        if lifetime.state == "missing":
            ref = config.drive.refresh_token
            try:
                configured = ref.resolve()
            except ConfigError as exc:
                return [_failure("drive", "drive login", exc, LOGIN_HINT)]
            if configured:
                detail = f"a refresh token {ref.describe()}, exchanged on first use (not yet)"
                return [Row("drive", "drive login", OK, detail)]
            return [
                Row(
                    "drive",
                    "drive login",
                    FAIL,
                    f"relayd has no Aliyun Drive login ({ref.key}: {ref.describe()})",
                    LOGIN_HINT,
                )
            ]
        remaining = lifetime.remaining() or 0.0
        until = lifetime.expires_at.isoformat(timespec="seconds") if lifetime.expires_at else "?"
        if lifetime.state == "valid" and remaining > 0:
            detail = f"access token valid for {_minutes(remaining)} more (until {until})"
        else:
            detail = f"access token expired at {until}; relayd refreshes it on its next call"
        return [Row("drive", "drive login", OK, detail)]

    def api() -> list[Row]:
        import requests  # the drive's client library (aligo) speaks through requests

        with requests.get(url, timeout=timeout, allow_redirects=False, stream=True) as response:
            status = response.status_code
        return [_answer_row("drive", "drive api", url, status, reach)]

    url = config.drive.api_url
    reach = f"check drive.api_url ({url}) and the network path"
    return [
        Probe("drive", "drive login", login, label="the drive login"),
        Probe("drive", "drive api", api, reach, url, "drive.api_url", "the drive API"),
    ]


def drive_rate_rows(reader: Reader | None) -> list[Row]:
    """Return how fast the drive moved bytes in the last hour (none when it moved nothing lately); a
    warning when downloads look held to the third-party rate."""
    from relayd.catalogue.queries import measured_rates
    from relayd.cli.drive import SLOW_HINT, drive_hops, rate_text, slow_downloads

    if reader is None:
        return []
    hops = drive_hops()
    rates = [rate for rate in measured_rates(reader, list(hops)) if rate.rate or rate.running]
    if not rates:
        return []
    slow = slow_downloads(rates, hops)
    detail = "; ".join(rate_text(rate, hops) for rate in rates)
    return [Row("drive", "drive rate", WARN if slow else OK, detail, SLOW_HINT if slow else "")]


# -- the VM --------------------------------------------------------------------------------------------


def _vm_hint(config: Config) -> str:
    vm = config.vm
    if vm.executor == "ssh":
        who = f"{vm.user + '@' if vm.user else ''}{vm.host}"
        return f"check vm.host, vm.port and the network path (try `ssh -p {vm.port} {who} true`)"
    return "check vm.python and vm.path"


def vm_probe(config: Config, executor: Executor, timeout: float, needed: int) -> Probe:
    """Return the VM's check: reachable with python3 ≥ 3.8, git, git-lfs, and free space under vm.root."""
    from relayd.units import format_size
    from relayd.vm.executor import MIN_PYTHON

    where = executor.describe()

    def run() -> list[Row]:
        facts = executor.facts(timeout=timeout)
        rows = [Row("vm", "vm", OK, f"{where} answers (agent ran as python {facts.python})")]
        version = tuple(int(part) for part in facts.python.split(".")[:2] if part.isdigit())
        if version < MIN_PYTHON:
            rows.append(
                Row(
                    "vm",
                    "vm python3",
                    FAIL,
                    f"python {facts.python or 'unknown'} on {where}; relayd's agent needs ≥ 3.8",
                    "install python3 ≥ 3.8 on the VM (apt-get install python3) or set vm.python",
                )
            )
        else:
            rows.append(Row("vm", "vm python3", OK, facts.python))
        if facts.git:
            rows.append(Row("vm", "vm git", OK, facts.git))
        else:
            rows.append(
                Row(
                    "vm",
                    "vm git",
                    FAIL,
                    f"git is not installed on {where}",
                    "install git on the VM (apt-get install git), or fix vm.path",
                )
            )
        if facts.git_lfs:
            rows.append(Row("vm", "vm git-lfs", OK, facts.git_lfs))
        else:
            rows.append(
                Row(
                    "vm",
                    "vm git-lfs",
                    FAIL,
                    f"git-lfs is not installed on {where}",
                    "install git-lfs on the VM (apt-get install git-lfs), or fix vm.path",
                )
            )
        space = f"{format_size(facts.free)} free under {facts.root}"
        if not facts.root_exists:
            space += " (not created yet)"
        if needed and facts.free < needed:
            rows.append(
                Row(
                    "disk",
                    "vm disk",
                    FAIL,
                    f"{space}; the current snapshots need {format_size(needed)} more there",
                    "free space under vm.root on the VM, or point vm.root at a larger disk",
                )
            )
        else:
            more = f"; the current snapshots need {format_size(needed)} more" if needed else ""
            rows.append(Row("disk", "vm disk", OK, space + more))
        return rows

    tools = (("vm", "vm python3"), ("vm", "vm git"), ("vm", "vm git-lfs"), ("disk", "vm disk"))
    return Probe("vm", "vm", run, _vm_hint(config), label="the VM", also=tools)


def local_git_probe(executor: Executor, timeout: float) -> Probe:
    """Return the check of git and git-lfs on this machine (lfs_push on routes without vm_pull)."""

    def run() -> list[Row]:
        facts = executor.facts(timeout=timeout)
        rows = []
        for name, version, package in (("git", facts.git, "git"), ("git-lfs", facts.git_lfs, "git-lfs")):
            if version:
                rows.append(Row("modelscope", f"local {name}", OK, version))
            else:
                rows.append(
                    Row(
                        "modelscope",
                        f"local {name}",
                        FAIL,
                        f"{name} is not installed on this machine (lfs_push pushes from staging here)",
                        f"install {package} (apt-get install {package})",
                    )
                )
        return rows

    also = (("modelscope", "local git-lfs"),)
    return Probe("modelscope", "local git", run, label="the check of git on this machine", also=also)


# -- ModelScope ----------------------------------------------------------------------------------------


def _destination(repo: RepoTarget) -> str:
    """Return the ModelScope repo id of *repo* (as lfs_push names it). Raise UsageError if invalid."""
    from relayd.names import validate_repo_id

    target = str(repo.destinations.get("modelscope_repo") or repo.name)
    validate_repo_id(target)
    if "/" not in target:
        raise UsageError(f"the ModelScope repo {target!r} has no owner")
    return target


def modelscope_probes(
    config: Config, repos: Sequence[RepoTarget], executors: Callable[[bool], Executor], timeout: float
) -> tuple[list[Row], list[Probe]]:
    """Return the token's row and one probe per destination repo (the agent's ``lfs_check``: the remote
    exists and accepts the token on the git and LFS legs), each needing the token and git-lfs where it
    runs; while no repo pushes to ModelScope, one probe of the remote's host from this machine."""
    from urllib.parse import urlsplit

    from relayd.cli.whereis import public_url

    section = config.modelscope
    ref = section.token
    fix = (
        "set MODELSCOPE_TOKEN (or [modelscope] token_env, token_file or token_credential) to an access "
        "token with write access"
    )
    token = ""
    try:
        token = ref.resolve() or ""
    except ConfigError as exc:
        rows = [_failure("modelscope", "modelscope token", exc, "fix [modelscope] token")]
    else:
        if token:
            rows = [Row("modelscope", "modelscope token", OK, f"set ({ref.describe()})")]
        else:
            rows = [Row("modelscope", "modelscope token", FAIL, f"no access token ({ref.describe()})", fix)]
    probes: list[Probe] = []
    seen: set[tuple[str, bool]] = set()
    pushing = [repo for repo in repos if "lfs_push" in repo.route]
    for repo in pushing:
        name = f"modelscope {repo.destinations.get('modelscope_repo') or repo.name}"
        try:
            target = _destination(repo)
        except UsageError as exc:
            rows.append(
                Row(
                    "modelscope",
                    name,
                    FAIL,
                    f"{repo.name}: {exc}",
                    "set the repo's modelscope_repo destination to OWNER/NAME",
                )
            )
            continue
        owner, repo_name = target.split("/", 1)
        remote = section.remote.format(owner=owner, name=repo_name)
        on_vm = "vm_pull" in repo.route
        if (remote, on_vm) in seen:
            continue
        seen.add((remote, on_vm))
        git_lfs = (
            {"vm git-lfs": "git-lfs on the VM"} if on_vm else {"local git-lfs": "git-lfs on this machine"}
        )
        probes.append(
            Probe(
                "modelscope",
                name,
                _lfs_check(config, executors(on_vm), on_vm, remote, token, name, timeout),
                f"check [modelscope] remote ({public_url(remote)}) and the network path to it",
                needs={"modelscope token": "the ModelScope token", **git_lfs},
            )
        )
    if not pushing:
        parts = urlsplit(public_url(section.remote.format(owner="owner", name="name")))
        origin = f"{parts.scheme}://{parts.netloc}"

        def answers() -> list[Row]:
            import requests

            with requests.get(f"{origin}/", timeout=timeout, allow_redirects=False, stream=True) as response:
                status = response.status_code
            return [_answer_row("modelscope", "modelscope endpoint", origin, status, reach)]

        reach = f"check [modelscope] remote ({origin}) and the network path to it from this machine"
        probes.append(Probe("modelscope", "modelscope endpoint", answers, reach, origin, "modelscope.remote"))
    return rows, probes


def _lfs_check(
    config: Config, executor: Executor, on_vm: bool, remote: str, token: str, name: str, timeout: float
) -> Callable[[], list[Row]]:
    from relayd.cli.whereis import public_url

    section = config.modelscope
    if section.work_dir:
        work_dir = section.work_dir
    elif on_vm:
        work_dir = config.vm.root.rstrip("/") + "/.relayd-git"
    else:
        work_dir = str(config.daemon.state_dir / "lfs")

    def run() -> list[Row]:
        result = executor.call(
            "lfs_check",
            {"remote": remote, "work_dir": work_dir, "branch": section.branch, "activity_timeout": timeout},
            secrets={"token": token, "proxy": section.proxy},
            timeout=timeout,
        )
        head = result.get("branch_head")
        tip = f"{section.branch} is at {str(head)[:12]}" if head else f"{section.branch} does not exist yet"
        return [Row("modelscope", name, OK, f"{public_url(remote)} accepts the token; {tip}")]

    return run


# -- local_copy ----------------------------------------------------------------------------------------


def local_copy_rows(config: Config) -> list[Row]:
    section = config.local_copy
    rows = []
    if section.source.is_dir() and os.access(section.source, os.R_OK | os.X_OK):
        rows.append(Row("local_copy", "local_copy source", OK, str(section.source)))
    else:
        rows.append(
            Row(
                "local_copy",
                "local_copy source",
                FAIL,
                f"{section.source} is not a readable directory",
                "create it or fix local_copy.source",
            )
        )
    dest = section.dest
    while not dest.exists() and dest != dest.parent:
        dest = dest.parent
    if os.access(dest, os.W_OK | os.X_OK):
        rows.append(Row("local_copy", "local_copy dest", OK, str(section.dest)))
    else:
        rows.append(
            Row(
                "local_copy",
                "local_copy dest",
                FAIL,
                f"{section.dest} cannot be written ({dest} is not writable)",
                "fix local_copy.dest or its permissions",
            )
        )
    return rows


# -- running the checks --------------------------------------------------------------------------------


def probe_failure(probe: Probe, exc: BaseException, timeout: float) -> Row:
    """Return the failed row of *probe*: a network failure in plain words, else the error and its hint."""
    if probe.url:
        plain = plain_network_error(exc, probe.url, setting=probe.setting, timeout=timeout)
        if plain is not None:
            return Row(probe.group, probe.name, FAIL, plain.detail, plain.hint)
    return _failure(probe.group, probe.name, exc, probe.timeout_hint)


def _skip_reason(probe: Probe, outcome: Mapping[str, Row]) -> str | None:
    """Return why *probe* is skipped (a row it needs failed or was skipped), or None when it may run."""
    for need, words in probe.needs.items():
        row = outcome.get(need)
        if row is not None and row.status == FAIL:
            return f"skipped: {words} failed"
        if row is not None and row.status == SKIP:
            return row.detail if row.detail.startswith("skipped: ") else f"skipped: {words} was not checked"
    return None


def _skipped(probe: Probe, reason: str) -> list[Row]:
    return [Row(group, name, SKIP, reason) for group, name in ((probe.group, probe.name), *probe.also)]


def run_probes(probes: Sequence[Probe], timeout: float, known: Sequence[Row] = ()) -> list[Row]:
    """Run every probe in its own daemon thread, each as soon as the rows it needs are in (those of
    *known* or of another probe): all at once when none needs another. A probe whose prerequisite
    failed or was skipped is skipped with the reason; one not done by its deadline (*timeout* after it
    started, and a grace) fails. Return the rows in the probes' order."""
    outcome = {row.name: row for row in known}
    producer = {
        name: i for i, probe in enumerate(probes) for _, name in ((probe.group, probe.name), *probe.also)
    }
    results: dict[int, list[Row]] = {}
    started: dict[int, float] = {}
    finished: queue.SimpleQueue[tuple[int, list[Row]]] = queue.SimpleQueue()

    def work(index: int, probe: Probe) -> None:
        begin = time.monotonic()
        try:
            rows = probe.run()
        except Exception as exc:
            if not isinstance(exc, RelayError):
                log.debug("check %s failed", probe.name, exc_info=True)
            rows = [probe_failure(probe, exc, timeout)]
        spent = round(time.monotonic() - begin, 3)
        finished.put((index, [replace(row, seconds=spent) for row in rows]))

    def settle(index: int, rows: list[Row]) -> None:
        probe = probes[index]
        reported = {row.name for row in rows}
        if any(row.status == FAIL for row in rows):
            reason = f"skipped: {probe.label or f'the {probe.name} check'} failed"
            rows += [row for row in _skipped(probe, reason)[1:] if row.name not in reported]
        results[index] = rows
        outcome.update((row.name, row) for row in rows)

    waiting = list(range(len(probes)))
    while waiting or started:
        for index in list(waiting):
            probe = probes[index]
            if any(need not in outcome and producer.get(need, index) != index for need in probe.needs):
                continue  # a prerequisite is still being checked
            waiting.remove(index)
            reason = _skip_reason(probe, outcome)
            if reason is not None:
                settle(index, _skipped(probe, reason))
                continue
            started[index] = time.monotonic()
            name = f"relayctl-doctor-{index}"
            threading.Thread(target=work, args=(index, probe), name=name, daemon=True).start()
        if not started:
            break
        deadline = min(started.values()) + timeout + GRACE
        try:
            index, rows = finished.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            now = time.monotonic()
            for index, begin in list(started.items()):
                if now >= begin + timeout + GRACE:
                    del started[index]
                    settle(index, [_no_answer(probes[index], timeout, now - begin)])
            continue
        if started.pop(index, None) is not None:  # a probe already given up on is not heard again
            settle(index, rows)
    return [row for index in range(len(probes)) for row in results.get(index, [])]


def _no_answer(probe: Probe, timeout: float, spent: float) -> Row:
    where = f": no answer from {probe.url}" if probe.url else ""
    return Row(
        probe.group,
        probe.name,
        FAIL,
        f"timed out after {timeout:g} s{where}",
        probe.timeout_hint or "check the network path, or give doctor a longer --timeout",
        round(spent, 3),
    )


def plan_hops(repos: Sequence[RepoTarget]) -> list[str]:
    """Return the hops some repo's route uses, in route order (the default route if there is no repo)."""
    from relayd.hops import DEFAULT_ROUTE

    hops: list[str] = []
    for repo in repos:
        hops += [hop for hop in repo.route if hop not in hops]
    return hops or list(DEFAULT_ROUTE)


def _vm_bytes_needed(reader: Reader | None) -> int:
    """Return the bytes of the current snapshots that vm_pull has still to put on the VM."""
    if reader is None:
        return 0
    from relayd.catalogue.queries import summary

    needed = 0
    for repo in summary(reader, blocked_limit=0).repos:
        for hop in repo.hops:
            if hop.hop == "vm_pull":
                needed += max(hop.bytes_total - hop.bytes_done, 0)
    return needed


def diagnose(config: Config, load_warnings: Sequence[str], timeout: float) -> tuple[Plan, list[Row]]:
    """Run every check the config and the repos' routes call for; return the plan and the rows."""
    import dataclasses

    plan = Plan(hops=[])
    catalogue = catalogue_checks(config, plan, timeout, datetime.now(UTC))
    plan.hops = plan_hops(plan.repos)
    hops = plan.hops
    rows = config_rows(config, load_warnings, hops) + catalogue
    routes = [repo.route for repo in plan.repos] or [hops]
    probes: list[Probe] = []
    executors: dict[bool, Executor] = {}

    def executor_for(on_vm: bool) -> Executor:
        from relayd.vm.executor import LocalExecutor, make_executor

        if on_vm not in executors:
            if on_vm:
                executors[on_vm] = make_executor(config.vm)
            else:
                local = dataclasses.replace(config.vm, executor="local", python=sys.executable, path="")
                executors[on_vm] = LocalExecutor(local)
        return executors[on_vm]

    if "download" in hops:
        probes += hub_probes(config, plan.repos, timeout)
    if "pan_upload" in hops or "vm_pull" in hops:
        probes += drive_probes(config, timeout)
    if "vm_pull" in hops or any("lfs_push" in route and "vm_pull" in route for route in routes):
        probes.append(vm_probe(config, executor_for(True), timeout, plan.needed_on_vm))
    if any("lfs_push" in route and "vm_pull" not in route for route in routes):
        probes.append(local_git_probe(executor_for(False), timeout))
    if "lfs_push" in hops:
        ms_rows, ms_probes = modelscope_probes(config, plan.repos, executor_for, timeout)
        rows += ms_rows
        probes += ms_probes
    if "download" in hops:
        rows.append(staging_row(config))
    if "local_copy" in hops:
        rows += local_copy_rows(config)
    known = {"download", "pan_upload", "vm_pull", "lfs_push", "local_copy"}
    for hop in hops:
        if hop not in known:
            rows.append(Row("config", f"hop {hop}", SKIP, "a plugin hop: doctor has no checks for it"))
    try:
        rows += run_probes(probes, timeout, known=rows)
        if "download" in hops:
            rows.append(hub_rate_row(config))
    finally:
        for executor in executors.values():
            executor.close()
    order = {group: index for index, group in enumerate(GROUPS)}
    rows.sort(key=lambda row: order.get(row.group, len(order)))
    return plan, rows


GROUPS = ("config", "catalogue", "daemon", "hub", "drive", "vm", "modelscope", "local_copy", "disk")


# -- output --------------------------------------------------------------------------------------------


def counts(rows: Sequence[Row]) -> dict[str, int]:
    return {status: sum(1 for row in rows if row.status == status) for status in STATUSES}


def doctor_json(config_path: Path, plan: Plan | None, rows: Sequence[Row], timeout: float) -> dict[str, Any]:
    """Return the documented doctor document (docs/doctor-json.md)."""
    tally = counts(rows)
    return {
        "format": FORMAT,
        "kind": "doctor",
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": str(config_path),
        "ok": tally[FAIL] == 0,
        "hops": [] if plan is None else list(plan.hops),
        "repos": [] if plan is None else [repo.name for repo in plan.repos],
        "timeout_seconds": timeout,
        "counts": tally,
        "checks": [
            {
                "group": row.group,
                "name": row.name,
                "status": row.status,
                "detail": row.detail,
                "hint": row.hint or None,
                "seconds": row.seconds,
            }
            for row in rows
        ],
    }


def doctor_lines(config_path: Path, plan: Plan | None, rows: Sequence[Row]) -> list[str]:
    """Return the text report: a table of checks, each failure or warning followed by its hint."""
    scope = ""
    if plan is not None:
        repos = len(plan.repos)
        scope = f" (hops: {', '.join(plan.hops)}; {repos} repo{'s' if repos != 1 else ''})"
    lines = [f"relayctl doctor: {config_path}{scope}", ""]
    width = max([len("CHECK"), *(len(row.name) for row in rows)])
    lines.append(f"{'STATUS':<6}  {'CHECK'.ljust(width)}  DETAIL")
    for row in rows:
        status = row.status.upper() if row.status in (FAIL, WARN) else row.status
        lines.append(f"{status:<6}  {row.name.ljust(width)}  {row.detail}")
        if row.hint and row.status in (FAIL, WARN):
            lines.append(f"{'':<6}  {'':<{width}}  hint: {row.hint}")
    tally = counts(rows)
    lines.append("")
    summary = f"{tally[OK]} ok, {tally[WARN]} warning(s), {tally[FAIL]} failed"
    if tally[SKIP]:
        summary += f", {tally[SKIP]} skipped"
    lines.append(summary)
    return lines


def _collect_config(app: App) -> tuple[Config | None, list[str], Row | None]:
    """Load the config, collecting its load warnings; a ConfigError becomes a failed row."""
    from relayd.cli.config_cmd import _collect_warnings

    try:
        with _collect_warnings("relayd.config") as warnings:
            config = app.config
    except ConfigError as exc:
        return (
            None,
            [],
            Row("config", "config", FAIL, str(exc), "fix the key it names (`relayctl config check`)"),
        )
    return config, list(warnings), None


@click.command("doctor")
@json_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.5),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="How long each network check may take (they run in parallel).",
)
@pass_app
def doctor(app: App, as_json: bool, timeout: float) -> None:
    """Check the config, the catalogue, the daemon and every service the repos' routes use.

    The Hub endpoint, token and repo access (gated too), the drive login's lifetime and its API, the VM
    (reachable, python3, git, git-lfs, free space), the ModelScope token and destination repos, the
    staging disk; the services are reached even while no repo is watched. Each failure says in plain
    words what went wrong, with a hint; a check whose prerequisite failed is skipped with the reason.
    Exit status: 0 all passed (warnings allowed), 1 a check failed, 2 an invalid config. --json writes
    the documented document (docs/doctor-json.md).
    """
    config, load_warnings, broken = _collect_config(app)
    plan: Plan | None = None
    if config is None:
        assert broken is not None  # noqa: S101 - set whenever the config is missing
        rows = [broken]
    else:
        plan, rows = diagnose(config, load_warnings, timeout)
    if as_json:
        echo_json(doctor_json(app.config_path, plan, rows, timeout))
    else:
        click.echo("\n".join(doctor_lines(app.config_path, plan, rows)))
    if config is None:
        raise click.exceptions.Exit(EXIT_USAGE)
    if any(row.status == FAIL for row in rows):
        raise click.exceptions.Exit(EXIT_RUNTIME)
