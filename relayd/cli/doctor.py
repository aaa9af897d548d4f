"""`relayctl doctor`: check everything relayd needs, each failure with the fix.

The checks follow the routes of the watched repos (every built-in hop of the default route when no
repo is watched yet): doctor's own are the config, the catalogue's schema and the daemon's heartbeat
(and the drive's measured rate); the others are those each routed hop declares (``Hop.checks``: the
ModelScope token and destinations, local_copy's folders …) and those of each shared service a routed
hop uses (``Hop.services``; relayd.services: the Hub's endpoint, token, repo access and rate limits,
the drive's login and API, the VM's tools and free space), and the staging disk's for a hop that
fills it. A plugin hop is checked the same way. Every check runs in a daemon thread, each with its own
deadline (``--timeout``), so doctor never hangs on a silent host; a check starts once the checks it
needs are in, and is skipped with the reason when one of them failed. A service that cannot be reached
is named in plain words (relayd.neterrors). Nothing here writes to the catalogue, and no secret is
ever shown.

Exit status: 0 when nothing failed (warnings allowed), 1 when a check failed, 2 for an invalid config.
"""

from __future__ import annotations

import logging
import queue
import stat
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from relayd.cli.app import EXIT_RUNTIME, EXIT_USAGE, App, echo_json, json_option, pass_app
from relayd.errors import ConfigError, RelayError
from relayd.health import FAIL, OK, SKIP, STATUSES, WARN, Check, CheckScope, Finding, failed
from relayd.neterrors import plain_network_error

if TYPE_CHECKING:
    from relayd.catalogue.queries import Reader, RepoTarget
    from relayd.config import Config
    from relayd.hops.base import Hop
    from relayd.services import Services

log = logging.getLogger(__name__)

FORMAT = 1
DEFAULT_TIMEOUT = 10.0
#: How long past its own deadline a check's thread may take before doctor gives up on it.
GRACE = 2.0
#: The groups doctor's own rows come first in; the disks come last, the hops' and services' between.
FIRST_GROUPS = ("config", "catalogue", "daemon")
LAST_GROUP = "disk"


@dataclass(frozen=True)
class Row(Finding):
    """One line of the report: a finding, and how long the check that found it took."""

    seconds: float = 0.0


@dataclass
class Plan:
    """What to check: the hops the repos' routes use, the repos themselves, and the bytes of the
    current snapshots each hop has still to move."""

    hops: list[str]
    repos: list[RepoTarget] = field(default_factory=list)
    due: dict[str, int] = field(default_factory=dict)


def _failure(group: str, name: str, exc: BaseException, default_hint: str = "") -> Row:
    return _row(failed(group, name, exc, default_hint))


def _row(finding: Finding, seconds: float = 0.0) -> Row:
    return Row(finding.group, finding.name, finding.status, finding.detail, finding.hint, seconds)


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
    """Return the catalogue's and the daemon's rows, and fill in the plan's repos and the bytes each hop
    has still to move. The reads run in a thread with a deadline: a database server that does not answer
    fails the check (and the default route is checked) instead of hanging doctor."""
    from relayd.cli.doctor_daemons import daemon_rows, routed_hops

    found: list[tuple[list[Row], list[RepoTarget], dict[str, int]]] = []

    def work() -> None:
        probe = Plan(hops=[])
        reader: Reader | None = None
        try:
            rows, reader = catalogue_rows(config, probe)
            rows += daemon_rows(reader, now, routed_hops(probe.repos))
            rows += drive_rate_rows(reader)
            due = _due(reader)
        except Exception as exc:
            log.debug("reading the catalogue failed", exc_info=True)
            failure = _failure("catalogue", "catalogue", exc, "check the catalogue (`relayctl status`)")
            found.append(([failure, *daemon_rows(None, now, ())], [], {}))
            return
        finally:
            if reader is not None:
                reader.close()
        found.append((rows, probe.repos, due))

    thread = threading.Thread(target=work, name="relayctl-doctor-catalogue", daemon=True)
    thread.start()
    thread.join(timeout + GRACE)
    if not found:
        hint = "check catalogue.url and the database server"
        return [
            Row("catalogue", "catalogue", FAIL, f"no answer within {timeout:g} s", hint),
            *daemon_rows(None, now, ()),
        ]
    rows, plan.repos, plan.due = found[0]
    return rows


