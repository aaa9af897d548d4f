"""`relayctl whereis`: where each file's verified copies are, read from the catalogue's location log.

Every done transfer records handles naming the verified copy it made (download: the staged path and
the commit fetched; pan_upload: the drive file id and path; vm_pull: the path on the VM; lfs_push: the
LFS object or git blob, and per snapshot the pushed commit). This command lays them out per file, with
the state of every hop that is not done; which hop's handles name the drive, the VM or the ModelScope
copy is what each hop declares it produces (``Hop.produces``). Like `relayctl status` it reads the
catalogue with the standard library alone (for SQLite); of the hops it loads only their classes'
declarations. The JSON shape is documented in docs/whereis-json.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from relayd.cli.app import App, complete_repo, echo_json, json_option, pass_app
from relayd.cli.status_json import iso, snapshot_json
from relayd.errors import UsageError
from relayd.text import public_url

if TYPE_CHECKING:
    from relayd.catalogue.queries import FileLocations, SnapshotTransfer, TransferRecord, WhereIs

FORMAT = 1
#: The kinds of location (``Hop.produces``) the document names: the staged copy, the drive's, the VM's
#: and the pushed one.
STAGING, DRIVE, VM, PUSHED = "staging", "drive", "vm", "modelscope"
SECRET_NAMES = frozenset({"token", "refresh_token", "access_token", "password", "secret", "url"})


def scrub(value: Any) -> Any:
    """Return handles with anything secret hidden: values under secret-looking keys (signed download
    URLs included) become ``"***"``, credentials inside URLs are dropped."""
    if isinstance(value, dict):
        return {k: "***" if k in SECRET_NAMES and v else scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(item) for item in value]
    if isinstance(value, str):
        return public_url(value)
    return value


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


# -- the document --------------------------------------------------------------------------------------


def _overall(route: list[str], transfers: dict[str, TransferRecord]) -> str:
    """The file's state: that of the first hop not done ("pending" if it has no transfer), else done."""
    for hop in route:
        record = transfers.get(hop)
        if record is None:
            return "pending"
        if record.state != "done":
            return record.state
    return "done"


def _staged(item: FileLocations, staging_dir: Path) -> dict[str, Any] | None:
    if not item.staged_path:
        return None
    return {"path": item.staged_path, "file": str(staging_dir / item.staged_path)}


def _location(item: FileLocations, hop: str) -> dict[str, Any] | None:
    record = item.transfers.get(hop)
    if record is None or record.handles is None:
        return None
    located: dict[str, Any] = scrub(record.handles)
    return located


def produced_kinds(route: list[str]) -> dict[str, str]:
    """Return the kind of location each hop of *route* leaves its copy in (``Hop.produces``), for the
    hops that are installed here and declare one."""
    from relayd.hops import loadable

    return {name: hop.produces for name, hop in loadable(route).items() if hop.produces}


def _producer(kinds: dict[str, str], kind: str) -> str | None:
    return next((hop for hop, produced in kinds.items() if produced == kind), None)


def _by_kind(item: FileLocations, kinds: dict[str, str], kind: str) -> dict[str, Any] | None:
    hop = _producer(kinds, kind)
    return None if hop is None else _location(item, hop)


def _drive(item: FileLocations, kinds: dict[str, str]) -> dict[str, Any] | None:
    handles = _by_kind(item, kinds, DRIVE)
    if handles is None or not handles.get("file_id"):
        return None
    return {
        "file_id": str(handles["file_id"]),
        "drive_id": _text(handles.get("drive_id")),
        "path": _text(handles.get("path")),
        "content_hash": _text(handles.get("content_hash")),
    }


def _vm(item: FileLocations, kinds: dict[str, str]) -> dict[str, Any] | None:
    handles = _by_kind(item, kinds, VM)
    if handles is None or not handles.get("path"):
        return None
    return {
        "path": str(handles["path"]),
        "executor": _text(handles.get("executor")),
        "host": _text(handles.get("host")),
    }


def _pushed(item: FileLocations, kinds: dict[str, str]) -> dict[str, Any] | None:
    handles = _by_kind(item, kinds, PUSHED)
    if handles is None:
        return None
    commit = item.pushed.handles if item.pushed is not None and item.pushed.handles else {}
    return {
        "commit": _text(commit.get("commit")),
        "branch": _text(commit.get("branch")),
        "remote": None if not commit.get("remote") else public_url(str(commit["remote"])),
        "oid": _text(handles.get("oid")),
        "blob": _text(handles.get("blob")),
    }


