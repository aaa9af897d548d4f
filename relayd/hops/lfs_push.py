"""lfs_push: the files on the VM become one commit per snapshot in a ModelScope repo (git + Git LFS).

The VM's side runs in relayd's agent (``relayd/vm/agent/lfs_upload.py`` and ``publish.py``) through
the VM executor, where vm_pull put the files; on a route without vm_pull (``download,lfs_push``) it
runs on this machine from the staged copies. Nothing large is copied: objects are uploaded from the
files themselves and the commit holds pointers written directly (see docs/modelscope.md).

Per file (``move``/``verify``, one piece = one LFS object, since the basic transfer cannot resume
inside an object): an LFS file's object goes up through the batch API as soon as the file is there;
one the server already has is skipped, and one the server measures wrong (a refused PUT, a failed
verify) is sent again once, then blocks (``IntegrityMismatch``). A small or metadata file is stored
as a git blob in the scratch repository (checked against its upstream git blob id). Handles:
``{"oid", "size", "skipped", "sent"}`` or ``{"plain": true, "blob", "size"}``.

Per snapshot (``finish_snapshot``): one commit on top of the branch tip (pointers, plain files,
merged ``.gitattributes``, files removed upstream deleted, a message naming the HF repo and commit),
checked to hold every path of the snapshot (a path git refused blocks the snapshot), pushed without
force unless ``force_push``, rebuilt on the new tip when the remote moved, and every object confirmed
on the server before the snapshot is done. Handles: ``{"commit", "branch", "remote",
"paths"}`` (``paths``: what this relay put there, so the next snapshot knows what upstream removed).

The token is sent to the agent in the request's secrets only; the agent hands it to git through the
environment and a credential helper, never in a URL, argv or ``.git/config``.
"""

from __future__ import annotations

import posixpath
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relayd import __version__
from relayd.config import ModelScopeConfig
from relayd.errors import (
    ConfigError,
    ErrorClass,
    IntegrityMismatch,
    NeedsPerson,
    Permanent,
    Retryable,
    UsageError,
)
from relayd.health import FAIL, OK, Check, CheckScope, Finding, answered, failed
from relayd.hops.base import FileInfo, Handles, Hop, HopContext, Job, Outcome, PieceSpec, RepoInfo
from relayd.names import validate_repo_id
from relayd.services import LOCAL_EXECUTOR
from relayd.text import public_url
from relayd.vm.agent.lfs_files import wants_lfs
from relayd.vm.checks import tool_findings
from relayd.vm.executor import Executor, local_executor

#: How long one call for a small file may take.
SMALL_CALL_TIMEOUT = 600.0
_SHA256 = re.compile(r"\b[0-9a-f]{64}\b")
#: The doctor's group of the checks below.
GROUP = "modelscope"
NO_ACCESS_HINT = (
    "set MODELSCOPE_TOKEN (or [modelscope] token_env, token_file or token_credential) to an access token "
    "with write access"
)


def pushes_from_vm(route: Sequence[str]) -> bool:
    """Return whether lfs_push pushes a route's files from the VM (where vm_pull put them), not from
    the staged copies on this machine."""
    return "vm_pull" in route


def work_dir(section: ModelScopeConfig, executor: Executor, on_vm: bool, state_dir: Path) -> str:
    """Return the scratch repository's directory where *executor* runs."""
    if section.work_dir:
        return section.work_dir
    if on_vm:
        return posixpath.join(executor.config.root, ".relayd-git")
    return str(state_dir / "lfs")


def checked_destination(target: str) -> str:
    """Return the ModelScope repo id *target*. Raise UsageError when it is not ``owner/name``."""
    validate_repo_id(target)
    if "/" not in target:
        raise UsageError(f"the ModelScope repo {target!r} has no owner")
    return target


def known_check(finding: Finding) -> Check:
    """Return a check that reports *finding*, known already."""
    return Check(finding.group, finding.name, lambda: [finding])


