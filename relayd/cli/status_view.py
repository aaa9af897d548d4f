"""How `relayctl status` shows what relayd.catalogue.queries found: text lines and the JSON document.

The JSON shape is a contract for scripts, written down in docs/status-json.md; ``FORMAT`` changes when a
field is removed or changes meaning (adding fields does not).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from relayd.catalogue.queries import (
    BLOCKED,
    DAEMON_NONE,
    DAEMON_RUNNING,
    DONE,
    INTERRUPTED,
    OPEN_STATES,
    RUNNING,
    WAITING,
    BlockedItem,
    DaemonStatus,
    FileHop,
    FileStatus,
    HopSummary,
    RepoDetail,
    RepoSummary,
    ServiceFact,
    SnapshotInfo,
    StuckItem,
    Summary,
)
from relayd.text import safe_text
from relayd.units import format_duration, format_rate, format_size

FORMAT = 1
SECRET_NAMES = frozenset({"token", "refresh_token", "access_token", "password", "secret"})
SIZE_NAMES = frozenset({"used", "free", "size"})


def iso(moment: datetime | None) -> str | None:
    """Return *moment* as the JSON documents' UTC RFC 3339 form, or None."""
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def snapshot_json(snapshot: SnapshotInfo | None) -> dict[str, Any] | None:
    """Return a snapshot as the status and whereis documents show it."""
    if snapshot is None:
        return None
    return {
        "commit": snapshot.commit,
        "state": snapshot.state,
        "files": snapshot.files,
        "bytes": snapshot.bytes,
        "seen_at": iso(snapshot.seen_at),
        "done_at": iso(snapshot.done_at),
    }


def _scrub(value: Any) -> Any:
    """Hide anything that looks like a secret in what the daemon published (defence in depth)."""
    if isinstance(value, dict):
        return {k: "***" if k in SECRET_NAMES and v else _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(item) for item in value]
    return value


# -- JSON ----------------------------------------------------------------------------------------------


def _hop_json(hop: HopSummary) -> dict[str, Any]:
    return {
        "hop": hop.hop,
        "files_done": hop.files_done,
        "files_total": hop.files_total,
        "bytes_done": hop.bytes_done,
        "bytes_total": hop.bytes_total,
        "not_reached": hop.not_reached,
        "states": dict(hop.states),
        "rate": hop.rate,
    }


def repo_json(repo: RepoSummary) -> dict[str, Any]:
    snapshot = repo.snapshot
    finish = repo.finish
    return {
        "name": repo.name,
        "type": repo.repo_type,
        "revision": repo.revision,
        "route": list(repo.route),
        "every_seconds": repo.every,
        "paused": repo.paused,
        "head_commit": repo.head_commit,
        "poll": {
            "state": repo.poll_state,
            "error": repo.poll_error,
            "hint": repo.poll_hint,
            "next_poll_at": iso(repo.next_poll_at),
        },
        "snapshot": snapshot_json(snapshot),
        "hops": [_hop_json(hop) for hop in repo.hops],
        "finish": None
        if finish is None
        else {
            "hop": finish.hop,
            "state": finish.state,
            "error": finish.error,
            "error_class": finish.error_class,
            "hint": finish.hint,
            "updated_at": iso(finish.updated_at),
        },
        "blocked": repo.blocked,
        "rate": repo.rate,
    }


def blocked_json(item: BlockedItem) -> dict[str, Any]:
    return {
        "kind": item.kind,
        "repo": item.repo,
        "hop": item.hop,
        "path": item.path,
        "error": item.error,
        "error_class": item.error_class,
        "hint": item.hint,
        "since": iso(item.since),
    }


def service_json(facts: list[ServiceFact], now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "key": fact.key,
            "value": _scrub(fact.value),
            "updated_at": iso(fact.updated_at),
            "age_seconds": None
            if fact.updated_at is None
            else round((now - fact.updated_at).total_seconds(), 3),
        }
        for fact in facts
    ]


