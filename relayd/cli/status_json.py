"""The JSON document of `relayctl status --json` (and of the web API), from what relayd.catalogue.queries
found.

The JSON shape is a contract for scripts, written down in docs/status-json.md; ``FORMAT`` changes when a
field is removed or changes meaning (adding fields does not).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from relayd.catalogue.queries import (
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


def scrub(value: Any) -> Any:
    """Hide anything that looks like a secret in what the daemon published (defence in depth)."""
    if isinstance(value, dict):
        return {k: "***" if k in SECRET_NAMES and v else scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(item) for item in value]
    return value


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
            "value": scrub(fact.value),
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
        "unserved": [{"hop": item.hop, "hint": item.hint} for item in summary.unserved],
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
        "skipped_reason": hop.skipped_reason,
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
        "bytes_avoided": {
            "snapshot": [item._asdict() for item in detail.avoided.snapshot],
            "total": [item._asdict() for item in detail.avoided.total],
        },
    }
