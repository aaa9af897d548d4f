"""Where each file of a repo has verified copies, behind `relayctl whereis`: the location log.

For the files of the current snapshot (or every file the repo ever had, or one path), each hop's
transfer with its handles once done (they name the verified copy), the Hub commit each file is pinned
to, and the newest finished snapshot-level transfer (e.g. the commit naming all files) that holds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from relayd.catalogue.queries.reader import Reader, as_utc, from_json, in_list
from relayd.catalogue.queries.status import RepoSummary, SnapshotInfo, repo_rows, summarise
from relayd.catalogue.states import DONE


class TransferRecord(NamedTuple):
    """One file's transfer on one hop; ``handles`` only once it is done (they name the verified copy;
    an unfinished transfer's handles are work in progress such as upload ids, and are not returned)."""

    hop: str
    state: str
    handles: dict[str, Any] | None
    attempts: int
    error: str | None
    error_class: str | None
    hint: str | None
    next_attempt_at: datetime | None
    finished_at: datetime | None


class SnapshotTransfer(NamedTuple):
    """A transfer that finishes a whole snapshot (e.g. lfs_push's commit), with its handles when done."""

    snapshot_id: int
    commit: str
    hop: str
    state: str
    handles: dict[str, Any] | None
    error: str | None
    error_class: str | None
    hint: str | None
    updated_at: datetime | None


class FileLocations(NamedTuple):
    """Where one file (a path with one content) has verified copies."""

    path: str
    size: int
    sha256: str | None
    sha1: str | None
    staged_path: str | None
    commit: str  # the newest snapshot that lists the file: the Hub commit it is pinned to
    current: bool  # listed in the repo's current snapshot
    transfers: dict[str, TransferRecord]  # by hop
    pushed: SnapshotTransfer | None  # the newest done snapshot-level transfer of a snapshot listing it


class WhereIs(NamedTuple):
    repo: RepoSummary
    snapshot: SnapshotInfo | None
    finish: SnapshotTransfer | None  # the current snapshot's finishing transfer, if it has one yet
    files: list[FileLocations]


def _snapshot_level(reader: Reader, repo_id: int, commits: Mapping[int, str]) -> list[SnapshotTransfer]:
    """Return the repo's snapshot-level transfers, newest snapshot first (see status.snapshot_transfers for
    why the filter on the repo is applied here)."""
    rows = reader.rows(
        "SELECT repo_id, snapshot_id, hop, state, handles, last_error, error_class, hint, updated_at "
        "FROM transfers WHERE snapshot_id > 0"
    )
    found = [
        SnapshotTransfer(
            snapshot_id=int(row[1]),
            commit=commits.get(int(row[1]), ""),
            hop=str(row[2]),
            state=str(row[3]),
            handles=(from_json(row[4]) or {}) if row[3] == DONE else None,
            error=row[5],
            error_class=row[6],
            hint=row[7],
            updated_at=as_utc(row[8]),
        )
        for row in rows
        if row[0] == repo_id
    ]
    found.sort(key=lambda item: item.snapshot_id, reverse=True)
    return found


def whereis(
    reader: Reader, name: str, *, path: str | None = None, all_snapshots: bool = False
) -> WhereIs | None:
    """Return where each file of the repo *name* has verified copies: the files of its current snapshot
    (every file the repo ever had with *all_snapshots*), only those at *path* when given, by path.

    Return None if there is no such repo. Reads the transfers of the chosen files only, all from one
    snapshot of the catalogue.
    """
    with reader.consistent():
        return _whereis(reader, name, path, all_snapshots)