# -- what the catalogue measured ------------------------------------------------------------------------


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


# -- running the checks --------------------------------------------------------------------------------


def check_failure(check: Check, exc: BaseException, timeout: float) -> Row:
    """Return the failed row of *check*: a network failure in plain words, else the error and its hint."""
    if check.url:
        plain = plain_network_error(exc, check.url, setting=check.setting, timeout=timeout)
        if plain is not None:
            return Row(check.group, check.name, FAIL, plain.detail, plain.hint)
    return _failure(check.group, check.name, exc, check.timeout_hint)


def _skip_reason(check: Check, outcome: Mapping[str, Finding]) -> str | None:
    """Return why *check* is skipped (a row it needs failed or was skipped), or None when it may run."""
    for need, words in check.needs.items():
        row = outcome.get(need)
        if row is not None and row.status == FAIL:
            return f"skipped: {words} failed"
        if row is not None and row.status == SKIP:
            return row.detail if row.detail.startswith("skipped: ") else f"skipped: {words} was not checked"
    return None


def _skipped(check: Check, reason: str) -> list[Row]:
    return [Row(group, name, SKIP, reason) for group, name in ((check.group, check.name), *check.also)]


def run_checks(checks: Sequence[Check], timeout: float, known: Sequence[Finding] = ()) -> list[Row]:
    """Run every check in its own daemon thread, each as soon as the rows it needs or waits for
    (``needs``, ``after``) are in (those of *known* or of another check): all at once when none needs
    another. A check whose prerequisite failed or was skipped is skipped with the reason; one not done
    by its deadline (*timeout* after it started, and a grace) fails. Return the rows in the checks'
    order."""
    outcome: dict[str, Finding] = {row.name: row for row in known}
    producer = {
        name: i for i, check in enumerate(checks) for _, name in ((check.group, check.name), *check.also)
    }
    results: dict[int, list[Row]] = {}
    started: dict[int, float] = {}
    finished: queue.SimpleQueue[tuple[int, list[Row]]] = queue.SimpleQueue()

    def work(index: int, check: Check) -> None:
        begin = time.monotonic()
        try:
            found: list[Finding] = list(check.run())
        except Exception as exc:
            if not isinstance(exc, RelayError):
                log.debug("check %s failed", check.name, exc_info=True)
            found = [check_failure(check, exc, timeout)]
        spent = round(time.monotonic() - begin, 3)
        finished.put((index, [_row(finding, spent) for finding in found]))

    def settle(index: int, rows: list[Row]) -> None:
        check = checks[index]
        reported = {row.name for row in rows}
        if any(row.status == FAIL for row in rows):
            reason = f"skipped: {check.label or f'the {check.name} check'} failed"
            rows += [row for row in _skipped(check, reason)[1:] if row.name not in reported]
        results[index] = rows
        outcome.update((row.name, row) for row in rows)

    waiting = list(range(len(checks)))
    while waiting or started:
        for index in list(waiting):
            check = checks[index]
            prerequisites = (*check.needs, *check.after)
            if any(need not in outcome and producer.get(need, index) != index for need in prerequisites):
                continue  # a prerequisite is still being checked
            waiting.remove(index)
            reason = _skip_reason(check, outcome)
            if reason is not None:
                settle(index, _skipped(check, reason))
                continue
            started[index] = time.monotonic()
            name = f"relayctl-doctor-{index}"
            threading.Thread(target=work, args=(index, check), name=name, daemon=True).start()
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
                    settle(index, [_no_answer(checks[index], timeout, now - begin)])
            continue
        if started.pop(index, None) is not None:  # a check already given up on is not heard again
            settle(index, rows)
    return [row for index in range(len(checks)) for row in results.get(index, [])]


def _no_answer(check: Check, timeout: float, spent: float) -> Row:
    where = f": no answer from {check.url}" if check.url else ""
    return Row(
        check.group,
        check.name,
        FAIL,
        f"timed out after {timeout:g} s{where}",
        check.timeout_hint or "check the network path, or give doctor a longer --timeout",
        round(spent, 3),
    )


