"""vm_pull: bring each file from the drive onto the VM, resumable, and verified on the VM itself.

The VM's side runs in relayd's agent (``relayd/vm/agent/pull.py`` and ``place.py``) through the VM
executor (local, or over SSH). For each call the hop asks the drive for a fresh download link and hands
the agent the missing pieces; the agent fetches them with Range GETs over ``vm.connections`` keep-alive
connections into ``<vm.root>/<vm_dir>/<path>.relayd-partial`` and reports each piece only after fsync,
and the hop records it then. While pieces land, the agent hashes the growing prefix, so when the last
one is in, the sha256 computed on the VM is compared with the file's and the file is renamed into place.

A link is kept (in memory only: it is a capability) and used again by later calls for the same file
while it has more than LINK_MARGIN left, so relayd asks the drive for links as seldom as it can.

Failures: an expired link (403 ``Request has expired.``, or close to its expiry) → a new link and the
remaining pieces; the drive's download cap (403 ``ExceedMaxConcurrency``: at most 2 downloads per app
and 3 per user at once) → the agent drops the refused connections, later calls use no more than the
drive accepted for CAP_HOLD, and when even one is refused the transfer waits (``rate_limit``) with
the same link; any other 403 → the Referer of the drive's other web origin on the same link (the
one that works is remembered), then blocked; a dropped SSH connection or a dead agent → reconnect and
continue (at most one piece per connection is fetched again); a sha256 mismatch → the bad pieces
(found against a staged copy when there is one) or all pieces again, and a second mismatch in a row
blocks with both hashes (``IntegrityMismatch``). With ``vm.executor = "local"`` and the per-repo
option ``vm_from_staging`` (or ``vm.from_staging``), a file still staged on this machine is hard-linked
(or copied) from staging instead, verified the same way.

A file whose download and pan_upload reused another file's verified drive copy (same sha256, see
``Store._reuse_drive_copy``) is pulled from that copy; when the drive answers that it is gone, the
file's download and pan_upload start again from the Hub (``Job.fetch_again``).

Handles: ``{"path": <absolute path on the VM>, "executor": "local" | "ssh", "host": ...}``.
"""

from __future__ import annotations

import logging
import posixpath
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from relayd.config import VmConfig
from relayd.digest import sha256_of_range
from relayd.errors import (
    ConfigError,
    ErrorClass,
    HopError,
    IntegrityMismatch,
    NeedsPerson,
    Permanent,
    Retryable,
)
from relayd.hops.base import Hop, HopContext, Job, Outcome, PieceSpec, plan_ranges
from relayd.units import format_size
from relayd.vm.executor import Executor, make_executor

log = logging.getLogger(__name__)

#: Reconnections to the VM within one attempt, counted since the last piece that landed.
RECONNECTS = 5
#: The failures of a call that reconnecting to the VM may cure.
RECONNECT_AFTER = frozenset({ErrorClass.NETWORK, ErrorClass.STALL, ErrorClass.TIMEOUT, ErrorClass.AGENT})
#: Fresh links the drive may refuse in a row (no piece landing in between) before a person looks.
REFUSED_LINKS = 3
#: How long a good readiness check of the VM (python3, git, git-lfs) is trusted.
READY_TTL = 300.0
#: A kept download link is used again only while it has more than this left (seconds).
LINK_MARGIN = 600.0
#: How long the connections the drive accepted under its download cap stay the most used (seconds).
CAP_HOLD = 1800.0
#: How long a transfer waits when the drive refused even a single download connection (seconds).
CAP_WAIT = 60.0
CAP_REASON = "the drive refused more parallel downloads (403 ExceedMaxConcurrency)"


def _expires_in(link: Any) -> float | None:
    """Return the seconds a download link has left (the agent applies them to its own clock, so a
    skewed VM clock does not matter), or None when unknown."""
    expires = getattr(link, "expires_at", None)
    if expires is None:
        return None
    if isinstance(expires, datetime):
        moment = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
        return moment.timestamp() - time.time()
    return float(expires) - time.time()


def _worth_keeping(link: Any) -> bool:
    """Return True while a download link has more than LINK_MARGIN left."""
    left = _expires_in(link)
    return left is not None and left > LINK_MARGIN