def stuck_json(item: StuckItem, now: datetime) -> dict[str, Any]:
    return {
        "kind": item.kind,
        "repo": item.repo,
        "hop": item.hop,
        "path": item.path,
        "state": item.state,
        "error": item.error,
        "error_class": item.error_class,
        "attempts": item.attempts,
        "failing_since": iso(item.failing_since),
        "failing_seconds": None
        if item.failing_since is None
        else round((now - item.failing_since).total_seconds(), 3),
        "surfaced_at": iso(item.surfaced_at),
        "next_attempt_at": iso(item.next_attempt_at),
        "hint": item.hint,
    }


def daemon_json(daemon: DaemonStatus, now: datetime) -> dict[str, Any]:
    return {
        "state": daemon.state,
        "detail": daemon.detail,
        "hint": daemon.hint or None,
        "pid": daemon.pid,
        "version": daemon.version,
        "heartbeat_at": iso(daemon.heartbeat_at),
        "heartbeat_age_seconds": None
        if daemon.heartbeat_at is None
        else round((now - daemon.heartbeat_at).total_seconds(), 3),
    }


def summary_json(summary: Summary, now: datetime) -> dict[str, Any]:
    transfers_listed = sum(1 for item in summary.blocked if item.kind == "transfer")
    others = len(summary.blocked) - transfers_listed
    return {
        "format": FORMAT,
        "kind": "summary",
        "generated_at": iso(now),
        "daemon": daemon_json(summary.daemon, now),
        "blocked_total": summary.blocked_total,
        "blocked_truncated": others + transfers_listed < summary.blocked_total,
        "blocked": [blocked_json(item) for item in summary.blocked],
        "stuck_total": summary.stuck_total,
        "stuck_truncated": len(summary.stuck) < summary.stuck_total,
        "stuck": [stuck_json(item, now) for item in summary.stuck],
        "repos": [repo_json(repo) for repo in summary.repos],
        "service": service_json(summary.service, now),
    }


def _file_hop_json(hop: FileHop) -> dict[str, Any]:
    return {
        "hop": hop.hop,
        "state": hop.state,
        "bytes_done": hop.bytes_done,
        "bytes_total": hop.bytes_total,
        "rate": hop.rate,
        "eta_seconds": hop.eta_seconds,
        "attempts": hop.attempts,
        "next_attempt_at": None if hop.next_attempt_at is None else iso(hop.next_attempt_at),
        "error": hop.error,
        "error_class": hop.error_class,
        "hint": hop.hint,
        "skipped": hop.skipped,
    }


def _file_json(item: FileStatus) -> dict[str, Any]:
    return {
        "path": item.path,
        "size": item.size,
        "state": item.state,
        "hops": [_file_hop_json(hop) for hop in item.hops],
    }


def detail_json(detail: RepoDetail, now: datetime) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "kind": "repo",
        "generated_at": iso(now),
        "daemon": daemon_json(detail.daemon, now),
        "repo": repo_json(detail.repo),
        "blocked": [blocked_json(item) for item in detail.blocked],
        "stuck": [stuck_json(item, now) for item in detail.stuck],
        "files": [_file_json(item) for item in detail.files],
        "service": service_json(detail.service, now),
    }


# -- text ----------------------------------------------------------------------------------------------


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = (now - moment).total_seconds()
    return f"in {format_duration(-seconds)}" if seconds < 0 else f"{format_duration(seconds)} ago"


def _states_text(states: dict[str, int]) -> str:
    return ", ".join(f"{states[state]} {state}" for state in (*OPEN_STATES, INTERRUPTED) if states.get(state))


def _hop_cell(hop: HopSummary) -> str:
    if hop.files_total == 0:
        return f"{hop.hop} -"
    text = (
        f"{hop.hop} {hop.files_done}/{hop.files_total} "
        f"{format_size(hop.bytes_done)}/{format_size(hop.bytes_total)}"
    )
    states = _states_text(hop.states)
    return f"{text} ({states})" if states else text


def _poll_text(repo: RepoSummary) -> str:
    text = f"poll {repo.poll_state}"
    return f"{text}: {safe_text(repo.poll_error)}" if repo.poll_error else text


def _item_text(item: BlockedItem | StuckItem) -> str:
    """Return where a blocked or stuck item is and its last error, e.g. ``org/x  download  a.bin: …``."""
    if item.kind == "poll":
        where = f"{item.repo}  poll"
    elif item.kind == "snapshot":
        where = f"{item.repo}  {item.hop} (whole snapshot)"
    else:
        where = f"{item.repo}  {item.hop}  {item.path}"
    error_class = f" [{item.error_class}]" if item.error_class else ""
    return f"{where}: {safe_text(item.error or 'no reason recorded')}{error_class}"