def destinations(scope: CheckScope, checks: list[Check]) -> Iterator[tuple[str, str, bool]]:
    """Yield each destination repo once, with where its route pushes from: (its check's name,
    OWNER/NAME, from the VM). A destination that is not OWNER/NAME adds its failed check to *checks*."""
    seen: set[tuple[str, bool]] = set()
    for repo in scope.repos:
        on_vm = pushes_from_vm(repo.route)
        target = str(repo.destinations.get("modelscope_repo") or repo.name)
        name = f"modelscope {target}"
        try:
            target = checked_destination(target)
        except UsageError as exc:
            hint = "set the repo's modelscope_repo destination to OWNER/NAME"
            checks.append(known_check(Finding(GROUP, name, FAIL, f"{repo.name}: {exc}", hint)))
            continue
        if (target, on_vm) not in seen:
            seen.add((target, on_vm))
            yield name, target, on_vm


def token_finding(section: ModelScopeConfig) -> Finding:
    ref = section.token
    try:
        token = ref.resolve()
    except ConfigError as exc:
        return failed(GROUP, "modelscope token", exc, "fix [modelscope] token")
    if token:
        return Finding(GROUP, "modelscope token", OK, f"set ({ref.describe()})")
    return Finding(GROUP, "modelscope token", FAIL, f"no access token ({ref.describe()})", NO_ACCESS_HINT)


def _local_git_check(scope: CheckScope) -> Check:
    """Return the check of git and git-lfs on this machine (lfs_push on routes without vm_pull)."""

    def run() -> list[Finding]:
        facts = scope.services.get(LOCAL_EXECUTOR).facts(timeout=scope.timeout)
        where = "on this machine (lfs_push pushes from staging here)"
        return tool_findings(facts, GROUP, "local", where, "install {package} (apt-get install {package})")

    also = ((GROUP, "local git-lfs"),)
    return Check(GROUP, "local git", run, label="the check of git on this machine", also=also)


def _destination_check(
    section: ModelScopeConfig, scope: CheckScope, on_vm: bool, remote: str, name: str
) -> Callable[[], list[Finding]]:
    """Return the run of a destination's check: the agent's ``lfs_check`` where the route pushes from."""

    def run() -> list[Finding]:
        executor: Executor = scope.services.get("vm" if on_vm else LOCAL_EXECUTOR)
        params = {
            "remote": remote,
            "work_dir": work_dir(section, executor, on_vm, scope.state_dir),
            "branch": section.branch,
            "activity_timeout": scope.timeout,
        }
        secrets = {"token": section.token.resolve() or "", "proxy": section.proxy}
        result = executor.call("lfs_check", params, secrets=secrets, timeout=scope.timeout)
        head = result.get("branch_head")
        tip = f"{section.branch} is at {str(head)[:12]}" if head else f"{section.branch} does not exist yet"
        return [Finding(GROUP, name, OK, f"{public_url(remote)} accepts the token; {tip}")]

    return run


def _endpoint_check(section: ModelScopeConfig, scope: CheckScope) -> Check:
    """Return whether the remote's host answers this machine (while no repo pushes to ModelScope)."""
    parts = urlsplit(public_url(section.remote.format(owner="owner", name="name")))
    origin = f"{parts.scheme}://{parts.netloc}"
    reach = f"check [modelscope] remote ({origin}) and the network path to it from this machine"

    def run() -> list[Finding]:
        import requests

        with requests.get(
            f"{origin}/", timeout=scope.timeout, allow_redirects=False, stream=True
        ) as response:
            status = response.status_code
        return [answered(GROUP, "modelscope endpoint", origin, status, reach)]

    return Check(GROUP, "modelscope endpoint", run, reach, origin, "modelscope.remote")


def put_progress(job: Job) -> Callable[[dict[str, Any]], None]:
    """Return the agent-event handler of a one-piece PUT: progress counts bytes on piece 0, and a
    progress that starts over (a PUT made again) counts as a new send; retries are logged."""
    sent: dict[str, int] = {}

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "progress":
            now = int(event.get("sent") or 0)
            before = sent.get("n", -1)
            if now < before or before < 0:
                job.begin_piece(0)  # a PUT starts (again): count the send
                before = 0
            job.add_progress(now - before, 0)
            sent["n"] = now
        elif event.get("event") == "retry":
            job.log.info("retrying %s: %s", event.get("what"), event.get("error"))

    return on_event