def plan_hops(repos: Sequence[RepoTarget]) -> list[str]:
    """Return the hops some repo's route uses, in route order (the default route if there is no repo)."""
    from relayd.hops import DEFAULT_ROUTE

    hops: list[str] = []
    for repo in repos:
        hops += [hop for hop in repo.route if hop not in hops]
    return hops or list(DEFAULT_ROUTE)


def _due(reader: Reader | None) -> dict[str, int]:
    """Return, by hop, the bytes of the current snapshots it has still to move."""
    if reader is None:
        return {}
    from relayd.catalogue.queries import summary

    due: dict[str, int] = {}
    for repo in summary(reader, blocked_limit=0).repos:
        for hop in repo.hops:
            due[hop.hop] = due.get(hop.hop, 0) + max(hop.bytes_total - hop.bytes_done, 0)
    return due


def planned_checks(
    config: Config, plan: Plan, classes: Mapping[str, type[Hop]], services: Services, timeout: float
) -> tuple[list[Check], list[Row]]:
    """Return the checks of every hop the plan routes (those of the services it uses first, once
    each; the staging disk's before the first hop that fills it), and a row for each hop that checks
    nothing at all."""
    from relayd.hops.records import RepoInfo
    from relayd.staging import staging_checks

    repos = [
        RepoInfo(repo.name, repo.repo_type, repo.revision, tuple(repo.route), repo.destinations)
        for repo in plan.repos
    ]
    routes = [repo.route for repo in repos] or [tuple(plan.hops)]
    due: dict[str, int] = {}
    for mover, remaining in plan.due.items():
        kind = classes[mover].produces if mover in classes else None
        if kind:
            due[kind] = due.get(kind, 0) + remaining

    def scope(hops: set[str]) -> CheckScope:
        """The scope of what the repos routed through any of *hops* need."""
        return CheckScope(
            timeout,
            services,
            config.daemon.state_dir,
            repos=tuple(repo for repo in repos if hops & set(repo.route)),
            routes=tuple(route for route in routes if hops & set(route)),
            due=due,
        )

    checks: list[Check] = []
    rows: list[Row] = []
    checked: set[str] = set()
    for name in plan.hops:
        hop = classes.get(name)
        if hop is None:
            continue  # it cannot be loaded: config_rows says so
        for service in hop.services:
            if service not in checked:
                checked.add(service)
                users = {other for other, declared in classes.items() if service in declared.services}
                checks += services.checks(service, scope(users))
        if hop.writes_staging and "staging" not in checked:
            checked.add("staging")
            checks += staging_checks(config.staging)
        try:
            own = list(hop.checks(config.section(hop.section_key()), scope({name})))
        except Exception as exc:  # noqa: BLE001 - a broken plugin is a finding here, not a crash
            rows.append(
                _failure("config", f"hop {name}", exc, "fix the hop's checks() or its config section")
            )
            continue
        if not own and not hop.services:
            rows.append(Row("config", f"hop {name}", SKIP, "the hop declares no checks (Hop.checks)"))
        checks += own
    return checks, rows


def diagnose(config: Config, load_warnings: Sequence[str], timeout: float) -> tuple[Plan, list[Row]]:
    """Run every check the config and the repos' routes call for (each hop's and each service's it
    uses; of the hops this daemon serves, daemon.hops); return the plan and the rows, grouped."""
    from relayd.hops import loadable
    from relayd.services import build_services
    from relayd.sites import serves

    plan = Plan(hops=[])
    catalogue = catalogue_checks(config, plan, timeout, datetime.now(UTC))
    # A site's daemon is checked for the hops it serves (docs/sites.md): the VM need not reach the Hub.
    plan.hops = [hop for hop in plan_hops(plan.repos) if serves(config, hop)]
    rows = config_rows(config, load_warnings, plan.hops) + catalogue
    services = build_services(config)  # no fact is published: doctor writes nothing
    try:
        checks, quiet = planned_checks(config, plan, loadable(plan.hops), services, timeout)
        rows += quiet
        rows += run_checks(checks, timeout, known=rows)
    finally:
        services.close()
    groups = [*FIRST_GROUPS, *(check.group for check in checks), *(row.group for row in rows)]
    order = {group: index for index, group in enumerate(dict.fromkeys(groups)) if group != LAST_GROUP}
    rows.sort(key=lambda row: order.get(row.group, len(groups)))
    return plan, rows


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