def _whereis(reader: Reader, name: str, path: str | None, all_snapshots: bool) -> WhereIs | None:
    rows = repo_rows(reader, name)
    if not rows:
        return None
    repo_id = int(rows[0][0])
    repos, _ = summarise(reader, rows, repo_id)
    repo = repos[0]
    snapshot = repo.snapshot
    commits = {
        int(row[0]): str(row[1])
        for row in reader.rows('SELECT id, "commit" FROM snapshots WHERE repo_id = :r', {"r": repo_id})
    }
    finishers = _snapshot_level(reader, repo_id, commits)
    finish = next((item for item in finishers if snapshot and item.snapshot_id == snapshot.id), None)

    columns = "f.id, f.path, f.size, COALESCE(f.sha256, b.sha256), COALESCE(f.sha1, b.sha1), b.staged_path"
    where_path = " AND f.path = :path" if path is not None else ""
    params: dict[str, Any] = {"r": repo_id, "path": path}
    if all_snapshots:
        file_rows = reader.rows(
            f"SELECT {columns} FROM files f JOIN blobs b ON b.id = f.blob_id "  # noqa: S608
            f"WHERE f.repo_id = :r{where_path}",
            params,
        )
    elif snapshot is not None:
        params["s"] = snapshot.id
        file_rows = reader.rows(
            f"SELECT {columns} FROM snapshot_files sf JOIN files f ON f.id = sf.file_id "  # noqa: S608
            f"JOIN blobs b ON b.id = f.blob_id WHERE sf.snapshot_id = :s{where_path}",
            params,
        )
    else:
        file_rows = []
    if not file_rows:
        return WhereIs(repo, snapshot, finish, [])
    file_ids = [int(row[0]) for row in file_rows]

    # Which snapshots list each file: the newest is its pin; the current one makes it current.
    newest: dict[int, int] = {}
    current: set[int] = set()
    if all_snapshots:
        for file_id, snapshot_id in reader.rows(
            "SELECT sf.file_id, MAX(sf.snapshot_id) FROM snapshot_files sf "
            "JOIN snapshots s ON s.id = sf.snapshot_id WHERE s.repo_id = :r GROUP BY sf.file_id",
            {"r": repo_id},
        ):
            newest[int(file_id)] = int(snapshot_id)
        if snapshot is not None:
            current = {
                int(row[0])
                for row in reader.rows(
                    "SELECT file_id FROM snapshot_files WHERE snapshot_id = :s", {"s": snapshot.id}
                )
            }
    else:
        assert snapshot is not None  # noqa: S101 - files were found in it
        newest = dict.fromkeys(file_ids, snapshot.id)
        current = set(file_ids)

    # The transfers of those files (one short IN list for a single path, else the snapshot's or repo's).
    columns = (
        "t.file_id, t.hop, t.state, t.handles, t.attempts, t.last_error, t.error_class, t.hint, "
        "t.next_attempt_at, t.finished_at"
    )
    if path is not None:
        id_list, id_params = in_list("f", file_ids)
        transfer_rows = reader.rows(
            f"SELECT {columns} FROM transfers t WHERE t.file_id IN ({id_list})",  # noqa: S608
            id_params,
        )
    elif all_snapshots:
        transfer_rows = reader.rows(
            f"SELECT {columns} FROM transfers t WHERE t.repo_id = :r AND t.file_id IS NOT NULL",  # noqa: S608
            {"r": repo_id},
        )
    else:
        transfer_rows = reader.rows(
            f"SELECT {columns} FROM snapshot_files sf JOIN transfers t ON t.file_id = sf.file_id "  # noqa: S608
            "WHERE sf.snapshot_id = :s",
            {"s": params["s"]},
        )
    transfers: dict[int, dict[str, TransferRecord]] = {}
    for row in transfer_rows:
        state = str(row[2])
        transfers.setdefault(int(row[0]), {})[str(row[1])] = TransferRecord(
            hop=str(row[1]),
            state=state,
            handles=(from_json(row[3]) or {}) if state == DONE else None,
            attempts=int(row[4] or 0),
            error=row[5],
            error_class=row[6],
            hint=row[7],
            next_attempt_at=as_utc(row[8]),
            finished_at=as_utc(row[9]),
        )

    # The newest finished snapshot commit holding each file: look through the done snapshot-level
    # transfers newest first, reading each one's members, until every file has one.
    pushed: dict[int, SnapshotTransfer] = {}
    wanted = set(file_ids)
    for item in finishers:
        if not wanted:
            break
        if item.state != DONE:
            continue
        members = reader.rows(
            "SELECT file_id FROM snapshot_files WHERE snapshot_id = :s", {"s": item.snapshot_id}
        )
        for (file_id,) in members:
            if int(file_id) in wanted:
                pushed[int(file_id)] = item
                wanted.discard(int(file_id))

    ordered: list[tuple[tuple[str, bool, int], FileLocations]] = []
    for row in file_rows:
        file_id = int(row[0])
        location = FileLocations(
            path=str(row[1]),
            size=int(row[2]),
            sha256=row[3],
            sha1=row[4],
            staged_path=row[5],
            commit=commits.get(newest.get(file_id, -1), ""),
            current=file_id in current,
            transfers=transfers.get(file_id, {}),
            pushed=pushed.get(file_id),
        )
        # By path; for one path, the current content first, then newer before older.
        ordered.append(((location.path, not location.current, -newest.get(file_id, 0)), location))
    ordered.sort(key=lambda pair: pair[0])
    return WhereIs(repo, snapshot, finish, [location for _, location in ordered])