def _blocked_lines(items: list[BlockedItem], now: datetime) -> list[str]:
    lines = []
    for item in items:
        since = f" (since {_ago(item.since, now)})" if item.since else ""
        lines.append(f"  {_item_text(item)}{since}")
        if item.hint:
            lines.append(f"      hint: {safe_text(item.hint)}")
    return lines


def _value_text(key: str, value: Any) -> str:
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (key in SIZE_NAMES or key.endswith("bytes"))
    ):
        return format_size(value)
    if isinstance(value, dict | list):
        import json

        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def service_lines(facts: list[ServiceFact], now: datetime) -> list[str]:
    """Return the daemon's published facts, one per line: key, value summary, age."""
    lines = ["SERVICE"]
    if not any(fact.key == "daemon" for fact in facts):
        lines.append("  daemon  no heartbeat published (is relayd running on this catalogue?)")
    width = max((len(fact.key) for fact in facts), default=0)
    for fact in facts:
        value = ", ".join(f"{k}={_value_text(k, v)}" for k, v in _scrub(fact.value).items())
        if len(value) > 160:
            value = value[:159] + "…"
        lines.append(f"  {fact.key.ljust(width)}  {value}  ({_ago(fact.updated_at, now)})")
    return lines


def _repo_line(repo: RepoSummary) -> str:
    snapshot = repo.snapshot
    parts = [
        repo.name,
        f"{repo.repo_type}@{repo.revision}",
        (repo.head_commit or "-")[:12],
        f"{snapshot.files} files {format_size(snapshot.bytes)}" if snapshot else "no snapshot yet",
        " · ".join(_hop_cell(hop) for hop in repo.hops),
    ]
    if repo.finish is not None and repo.finish.state != DONE:
        parts.append(f"finish {repo.finish.state}")
    if repo.rate:
        parts.append(format_rate(repo.rate))
    parts.append(_poll_text(repo))
    if repo.paused:
        parts.append("PAUSED")
    return "  ".join(parts)


def daemon_lines(daemon: DaemonStatus) -> list[str]:
    """Return a heading that says the daemon is not running, with what to do (none while it runs)."""
    if daemon.state == DAEMON_RUNNING:
        return []
    heading = "NOT RUNNING" if daemon.state == DAEMON_NONE else daemon.state.upper()
    lines = [f"DAEMON {heading}: {daemon.detail}"]
    lines.append("  nothing moves until it runs; transfers it left running show as interrupted")
    if daemon.hint:
        lines.append(f"      hint: {daemon.hint}")
    return [*lines, ""]


def stuck_lines(items: list[StuckItem], total: int, now: datetime) -> list[str]:
    """Return what keeps failing for longer than retry.surface_after while relayd retries it: each item
    with its last error, attempts, how long and what to check (none when nothing is stuck)."""
    if not total:
        return []
    more = f", showing {len(items)}" if len(items) < total else ""
    lines = [f"STUCK {total}{more} (failing for longer than retry.surface_after; still retrying)"]
    for item in items:
        lines.append(f"  {_item_text(item)}")
        since = _ago(item.failing_since, now).removesuffix(" ago")
        retry = f", next try {_ago(item.next_attempt_at, now)}" if item.next_attempt_at else ""
        state = f", {item.state}" if item.state != WAITING else ""
        lines.append(f"      {item.attempts} attempt(s), failing for {since}{retry}{state}")
        lines.append(f"      check: {safe_text(item.hint)}")
    if len(items) < total:
        lines.append("  … see `relayctl status REPO` for the rest")
    return [*lines, ""]