def _hop_json(item: FileLocations, hop: str) -> dict[str, Any]:
    record = item.transfers.get(hop)
    if record is None:
        return {
            "hop": hop,
            "state": None,
            "location": None,
            "finished_at": None,
            "attempts": 0,
            "error": None,
            "error_class": None,
            "hint": None,
        }
    return {
        "hop": hop,
        "state": record.state,
        "location": _location(item, hop),
        "finished_at": iso(record.finished_at),
        "attempts": record.attempts,
        "error": record.error,
        "error_class": record.error_class,
        "hint": record.hint,
    }


def _file_json(
    item: FileLocations, route: list[str], kinds: dict[str, str], staging_dir: Path
) -> dict[str, Any]:
    return {
        "path": item.path,
        "size": item.size,
        "sha256": item.sha256,
        "sha1": item.sha1,
        "commit": item.commit,
        "current": item.current,
        "state": _overall(route, item.transfers),
        "staged": _staged(item, staging_dir),
        "drive": _drive(item, kinds),
        "vm": _vm(item, kinds),
        "pushed": _pushed(item, kinds),
        "hops": [_hop_json(item, hop) for hop in route],
    }


def _finish_json(finish: SnapshotTransfer | None) -> dict[str, Any] | None:
    if finish is None:
        return None
    handles = finish.handles or {}
    return {
        "hop": finish.hop,
        "state": finish.state,
        "commit": _text(handles.get("commit")),
        "branch": _text(handles.get("branch")),
        "remote": None if not handles.get("remote") else public_url(str(handles["remote"])),
        "error": finish.error,
        "error_class": finish.error_class,
        "hint": finish.hint,
        "updated_at": iso(finish.updated_at),
    }


def whereis_json(
    found: WhereIs, *, path: str | None, all_snapshots: bool, staging_dir: Path, now: datetime
) -> dict[str, Any]:
    """Return the documented whereis document (docs/whereis-json.md)."""
    repo, snapshot = found.repo, found.snapshot
    route = list(repo.route)
    kinds = produced_kinds(route)
    return {
        "format": FORMAT,
        "kind": "whereis",
        "generated_at": iso(now),
        "all_snapshots": all_snapshots,
        "path": path,
        "repo": {
            "name": repo.name,
            "type": repo.repo_type,
            "revision": repo.revision,
            "route": list(repo.route),
            "head_commit": repo.head_commit,
        },
        "snapshot": snapshot_json(snapshot),
        "finish": _finish_json(found.finish),
        "files": [_file_json(item, route, kinds, staging_dir) for item in found.files],
    }


# -- text ----------------------------------------------------------------------------------------------


def _problem_lines(record: TransferRecord, now: datetime) -> list[str]:
    from relayd.text import safe_text
    from relayd.units import format_duration

    text = record.state
    if record.error:
        text += f": {safe_text(record.error)}"
        if record.error_class:
            text += f" [{record.error_class}]"
    extras = []
    if record.attempts:
        extras.append(f"attempt {record.attempts}")
    if record.state == "waiting" and record.next_attempt_at is not None:
        seconds = (record.next_attempt_at - now).total_seconds()
        extras.append(f"retry in {format_duration(max(seconds, 0.0))}")
    if extras:
        text += f" ({', '.join(extras)})"
    lines = [text]
    if record.hint:
        lines.append(f"hint: {safe_text(record.hint)}")
    return lines


def _done_text(document: dict[str, Any], hop: dict[str, Any], kind: str | None) -> str:
    """Say where a done hop's verified copy (of *kind*, as the hop declares it) is, in words."""
    handles = hop["location"] or {}
    if handles.get("asked_end"):  # "ask the end first": relayd.catalogue.rules.ASKED_END
        return "skipped: the destination had it when the snapshot was recorded (nothing moved)"
    if kind == STAGING:
        staged = document["staged"]
        where = f"staged at {staged['file']}" if staged else "verified; no longer staged (released)"
        fetched = handles.get("commit")
        return f"{where} (fetched at {fetched})" if fetched and fetched != document["commit"] else where
    if kind == DRIVE and document["drive"]:
        drive = document["drive"]
        return f"drive file {drive['file_id']} at {drive['path'] or '?'}"
    if kind == VM and document["vm"]:
        vm = document["vm"]
        return f"{vm['path']} on the {vm['executor'] or '?'} VM {vm['host'] or '?'}"
    if kind == PUSHED and document["pushed"]:
        pushed = document["pushed"]
        what = f"object {pushed['oid']}" if pushed["oid"] else f"blob {pushed['blob']}"
        if pushed["commit"]:
            return f"in commit {pushed['commit']} on {pushed['branch']} ({what})"
        return f"{what} uploaded; not in a pushed commit yet"
    shown = {k: v for k, v in handles.items() if not isinstance(v, dict | list)}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "done"


