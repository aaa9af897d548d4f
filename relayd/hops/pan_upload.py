"""pan_upload: the staged copy → the drive, rapid upload first, multipart that resumes, verified.

The hop only speaks the ``Drive`` interface (``relayd.drive.base``); the daemon's shared drive comes
from ``ctx.services.get("drive")``. Pieces are the drive's multipart parts. The upload's resumable
state (upload id, file id, part size) is saved in the transfer's handles before the first byte is
sent, each part the drive acknowledges is recorded as a done piece, and after a crash, kill -9 or a
failure the drive's own list of received parts decides where to continue.

Destination: the repo's ``drive_folder`` destination, else ``<drive.root>/<owner>/<name>`` (datasets
under ``<drive.root>/datasets/<owner>/<name>``), plus the file's own sub-path. A file already there
with the same size and content hash is adopted without an upload; one with different content is
handled by ``drive.on_conflict`` (docs/drive.md): ``replace`` moves it to the recycle bin,
``keep_both`` renames it aside, ``block`` waits for a person. It is never left stale silently.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

from relayd.config import DriveConfig
from relayd.drive import (
    ContentMismatch,
    Drive,
    DriveFile,
    LocalFile,
    NameTaken,
    UploadCallbacks,
    UploadGone,
    make_drive,
)
from relayd.drive.hashing import content_hash
from relayd.errors import (
    ConfigError,
    ErrorClass,
    IntegrityMismatch,
    NeedsPerson,
    Permanent,
    RelayError,
    Retryable,
)
from relayd.hops.base import Hop, HopContext, Job, Outcome, PieceSpec, plan_ranges

log = logging.getLogger(__name__)

#: How often one move() resolves a name conflict that keeps coming back before giving up for now.
CONFLICT_ROUNDS = 3
#: Outcome handle keys (vm_pull reads ``job.locations["pan_upload"]["file_id"]``).
HANDLE_KEYS = ("file_id", "drive_id", "path", "content_hash", "rapid")


def aside_name(name: str, existing: DriveFile) -> str:
    """Return the name a stale file is renamed to under ``keep_both``: ``<stem>.relayd-old-<hash8>.<ext>``."""
    tag = "relayd-old-" + (existing.content_hash or "unknown")[:8].lower()
    if "." in name[1:]:
        stem, ext = name.rsplit(".", 1)
        return f"{stem}.{tag}.{ext}"
    return f"{name}.{tag}"


class PanUploadHop(Hop):
    """Upload each staged file to the drive (rapid upload when the drive knows the content)."""

    name = "pan_upload"
    config_section = "drive"
    short_name = "up"
    reads_staging = True
    consumes = frozenset({"staging"})
    produces = "drive"
    services = ("drive",)
    section: DriveConfig

    def __init__(self, section: DriveConfig, ctx: HopContext) -> None:
        super().__init__(section, ctx)
        self._own_drive: Drive | None = None
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Build the shared drive now, at daemon start (or when a route first needs it), rather than
        in a worker thread in the middle of a transfer: the web backend's aligo import takes a moment."""
        try:
            self.drive()
        except (RelayError, ImportError) as exc:
            log.warning("the drive is not ready yet: %s", exc)

    # -- where things are -------------------------------------------------------------------------

    def drive(self) -> Drive:
        """Return the daemon's shared drive (``ctx.services``), or this hop's own if none is registered."""
        try:
            shared: Drive = self.ctx.services.get("drive")
            return shared
        except KeyError:
            pass
        except ConfigError as exc:
            raise Permanent(str(exc), hint="fix the [drive] section of the config") from None
        with self._lock:
            if self._own_drive is None:
                self._own_drive = make_drive(self.section, self.ctx.state_dir, self.ctx.store)
            return self._own_drive

    def destination(self, job: Job) -> tuple[str, str]:
        """Return the drive folder and the file name for this job's file. Raise Permanent for a
        path relayd must not create."""
        file = job.file_or_fail
        configured = job.repo.destinations.get("drive_folder")
        if configured:
            base = str(configured)
            if not base.startswith("/"):
                base = f"{self.section.root.rstrip('/')}/{base}"
        else:
            kind = "" if job.repo.repo_type == "model" else f"/{job.repo.repo_type}s"
            base = f"{self.section.root.rstrip('/')}{kind}/{job.repo.name}"
        names = [*base.split("/"), *PurePosixPath(file.path).parts]
        names = [name for name in names if name]
        if not names or any(name in (".", "..") or "\\" in name for name in names):
            raise Permanent(
                f"refusing the drive path {base}/{file.path}", hint="fix the repo's drive_folder destination"
            )
        return "/" + "/".join(names[:-1]), names[-1]

    def _staged(self, job: Job) -> Path:
        """Return the staged copy. Raise NeedsPerson when it is missing or has the wrong size."""
        file = job.file_or_fail
        if not file.staged_path:
            raise NeedsPerson(
                f"{file.path} has no staged copy to upload",
                hint="pan_upload reads what the download hop staged; put download before it in the route",
                error_class=ErrorClass.STAGING,
            )
        path = self.ctx.staging.resolve(file.staged_path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise NeedsPerson(
                f"the staged copy {path} is gone",
                hint="check the staging disk; the file must be downloaded again",
                error_class=ErrorClass.STAGING,
            ) from None
        if size != file.size:
            raise NeedsPerson(
                f"the staged copy {path} has {size} bytes, expected {file.size}",
                hint="check the staging disk; the file must be downloaded again",
                error_class=ErrorClass.INTEGRITY,
            )
        return path

    def _sha1(self, job: Job, path: Path) -> str:
        """Return the file's SHA-1 (recorded while downloading); compute it once if it is missing."""
        known = job.file_or_fail.sha1 or job.handles.get("sha1")
        if known:
            return str(known).lower()
        job.log.info("no sha1 recorded for this file; computing it from the staged copy")
        sha1 = content_hash(path).lower()
        job.handles["sha1"] = sha1
        job.save_handles()
        return sha1

    # -- the contract ---------------------------------------------------------------------------

    def plan(self, job: Job) -> Sequence[PieceSpec]:
        size = job.file_or_fail.size
        return plan_ranges(size, self.drive().part_size(size))

    def move(self, job: Job, missing: Sequence[PieceSpec]) -> None:
        drive = self.drive()
        file = job.file_or_fail
        path = self._staged(job)
        local = LocalFile(path, file.size, self._sha1(job, path))
        folder, name = self.destination(job)
        parent_id = drive.ensure_folder(folder)
        if not job.handles.get("upload"):
            existing = drive.find(parent_id, name)
            if existing is not None:
                if existing.matches(local.size, local.sha1):
                    job.log.info("already on the drive with the same content; nothing to upload")
                    self._adopt(job, existing, folder, name, rapid=False)
                    return
                self._resolve_conflict(job, drive, existing, f"{folder}/{name}", local)
        callbacks = self._callbacks(job)
        for _round in range(CONFLICT_ROUNDS):
            state = dict(job.handles.get("upload") or {})
            try:
                result = drive.upload(
                    local, parent_id, name, state, callbacks=callbacks, cancel=self.ctx.cancel
                )
            except NameTaken as exc:
                existing = exc.existing or drive.find(parent_id, name)
                if existing is not None and existing.matches(local.size, local.sha1):
                    job.log.info("the same content appeared at the destination meanwhile; adopting it")
                    self._adopt(job, existing, folder, name, rapid=False)
                    return
                if existing is not None:
                    self._resolve_conflict(job, drive, existing, f"{folder}/{name}", local)
                continue
            except ContentMismatch as exc:
                self._bad_copy(job, drive, exc.file, local, str(exc))
            self._adopt(job, result.file, folder, name, rapid=result.rapid)
            return
        raise Retryable(f"{folder}/{name} keeps being taken by another file", error_class=ErrorClass.CONFLICT)

    def verify(self, job: Job) -> Outcome:
        file = job.file_or_fail
        drive = self.drive()
        if not job.handles.get("file_id") and job.handles.get("upload"):
            # Every part was acknowledged, and then the daemon died before it completed the upload
            # (a kill -9): completing the saved upload sends no part again.
            self.move(job, [])
        file_id = job.handles.get("file_id")
        sha1 = str(file.sha1 or job.handles.get("sha1") or "")
        if not file_id or not sha1:
            self._forget(job)
            raise Retryable(
                "no verified drive copy is recorded; uploading again", error_class=ErrorClass.INTEGRITY
            )
        try:
            remote = drive.verify(str(file_id), file.size, sha1)
        except UploadGone:
            self._forget(job)
            raise Retryable(
                "the drive copy vanished; uploading again", error_class=ErrorClass.INTEGRITY
            ) from None
        except ContentMismatch as exc:
            path = self._staged(job)
            self._bad_copy(job, drive, exc.file, LocalFile(path, file.size, sha1), str(exc))
        handles = {key: job.handles.get(key) for key in HANDLE_KEYS}
        handles.update(file_id=remote.file_id, content_hash=remote.content_hash)
        if remote.drive_id:
            handles["drive_id"] = remote.drive_id
        return Outcome(handles=handles, sha1=sha1.lower())

    # -- helpers --------------------------------------------------------------------------------

    def _callbacks(self, job: Job) -> UploadCallbacks:
        size = job.file_or_fail.size

        def save_state(state: dict[str, Any]) -> None:
            job.handles["upload"] = dict(state)
            job.save_handles()

        def plan(part_size: int, count: int) -> None:
            wanted = plan_ranges(size, part_size)
            have = [(p.index, p.offset, p.length) for p in job.pieces]
            if have != [(p.index, p.offset, p.length) for p in wanted] or len(wanted) != count:
                job.replan(wanted, size)

        def confirmed(held: int) -> None:
            stale = [p.index for p in job.pieces if p.index >= held and p.done]
            if stale:
                job.reset_pieces(stale)
            arrived = [p.index for p in job.pieces if p.index < held and not p.done]
            if arrived:
                job.pieces_done(arrived)

        def restarted() -> None:
            job.reset_pieces()
            job.handles.pop("upload", None)
            job.save_handles()

        sending = [0]  # the piece of the part being sent (parts go one at a time)

        def part_started(number: int) -> None:
            sending[0] = number - 1
            job.begin_piece(number - 1)

        return UploadCallbacks(
            state=save_state,
            plan=plan,
            confirmed=confirmed,
            part_started=part_started,
            part_done=lambda number: job.piece_done(number - 1),
            restarted=restarted,
            progress=lambda moved: job.add_progress(moved, sending[0]),
        )

    def _adopt(self, job: Job, remote: DriveFile, folder: str, name: str, *, rapid: bool) -> None:
        """Record *remote* as this file's drive copy (verify checks it again) and every part done."""
        sha1 = job.handles.get("sha1")
        job.handles = {
            "file_id": remote.file_id,
            "drive_id": remote.drive_id,
            "path": f"{folder}/{name}",
            "content_hash": remote.content_hash,
            "rapid": rapid,
        }
        if sha1:
            job.handles["sha1"] = sha1
        job.save_handles()
        missing = [piece.index for piece in job.pieces if not piece.done]
        if missing:
            job.pieces_done(missing)
        if rapid:
            job.log.info("rapid upload: the drive already held this content; no bytes sent")

    def _forget(self, job: Job) -> None:
        """Forget the recorded drive copy and upload; every part counts as missing again."""
        sha1 = job.handles.get("sha1")
        job.handles = {"sha1": sha1} if sha1 else {}
        job.save_handles()
        job.reset_pieces()

    def _resolve_conflict(
        self, job: Job, drive: Drive, existing: DriveFile, path: str, local: LocalFile
    ) -> None:
        """Apply ``drive.on_conflict`` to a file with the destination's name and other content."""
        detail = (
            f"{path} on the drive holds {existing.size} bytes with content hash "
            f"{existing.content_hash or 'unknown'}, not this file's {local.size} bytes "
            f"with {local.sha1.upper()}"
        )
        policy = self.section.on_conflict
        if policy == "block":
            raise NeedsPerson(
                detail,
                hint="move or delete that file on the drive (or set drive.on_conflict to 'replace' or "
                "'keep_both'), then `relayctl retry`",
                error_class=ErrorClass.CONFLICT,
            )
        if policy == "replace":
            job.log.warning("%s; moving it to the drive's recycle bin (drive.on_conflict = replace)", detail)
            drive.trash(existing.file_id)
        else:
            renamed = drive.rename(existing.file_id, aside_name(existing.name, existing))
            job.log.warning("%s; renamed it to %s (drive.on_conflict = keep_both)", detail, renamed.name)
        # A stale upload for the old name cannot be completed under it any more; nothing else changes.

    def _bad_copy(self, job: Job, drive: Drive, remote: DriveFile, local: LocalFile, detail: str) -> NoReturn:
        """The drive's copy is not the local content: trash it, forget it, and tell whether the
        staged copy itself is damaged (NeedsPerson) or the drive measured a bad upload
        (IntegrityMismatch: the engine uploads it again once, and blocks when it repeats)."""
        job.log.error("the drive's copy is wrong: %s; moving it to the recycle bin", detail)
        try:
            drive.trash(remote.file_id)
        except RelayError as exc:
            job.log.warning("could not trash the wrong copy %s: %s", remote.file_id, exc)
        self._forget(job)
        actual = content_hash(local.path)
        if actual.upper() != local.sha1.upper():
            raise NeedsPerson(
                f"the staged copy {local.path} no longer matches its recorded sha1 "
                f"({actual.lower()}, expected {local.sha1.lower()})",
                hint="check the staging disk; the file must be downloaded again",
                error_class=ErrorClass.INTEGRITY,
            )
        size = f"{remote.size} bytes, expected {local.size}; " if remote.size != local.size else ""
        raise IntegrityMismatch(
            expected=local.sha1.upper(),
            actual=str(remote.content_hash or "none"),
            algorithm="sha1",
            where="on the drive after pan_upload",
            detail=f"{size}the copy went to the drive's recycle bin",
            hint="the uploads arrive damaged at the drive (the staged copy is intact): check the network "
            "path to the drive (a proxy or middlebox that alters bodies), then `relayctl retry`",
        )

    def close(self) -> None:
        if self._own_drive is not None:
            self._own_drive.close()