def measured_wrong(refused: Retryable, oids: Sequence[str]) -> IntegrityMismatch:
    """Return the IntegrityMismatch for an object the LFS server refused as wrong bytes (*refused*,
    the agent's report): expected is the object's oid (among *oids*, the one the report names), got
    the sha256 the server says it measured, when its answer says."""
    text = str(refused).lower()
    expected = next((oid for oid in oids if oid[:12] in text), oids[0] if oids else "the object's oid")
    measured = [digest for digest in _SHA256.findall(text) if digest != expected]
    return IntegrityMismatch(
        expected=expected,
        actual=measured[0] if measured else "other bytes (the server did not say which sha256)",
        where="by the LFS server after lfs_push",
        detail=str(refused),
        hint="the uploads arrive damaged at the LFS server while the file they are sent from is intact "
        "(it was hashed again): check the network path to ModelScope (a proxy that alters bodies), "
        "then `relayctl retry`",
    )


class LfsPushHop(Hop):
    """VM (or staging) → ModelScope via the LFS batch API and one plumbing commit; see the module doc."""

    #: What a plain (non-LFS) file's handles name once it is in the push: its git blob.
    plain_copy = "blob"

    name = "lfs_push"
    config_section = "modelscope"
    short_name = "push"
    finishes_snapshot = True
    # On a route without vm_pull the files are pushed from staging, which must wait for this hop.
    reads_staging = True
    staging_unneeded_after = frozenset({"vm_pull"})
    consumes = frozenset({"vm", "staging"})  # from the VM on a route with vm_pull, else from staging
    produces = "modelscope"
    section: ModelScopeConfig

    def __init__(self, section: ModelScopeConfig, ctx: HopContext) -> None:
        super().__init__(section, ctx)
        self._lock = threading.Lock()
        self._local: Executor | None = None

    # -- where the files are ----------------------------------------------------------------------

    def _vm(self) -> Executor:
        try:
            executor = self.ctx.services.get("vm")
        except KeyError as exc:
            raise NeedsPerson(
                "lfs_push runs on the VM, and this relayd has no VM executor",
                hint="configure [vm] (lfs_push pushes from where vm_pull put the files)",
                error_class=ErrorClass.CONFIG,
            ) from exc
        except ConfigError as exc:
            raise NeedsPerson(f"the VM cannot be used: {exc}", hint="fix [vm] in the config") from exc
        if not isinstance(executor, Executor):
            raise Permanent(f"the 'vm' service is a {type(executor).__name__}, not a VM executor")
        return executor

    def _staging_executor(self) -> Executor:
        """Return an executor on this machine (for routes without vm_pull: the files are staged here):
        the daemon's shared one (``ctx.services``), or one of this hop's own."""
        try:
            shared = self.ctx.services.get(LOCAL_EXECUTOR)
        except KeyError:
            shared = None
        if isinstance(shared, Executor):
            return shared
        with self._lock:
            if self._local is None:
                self._local = local_executor(self._vm().config)
            return self._local

    @staticmethod
    def _on_vm(job: Job) -> bool:
        return pushes_from_vm(job.repo.route)

    def _executor_for(self, job: Job) -> Executor:
        return self._vm() if self._on_vm(job) else self._staging_executor()

    def _work_dir(self, job: Job, executor: Executor) -> str:
        return work_dir(self.section, executor, self._on_vm(job), self.ctx.state_dir)

    def _source(self, job: Job, file: FileInfo, locations: Mapping[str, Handles]) -> str | None:
        """Return where *file* is: its path on the VM (vm_pull's handle), or its staged copy."""
        if self._on_vm(job):
            path = locations.get("vm_pull", {}).get("path")
            return str(path) if path else None
        if file.staged_path:
            return str(self.ctx.staging.resolve(file.staged_path))
        return None

    # -- where it goes ----------------------------------------------------------------------------

    def destination(self, job: Job) -> str:
        """Return the ModelScope repo id (``owner/name``) of the job's repo."""
        target = str(job.repo.destinations.get("modelscope_repo") or job.repo.name)
        try:
            validate_repo_id(target)
        except UsageError as exc:
            raise NeedsPerson(
                f"the ModelScope repo {target!r} is not a valid repo id: {exc}",
                hint="set the repo's modelscope_repo destination to OWNER/NAME",
                error_class=ErrorClass.CONFIG,
            ) from exc
        if "/" not in target:
            raise NeedsPerson(
                f"the ModelScope repo {target!r} has no owner",
                hint="set the repo's modelscope_repo destination to OWNER/NAME (your ModelScope user "
                "or organisation)",
                error_class=ErrorClass.CONFIG,
            )
        return target

    def remote(self, job: Job) -> str:
        """Return the git remote URL of the job's repo (never with credentials)."""
        owner, name = self.destination(job).split("/", 1)
        return self.section.remote.format(owner=owner, name=name)

    def _token(self) -> str:
        try:
            token = self.section.token.resolve()
        except ConfigError as exc:
            raise NeedsPerson(
                f"the ModelScope token cannot be read: {exc}", hint="fix [modelscope] token"
            ) from exc
        if not token:
            raise NeedsPerson(
                f"no ModelScope access token ({self.section.token.describe()})",
                hint="set MODELSCOPE_TOKEN (or [modelscope] token_env, token_file or token_credential) to "
                "an access token with write access, then `relayctl retry`",
                error_class=ErrorClass.AUTH,
            )
        return token

    def _common(self, job: Job, executor: Executor) -> dict[str, Any]:
        return {
            "remote": self.remote(job),
            "work_dir": self._work_dir(job, executor),
            "activity_timeout": self.section.activity_timeout,
            "concurrency": self.section.concurrency,
        }

    # -- ask the end first -----------------------------------------------------------------------

    def held(self, repo: RepoInfo, contents: Sequence[tuple[str, int]]) -> set[str]:
        """Return the sha256s the LFS server already holds for the destination repo (a batch
        ``download`` request names them), asked from where the route pushes."""
        if not contents:
            return set()
        on_vm = pushes_from_vm(repo.route)
        executor = self._vm() if on_vm else self._staging_executor()
        target = str(repo.destinations.get("modelscope_repo") or repo.name)
        owner, _, name = target.partition("/")
        objects = [{"oid": oid, "size": size} for oid, size in contents]
        result = executor.call(
            "lfs_confirm",
            {"remote": self.section.remote.format(owner=owner, name=name), "objects": objects},
            secrets={"token": self._token(), "proxy": self.section.proxy},
            cancel=self.ctx.cancel,
        )
        return {oid for oid, _ in contents} - {str(oid) for oid in result.get("missing") or []}

    def _skipped_before(self, job: Job, executor: Executor, oid: str, size: int) -> None:
        """The earlier hops skipped the file because the server held its object when the snapshot was
        recorded: check that it still does, else have the route fetch the file again."""
        result = executor.call(
            "lfs_confirm",
            {"remote": self.remote(job), "objects": [{"oid": oid, "size": size}]},
            secrets={"token": self._token(), "proxy": self.section.proxy},
            cancel=self.ctx.cancel,
        )
        if result.get("missing"):
            reason = f"the LFS server no longer holds object {oid[:12]}, which the earlier hops skipped"
            job.fetch_again(reason)
            raise Retryable(f"{reason}; it is fetched again", error_class=ErrorClass.REUSE)
        job.handles = {"oid": oid, "size": size, "skipped": True}
        job.save_handles()
        job.piece_done(0)

    # -- per file ---------------------------------------------------------------------------------

    def plan(self, job: Job) -> Sequence[PieceSpec]:
        return [PieceSpec(0, 0, job.file_or_fail.size)]

    def move(self, job: Job, missing: Sequence[PieceSpec]) -> None:
        file = job.file_or_fail
        executor = self._executor_for(job)
        source = self._source(job, file, job.locations)
        if source is None and job.previous.get("skipped") and file.sha256:
            self._skipped_before(job, executor, file.sha256, file.size)
            return
        if source is None:
            where = "vm_pull left no path on the VM" if self._on_vm(job) else "no staged copy is recorded"
            raise NeedsPerson(
                f"the file is not where lfs_push can read it ({where})",
                hint="`relayctl retry` the earlier hops of the route, so that the file is there again",
                error_class=ErrorClass.MISSING,
            )
        params = self._common(job, executor)
        secrets = {"token": self._token(), "proxy": self.section.proxy}
        if not wants_lfs(file.path, file.size, file.lfs):
            result = executor.call(
                "git_blob",
                {**params, "path": source, "expect_blob": file.git_blob_id},
                secrets=secrets,
                cancel=self.ctx.cancel,
                timeout=SMALL_CALL_TIMEOUT,
            )
            job.handles = {"plain": True, "blob": result["blob"], "size": file.size}
            job.save_handles()
            job.piece_done(0)
            return
        operation_params = {**params, "ref": f"refs/heads/{self.section.branch}"}
        self._send_object(job, executor, "lfs_upload", operation_params, secrets, source, "the server")

    def _send_object(
        self,
        job: Job,
        executor: Executor,
        operation: str,
        params: dict[str, Any],
        secrets: dict[str, str],
        source: str,
        holder: str,
    ) -> None:
        """Send the job's file at *source* as one large object through the agent's *operation*; record
        its handles (oid, size, whether *holder* had it already, bytes sent) and its one piece."""
        file = job.file_or_fail
        oid = file.sha256 or self._hash(job, executor, source)
        try:
            result = executor.call(
                operation,
                {
                    **params,
                    "objects": [{"oid": oid, "size": file.size, "path": source}],
                    # The file was sha256-verified where it landed (vm_pull, or download for staging):
                    # guard it by size, mtime and inode while it is sent; the server checks the bytes
                    # and a refusal makes the agent hash it (blocked if it changed).
                    "verify": "stat",
                },
                secrets=secrets,
                on_event=put_progress(job),
                cancel=self.ctx.cancel,
            )
        except Retryable as exc:
            if exc.error_class is ErrorClass.MISMATCH:
                raise measured_wrong(exc, [oid]) from exc
            raise
        answer = result["objects"][0]
        if answer["skipped"]:
            job.log.info("%s already holds object %s; nothing sent", holder, oid[:12])
        job.handles = {
            "oid": oid,
            "size": file.size,
            "skipped": bool(answer["skipped"]),
            "sent": int(answer.get("sent") or 0),
        }
        job.save_handles()
        job.piece_done(0)

    def _hash(self, job: Job, executor: Executor, source: str) -> str:
        job.log.info("the file's sha256 is unknown; hashing it where it is")
        result = executor.call("sha256", {"path": source}, cancel=self.ctx.cancel)
        return str(result["sha256"])

    def verify(self, job: Job) -> Outcome:
        file = job.file_or_fail
        handles = dict(job.handles)
        if handles.get("plain") and handles.get(self.plain_copy):
            return Outcome(handles=handles)
        if handles.get("oid") and handles.get("size") == file.size:
            return Outcome(handles=handles, sha256=str(handles["oid"]))
        job.reset_pieces()
        raise Retryable(
            "no upload of this file is recorded; uploading it again", error_class=ErrorClass.INTEGRITY
        )

    # -- per snapshot -----------------------------------------------------------------------------

    def finish_snapshot(self, job: Job) -> Outcome:
        executor = self._executor_for(job)
        remote = self.remote(job)
        files: list[dict[str, Any]] = []
        for member in job.snapshot_files:
            file, locations = member.file, member.locations
            pushed = locations.get(self.name, {})
            entry: dict[str, Any] = {
                "path": file.path,
                "size": file.size,
                "source": self._source(job, file, locations),
            }
            if wants_lfs(file.path, file.size, file.lfs):
                oid = pushed.get("oid") or file.sha256
                if not oid:
                    raise Retryable(
                        f"{file.path} has no recorded LFS object yet", error_class=ErrorClass.INTEGRITY
                    )
                entry.update(lfs=True, oid=oid)
            else:
                entry.update(lfs=False, blob=pushed.get("blob") or file.git_blob_id)
            files.append(entry)
        paths = sorted(f["path"] for f in files)
        previous = job.previous_snapshot_handles or {}
        removed: list[str] = []
        if previous.get("remote") == remote and previous.get("branch") == self.section.branch:
            removed = sorted(set(previous.get("paths") or []) - set(paths))
        params = {
            **self._common(job, executor),
            "branch": self.section.branch,
            "files": files,
            "removed": removed,
            "force_push": self.section.force_push,
            "message": self._message(job),
        }

        def on_event(event: dict[str, Any]) -> None:
            kind = event.get("event")
            if kind == "stage":
                job.log.info("publish: %s", " ".join(f"{k}={v}" for k, v in event.items() if k != "event"))
            elif kind == "progress":
                job.add_progress(0)
            elif kind == "retry":
                job.log.info("retrying %s: %s", event.get("what"), event.get("error"))

        try:
            result = executor.call(
                "git_publish",
                params,
                secrets={"token": self._token(), "proxy": self.section.proxy},
                on_event=on_event,
                cancel=self.ctx.cancel,
            )
        except Retryable as exc:
            if exc.error_class is ErrorClass.MISMATCH:
                raise measured_wrong(exc, [str(f["oid"]) for f in files if f.get("lfs")]) from exc
            raise
        commit = str(result["commit"])
        job.log.info(
            "published %s to %s %s (%s, %d removed, %d object(s) confirmed)",
            commit[:12],
            self.destination(job),
            self.section.branch,
            "pushed" if result.get("pushed") else "already there",
            len(removed),
            int(result.get("confirmed") or 0),
        )
        return Outcome(
            handles={
                "commit": commit,
                "branch": self.section.branch,
                "remote": remote,
                "parent": result.get("parent") or None,
                "paths": paths,
            }
        )

    def _message(self, job: Job) -> str:
        kind = job.repo.repo_type or "model"
        return (
            f"Relay {job.repo.name} at {job.commit[:12]} from Hugging Face\n\n"
            f"Hugging Face {kind} {job.repo.name}, commit {job.commit} (revision {job.repo.revision}).\n\n"
            f"Relayed-by: relayd {__version__}\n"
            f"HF-Repo: {job.repo.name}\n"
            f"HF-Commit: {job.commit}\n"
        )

    # -- operations -------------------------------------------------------------------------------

    @classmethod
    def checks(cls, section: ModelScopeConfig, scope: CheckScope) -> Sequence[Check]:
        """Return the token's check; git and git-lfs on this machine when a route pushes from staging;
        one check per destination repo (the agent's ``lfs_check`` where the route pushes from: the
        remote exists and accepts the token on the git and LFS legs); while no repo pushes, whether the
        remote's host answers this machine."""
        checks = [Check(GROUP, "modelscope token", lambda: [token_finding(section)])]
        if any(not pushes_from_vm(route) for route in scope.routes):
            checks.append(_local_git_check(scope))
        for name, target, on_vm in destinations(scope, checks):
            owner, repo_name = target.split("/", 1)
            remote = section.remote.format(owner=owner, name=repo_name)
            git_lfs = (
                {"vm git-lfs": "git-lfs on the VM"} if on_vm else {"local git-lfs": "git-lfs on this machine"}
            )
            checks.append(
                Check(
                    GROUP,
                    name,
                    _destination_check(section, scope, on_vm, remote, name),
                    f"check [modelscope] remote ({public_url(remote)}) and the network path to it",
                    needs={"modelscope token": "the ModelScope token", **git_lfs},
                )
            )
        if not scope.repos:
            checks.append(_endpoint_check(section, scope))
        return checks

    def close(self) -> None:
        with self._lock:
            local, self._local = self._local, None
        if local is not None:
            local.close()