def summary_lines(summary: Summary, now: datetime) -> list[str]:
    """Return the text view of every repo: the daemon if it is not running, blocked and stuck items first,
    then one line per repo, then what the daemon publishes."""
    lines: list[str] = daemon_lines(summary.daemon)
    if summary.blocked_total:
        shown = len(summary.blocked)
        more = f", showing {shown}" if shown < summary.blocked_total else ""
        lines.append(f"BLOCKED {summary.blocked_total}{more}")
        lines += _blocked_lines(summary.blocked, now)
        if shown < summary.blocked_total:
            lines.append("  … see `relayctl status REPO` for the rest")
        lines.append("")
    lines += stuck_lines(summary.stuck, summary.stuck_total, now)
    lines.append(f"REPOS {len(summary.repos)}")
    if not summary.repos:
        lines.append("  none (add one with `relayctl add OWNER/NAME`)")
    lines += [f"  {_repo_line(repo)}" for repo in summary.repos]
    lines.append("")
    lines += service_lines(summary.service, now)
    return lines


def _file_hop_text(step: FileHop) -> str:
    if step.state is None:
        return "-"
    if step.state == DONE:
        return "done (already there)" if step.skipped else DONE
    text = step.state
    if step.bytes_done:
        text += f" {format_size(step.bytes_done)}/{format_size(step.bytes_total)}"
    if step.state == RUNNING and step.rate:
        text += f" {format_rate(step.rate)}"
        if step.eta_seconds is not None:
            text += f" ETA {format_duration(step.eta_seconds)}"
    if step.state == INTERRUPTED:
        text += " (daemon not running)"
    return text


def detail_lines(detail: RepoDetail, now: datetime) -> list[str]:
    """Return the text view of one repo: its summary, what blocks it, then every file, blocked first."""
    repo = detail.repo
    snapshot = repo.snapshot
    lines = [
        *daemon_lines(detail.daemon),
        f"{repo.name}  {repo.repo_type}@{repo.revision}  head {(repo.head_commit or '-')[:12]}"
        + ("  PAUSED" if repo.paused else ""),
        f"  {_poll_text(repo)}; every {format_duration(repo.every)}; "
        f"next poll {_ago(repo.next_poll_at, now)}",
    ]
    if repo.poll_hint:
        lines.append(f"      hint: {safe_text(repo.poll_hint)}")
    if snapshot is None:
        lines.append("  no snapshot yet")
    else:
        lines.append(
            f"  snapshot {snapshot.commit[:12]} ({snapshot.state}, seen {_ago(snapshot.seen_at, now)}): "
            f"{snapshot.files} files, {format_size(snapshot.bytes)}"
        )
    width = max((len(hop.hop) for hop in repo.hops), default=0)
    for hop in repo.hops:
        states = _states_text(hop.states)
        rate = f"  {format_rate(hop.rate)}" if hop.rate else ""
        lines.append(
            f"  {hop.hop.ljust(width)}  {hop.files_done}/{hop.files_total} files  "
            f"{format_size(hop.bytes_done)}/{format_size(hop.bytes_total)}"
            + (f"  {states}" if states else "")
            + rate
        )
    if repo.finish is not None:
        lines.append(f"  finish ({repo.finish.hop}, whole snapshot): {repo.finish.state}")
    others = [item for item in detail.blocked if item.kind != "transfer"]
    blocked_files = sum(1 for item in detail.files if item.state == BLOCKED)
    if others or blocked_files:
        lines.append("")
        lines.append(f"BLOCKED {len(others) + blocked_files}")
        lines += _blocked_lines(others, now)
        if blocked_files:
            lines.append(f"  {blocked_files} file(s), listed first below")
    lines.append("")
    lines += stuck_lines(detail.stuck, len(detail.stuck), now)
    lines.append(f"FILES {len(detail.files)}")
    for item in detail.files:
        cells = " · ".join(f"{step.hop} {_file_hop_text(step)}" for step in item.hops)
        lines.append(f"  {item.path}  {format_size(item.size)}  {cells}")
        for step in item.hops:
            if step.error and step.state in OPEN_STATES:
                error_class = f" [{step.error_class}]" if step.error_class else ""
                retry = ""
                if step.state == WAITING and step.next_attempt_at:
                    retry = f", retry {_ago(step.next_attempt_at, now)}"
                lines.append(
                    f"      {step.hop}: {safe_text(step.error)}{error_class} (attempt {step.attempts}{retry})"
                )
                if step.hint:
                    lines.append(f"      hint: {safe_text(step.hint)}")
    lines.append("")
    lines += service_lines(detail.service, now)
    return lines