class VmPullHop(Hop):
    """Drive → VM disk, through the VM agent; see the module doc."""

    name = "vm_pull"
    config_section = "vm"
    short_name = "vm"
    consumes = frozenset({"drive"})  # vm_from_staging is a shortcut only: the drive's copy is the way
    produces = "vm"
    services = ("drive", "vm")
    section: VmConfig

    def __init__(self, section: VmConfig, ctx: HopContext) -> None:
        super().__init__(section, ctx)
        self._own_executor: Executor | None = None
        self._lock = threading.Lock()
        self._ready_until = 0.0
        self._results: dict[int, dict[str, Any]] = {}
        self._links: dict[str, Any] = {}  # drive file id → a download link still worth using
        self._good_headers: dict[str, str] | None = None  # the headers the data host last accepted
        self._capped: tuple[int, float] | None = None  # (connections the drive accepted, until when)

    @property
    def reads_staging(self) -> bool:  # type: ignore[override]
        """Keep staged copies until this hop is done only when the short path may use them."""
        return self.section.executor == "local" and self.section.from_staging

    # -- shared clients ---------------------------------------------------------------------------

    def _executor(self) -> Executor:
        try:
            executor = self.ctx.services.get("vm")
        except KeyError:
            executor = None
        if isinstance(executor, Executor):
            return executor
        with self._lock:
            if self._own_executor is None:
                self._own_executor = make_executor(self.section)
            return self._own_executor

    def _drive(self) -> Any:
        try:
            return self.ctx.services.get("drive")
        except KeyError as exc:
            raise NeedsPerson(
                "vm_pull needs the drive, and this relayd has no drive client",
                hint="configure [drive] (vm_pull reads the files pan_upload put there)",
                error_class=ErrorClass.CONFIG,
            ) from exc
        except ConfigError as exc:
            raise NeedsPerson(f"the drive cannot be used: {exc}", hint="fix [drive] in the config") from exc

    def _ready(self, executor: Executor) -> None:
        """Check once in a while that the VM has python3 ≥ 3.8, git and git-lfs (NeedsPerson if not)."""
        if time.monotonic() < self._ready_until:
            return
        facts = executor.check(need=("git", "git_lfs"), timeout=120)
        log.info(
            "%s ready: python %s, %s, %s; %s free under %s",
            executor.describe(),
            facts.python,
            facts.git,
            facts.git_lfs,
            format_size(facts.free),
            facts.root,
        )
        self._ready_until = time.monotonic() + READY_TTL

    # -- where ------------------------------------------------------------------------------------

    def _relpath(self, job: Job) -> str:
        """Return the file's path under vm.root: ``<vm_dir or owner/name>/<path>``."""
        vm_dir = str(job.repo.destinations.get("vm_dir") or job.repo.name).strip("/")
        relative = posixpath.join(vm_dir, job.file_or_fail.path)
        parts = relative.split("/")
        if posixpath.isabs(relative) or any(part in ("", ".", "..") for part in parts):
            raise Permanent(f"refusing the VM path {relative!r}", hint="fix the repo's vm_dir destination")
        return relative

    def _from_staging(self, job: Job, executor: Executor) -> str | None:
        """Return the staged copy's path when the short path applies, else None."""
        option = job.repo.options.get("vm_from_staging")
        wanted = self.section.from_staging if option is None else bool(option)
        staged = job.file_or_fail.staged_path
        if not wanted or executor.kind != "local" or not staged:
            return None
        path = self.ctx.staging.resolve(staged)
        return str(path) if path.is_file() else None

    # -- the contract -----------------------------------------------------------------------------

    def plan(self, job: Job) -> Sequence[PieceSpec]:
        return plan_ranges(job.file_or_fail.size, self.section.piece_size)

    def move(self, job: Job, missing: Sequence[PieceSpec]) -> None:
        file = job.file_or_fail
        if not file.sha256:
            raise Permanent(
                "the file's sha256 is unknown, so its copy on the VM cannot be verified",
                hint="the download hop records it; run the route from download",
            )
        executor = self._executor()
        self._ready(executor)
        self._results.pop(job.id, None)
        source = self._from_staging(job, executor)
        if source is not None:
            self._place(job, executor, source, missing)
            return
        self._pull(job, executor, missing)

    def _base_params(self, job: Job, missing: Sequence[PieceSpec]) -> dict[str, Any]:
        file = job.file_or_fail
        return {
            "root": self.section.root,
            "relpath": self._relpath(job),
            "size": file.size,
            "plan": [[p.index, p.offset, p.length] for p in job.pieces],
            "missing": sorted(p.index for p in missing),
            "fresh": len(missing) == len(job.pieces),
            "expected_sha256": file.sha256,
            # sha1 on the VM only when the catalogue lacks it: the sha256 is the proof, and a second
            # hash costs the VM about a third more CPU per byte.
            "sha1": not file.sha1,
        }

    def _events(self, job: Job, landed: list[int]) -> Any:
        wanted = {piece.index for piece in job.pieces}
        at_offset = {piece.offset: piece.index for piece in job.pieces}

        def on_event(event: dict[str, Any]) -> None:
            kind = event.get("event")
            if kind == "progress":
                offset = event.get("offset")
                piece = at_offset.get(offset) if isinstance(offset, int) else None
                job.add_progress(int(event.get("bytes") or 0), piece)
            elif kind == "piece_start" and event.get("index") in wanted:
                job.begin_piece(int(event["index"]))
            elif kind == "piece_done" and event.get("index") in wanted:
                job.piece_done(int(event["index"]))
                landed.append(int(event["index"]))
            elif kind == "retry":
                job.log.info("the VM retries piece %s: %s", event.get("index"), event.get("reason"))

        return on_event

    def _place(self, job: Job, executor: Executor, source: str, missing: Sequence[PieceSpec]) -> None:
        params = {**self._base_params(job, missing), "source": source}
        landed: list[int] = []
        job.log.info("taking it from staging on this machine (vm_from_staging)")
        result = executor.call(
            "place_file", params, on_event=self._events(job, landed), cancel=self.ctx.cancel
        )
        self._results[job.id] = result

    def _link(self, drive: Any, file_id: str) -> Any:
        """Return a kept link for *file_id* with more than LINK_MARGIN left, else a new one."""
        with self._lock:
            link = self._links.get(file_id)
        if link is not None and _worth_keeping(link):
            return link
        link = drive.download_url(file_id)
        with self._lock:
            # Links of files that failed for good would otherwise stay here until the daemon stops.
            self._links = {key: kept for key, kept in self._links.items() if _worth_keeping(kept)}
            self._links[file_id] = link
        return link

    def _forget_link(self, file_id: str) -> None:
        with self._lock:
            self._links.pop(file_id, None)

    def _header_choices(self, link: Any) -> list[dict[str, str]]:
        """Return the header sets to try with *link*: the one the data host last accepted first."""
        choices = [dict(link.headers), *(dict(h) for h in getattr(link, "alternatives", ()))]
        good = self._good_headers
        if good in choices:
            choices.remove(good)
            choices.insert(0, good)
        return choices

    def _connections(self) -> int:
        """Return the connections per file: vm.connections, or fewer while the drive's cap holds."""
        with self._lock:
            capped = self._capped
            if capped is not None and time.monotonic() >= capped[1]:
                self._capped = capped = None
        return min(self.section.connections, capped[0]) if capped else self.section.connections

    def _note_cap(self, accepted: int) -> None:
        """Remember that the drive accepted only *accepted* connections (at least one is kept), and
        say so in `relayctl status` (the ``drive.downloads`` fact)."""
        kept = max(1, accepted)
        with self._lock:
            self._capped = (kept, time.monotonic() + CAP_HOLD)
        fact = {
            "connections": kept,
            "configured": self.section.connections,
            "refused_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "reason": CAP_REASON,
        }
        try:
            self.ctx.store.publish("drive.downloads", fact)
        except Exception:  # a status fact must never fail the transfer
            log.warning("could not publish the drive's download cap", exc_info=True)

    def _pull(self, job: Job, executor: Executor, missing: Sequence[PieceSpec]) -> None:
        file = job.file_or_fail
        file_id = job.locations.get("pan_upload", {}).get("file_id") or job.previous.get("file_id")
        if not file_id:
            raise NeedsPerson(
                "no drive copy of this file is recorded (pan_upload left no file_id)",
                hint="put pan_upload before vm_pull in the repo's route, then `relayctl retry`",
                error_class=ErrorClass.CONFIG,
            )
        drive = self._drive()
        if job.locations.get("pan_upload", {}).get("reused") and drive.get(str(file_id)) is None:
            reason = f"the drive copy {file_id} this file reused is gone (the drive answers not found)"
            job.fetch_again(reason)
            raise Retryable(f"{reason}; it is downloaded from the Hub again", error_class=ErrorClass.REUSE)
        params = self._base_params(job, missing)
        params["stall_timeout"] = 60
        if self.section.ca_bundle is not None:  # CAs the VM trusts besides its own, for the data host
            params["ca_pem"] = self.section.ca_bundle.read_text(encoding="ascii", errors="replace")
        landed: list[int] = []
        events = self._events(job, landed)
        accepted: list[int] = []

        def on_event(event: dict[str, Any]) -> None:
            if event.get("event") == "connection_dropped" and event.get("reason") == "cap":
                accepted.append(int(event.get("active") or 1))
            events(event)

        reconnects = refused = lost = 0
        link: Any = None
        choices: list[dict[str, str]] = []
        while True:
            job.check_cancelled()
            if link is None:
                link = self._link(drive, str(file_id))
                choices = self._header_choices(link)
            if link.size != file.size:
                self._forget_link(str(file_id))
                raise NeedsPerson(
                    f"the drive's copy is {link.size} bytes, expected {file.size}",
                    hint="the drive holds another file under this id: `relayctl retry` the pan_upload",
                    error_class=ErrorClass.INTEGRITY,
                )
            headers = choices[0]
            params["headers"] = headers
            params["expires_in"] = _expires_in(link)
            params["connections"] = self._connections()
            before = len(landed)
            accepted.clear()
            try:
                result = executor.call(
                    "pull",
                    params,
                    secrets={"url": link.url, "proxy": self.section.proxy},
                    on_event=on_event,
                    cancel=self.ctx.cancel,
                )
            except Retryable as exc:
                progressed = len(landed) > before
                if accepted or exc.error_class is ErrorClass.RATE_LIMIT:
                    self._note_cap(min(accepted, default=1))
                if progressed:
                    params["fresh"] = False
                    reconnects = refused = 0
                    self._good_headers = headers
                params["missing"] = sorted(p.index for p in job.pieces if not p.done)
                if exc.error_class is ErrorClass.RATE_LIMIT:
                    raise Retryable(
                        f"{CAP_REASON}: another client of this account may be downloading; waiting, "
                        f"then going on with {self._connections()} connection(s) ({exc})",
                        error_class=ErrorClass.RATE_LIMIT,
                        retry_after=CAP_WAIT,
                    ) from exc
                if exc.error_class is ErrorClass.DOWNLOAD_REFUSED:
                    choices.pop(0)
                    if not choices:
                        raise NeedsPerson(
                            f"the drive refuses to serve the download: {exc}",
                            hint=(
                                "check drive.referer (the drive's links want https://www.aliyundrive.com/ "
                                "or https://www.alipan.com/; relayd tried both), the drive login and the "
                                "account in the Aliyun Drive app, then `relayctl retry`"
                            ),
                            error_class=ErrorClass.DOWNLOAD_REFUSED,
                        ) from exc
                    job.log.info("the drive refused the download as sent; trying %s", choices[0])
                    continue
                if exc.error_class is ErrorClass.URL_EXPIRED:
                    self._forget_link(str(file_id))
                    link = None
                    refused = 0 if progressed else refused + 1
                    if refused >= REFUSED_LINKS:
                        raise NeedsPerson(
                            f"the drive refuses fresh download links: {exc}",
                            hint="check the clocks (the drive's links expire) and the drive login",
                            error_class=ErrorClass.AUTH,
                        ) from exc
                    job.log.info("the download link expired; asking the drive for a new one")
                    continue
                if exc.error_class is ErrorClass.PARTIAL_LOST:
                    lost += 1
                    if lost > 1:
                        raise
                    job.log.warning("%s; fetching the whole file again", exc)
                    job.reset_pieces()
                    params["missing"] = [p.index for p in job.pieces]
                    params["fresh"] = True
                    continue
                if exc.error_class in RECONNECT_AFTER and reconnects < RECONNECTS:
                    reconnects += 1
                    delay = min(2.0**reconnects, 20.0)
                    job.log.warning(
                        "%s; reconnecting in %.0fs (%d of %d) for the %d missing piece(s)",
                        exc,
                        delay,
                        reconnects,
                        RECONNECTS,
                        len(params["missing"]),
                    )
                    if self.ctx.cancel.wait(delay):
                        job.check_cancelled()
                    continue
                raise
            if accepted:
                self._note_cap(min(accepted))
            self._good_headers = headers
            self._forget_link(str(file_id))
            self._results[job.id] = result
            return

    def verify(self, job: Job) -> Outcome:
        file = job.file_or_fail
        executor = self._executor()
        result = self._results.pop(job.id, None)
        if result is None or not result.get("sha256"):
            params = {
                "root": self.section.root,
                "relpath": self._relpath(job),
                "size": file.size,
                "expected_sha256": file.sha256,
                "sha1": not file.sha1,
            }
            try:
                result = executor.call("pull_finish", params, cancel=self.ctx.cancel)
            except Retryable as exc:
                if exc.error_class is ErrorClass.PARTIAL_LOST:
                    job.reset_pieces()
                    raise Retryable(f"{exc}; fetching it again", error_class=ErrorClass.INTEGRITY) from exc
                raise
        if result.get("sha256") != file.sha256 or not result.get("renamed"):
            self._mismatch(job, executor, result)
        handles = {"path": str(result["path"]), "executor": executor.kind, "host": executor.host}
        if result.get("method"):
            handles["via"] = f"staging ({result['method']})"
        return Outcome(
            handles=handles, sha256=str(result["sha256"]), sha1=str(result.get("sha1") or "") or None
        )

    def _mismatch(self, job: Job, executor: Executor, result: dict[str, Any]) -> NoReturn:
        """Mark the bad pieces (or all) missing and raise IntegrityMismatch: the engine has them
        fetched again once, and blocks on a second mismatch in a row."""
        file = job.file_or_fail
        drive_note = ""
        if file.sha1 and result.get("sha1") and str(result["sha1"]).lower() != file.sha1.lower():
            drive_note = f"sha1 {result['sha1']}, expected {file.sha1}; "
        bad = self._bad_pieces(job, executor)
        job.reset_pieces(bad or None)
        raise IntegrityMismatch(
            expected=str(file.sha256),
            actual=str(result.get("sha256")),
            where="on the VM after vm_pull",
            detail=f"{drive_note}{len(bad) or len(job.pieces)} of {len(job.pieces)} piece(s) marked missing",
            hint="the drive's copy is probably corrupt: check it, upload it again "
            "(`relayctl retry` the repo's pan_upload), then `relayctl retry`",
        )

    def _bad_pieces(self, job: Job, executor: Executor) -> list[int]:
        """Return the pieces whose sha256 on the VM differs from the staged copy's ([] when there is
        no staged copy to compare with, or the VM's partial file is gone)."""
        staged = job.file_or_fail.staged_path
        if not staged:
            return []
        source = self.ctx.staging.resolve(staged)
        if not source.is_file():
            return []
        pieces = [[p.index, p.offset, p.length] for p in job.pieces]
        try:
            remote = executor.call(
                "piece_hashes",
                {"root": self.section.root, "relpath": self._relpath(job), "pieces": pieces},
                cancel=self.ctx.cancel,
            )["hashes"]
        except HopError:
            return []
        return [
            p.index
            for p in job.pieces
            if remote.get(str(p.index)) != sha256_of_range(source, p.offset, p.length)
        ]

    def close(self) -> None:
        with self._lock:
            executor, self._own_executor = self._own_executor, None
        if executor is not None:
            executor.close()