def _finish_line(finish: dict[str, Any] | None, route: list[str]) -> list[str]:
    if finish is None:
        return []
    if finish["state"] == "done":
        return [f"PUSHED {finish['commit']} on {finish['branch']} of {finish['remote']}"]
    lines = [f"PUSHED not yet: {finish['hop']} (whole snapshot) {finish['state']}"]
    if finish["error"]:
        lines[0] += f": {finish['error']}"
    if finish["hint"]:
        lines.append(f"  hint: {finish['hint']}")
    return lines


def whereis_lines(document: dict[str, Any], found: WhereIs, now: datetime) -> list[str]:
    """Return the text view: the repo and snapshot, then per file one line per place."""
    from relayd.units import format_size

    repo = document["repo"]
    route = list(repo["route"])
    kinds = produced_kinds(route)
    lines = [f"REPO {repo['name']} ({repo['type']}@{repo['revision']})  route: {' → '.join(route)}"]
    snapshot = document["snapshot"]
    if snapshot is None:
        lines.append("SNAPSHOT none yet (the repo has not been polled)")
    else:
        lines.append(
            f"SNAPSHOT {snapshot['commit']} ({snapshot['state']}, {snapshot['files']} files, "
            f"{format_size(snapshot['bytes'])})"
        )
    lines += _finish_line(document["finish"], route)
    for entry, item in zip(document["files"], found.files, strict=True):
        lines.append("")
        note = "" if entry["current"] else "  (not in the current snapshot)"
        lines.append(f"{entry['path']}  {format_size(entry['size'])}  {entry['state']}{note}")
        width = max([len("hub"), *(len(hop) for hop in route)])
        lines.append(f"  {'hub'.ljust(width)}  commit {entry['commit']}")
        for hop in entry["hops"]:
            label = f"  {hop['hop'].ljust(width)}  "
            if hop["state"] is None:
                lines.append(f"{label}not reached")
            elif hop["state"] == "done":
                lines.append(f"{label}{_done_text(entry, hop, kinds.get(hop['hop']))}")
            else:
                problem = _problem_lines(item.transfers[hop["hop"]], now)
                lines.append(f"{label}{problem[0]}")
                lines += [f"{' ' * len(label)}{line}" for line in problem[1:]]
    if not document["files"]:
        lines.append("")
        lines.append("no files")
    return lines


@click.command("whereis")
@click.argument("repo", shell_complete=complete_repo)
@click.argument("path", required=False)
@click.option(
    "--all-snapshots",
    is_flag=True,
    help="Every file the repo ever had (older contents too), not only its current snapshot's.",
)
@json_option
@pass_app
def whereis(app: App, repo: str, path: str | None, all_snapshots: bool, as_json: bool) -> None:
    """Show where each file of REPO has verified copies (or only PATH).

    Per file: the Hub commit it is pinned to, the staged copy, the drive file id and path, the path on
    the VM, the pushed commit, and the state of every hop that is not done. --json writes the
    documented document (docs/whereis-json.md). Exit status 2 for an unknown repo or path.
    """
    from relayd.catalogue import queries

    reader = app.reader()
    found = queries.whereis(reader, repo, path=path, all_snapshots=all_snapshots)
    if found is None:
        raise UsageError(f"no repo named {repo!r} (see `relayctl list`)")
    if path is not None and not found.files:
        if all_snapshots:
            raise UsageError(f"{repo} never had a file {path!r}")
        if found.snapshot is None:
            raise UsageError(f"{repo} has no snapshot yet, so no file {path!r}")
        raise UsageError(
            f"{repo} has no file {path!r} in its current snapshot {found.snapshot.commit[:12]} "
            "(--all-snapshots looks in older ones too)"
        )
    now = datetime.now(UTC)
    document = whereis_json(
        found, path=path, all_snapshots=all_snapshots, staging_dir=app.config.staging.dir, now=now
    )
    if as_json:
        echo_json(document)
        return
    click.echo("\n".join(whereis_lines(document, found, now)))
