"""ms_upload: the files become one commit per snapshot in a ModelScope repo through its HTTP upload API.

The path ModelScope's own SDK takes (``HubApi.upload_folder``), with no git and no git-lfs: a
pre-check says which blobs ModelScope lacks (a blob any ModelScope repo holds counts as present), each
missing one goes up in one ``PUT`` streamed from the file with the LFS client's hash guard, and one
commit names every file. It runs where the files are, through relayd's agent
(``relayd/vm/agent/ms_api.py``): on the VM where vm_pull put them, or on this machine from the staged
copies (a route ``download,ms_upload``). It reads ``[modelscope]`` like lfs_push (token, branch,
proxy; ``endpoint`` is the API's origin, by default that of ``remote``).

Per file (one piece: a PUT cannot resume inside a blob): an LFS file's blob is uploaded unless
ModelScope has it (handles ``{"oid", "size", "skipped", "sent"}``); a small or metadata file is kept
by the agent for the commit, checked against its upstream git blob id (``{"plain": true, "stash",
"size"}``). A blob over the server's size limit (413) blocks the file saying "split the file"; one
the server measured wrong is sent again once, then blocks (``IntegrityMismatch``).

Per snapshot (``finish_snapshot``): one commit on the branch (more when the snapshot has more than 256
files or 8 MiB of inline content), with a ``.gitattributes`` that covers every LFS path and the files
removed upstream since the last snapshot deleted. Handles: ``{"commit", "commits", "branch",
"endpoint", "repo", "remote", "paths"}``.

The token travels to the agent in the request's secrets only, and from there only to the API's origin.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from relayd.config import ModelScopeConfig
from relayd.errors import ErrorClass, NeedsPerson, Retryable
from relayd.health import OK, Check, CheckScope, Finding
from relayd.hops.base import Job, Outcome, PieceSpec, RepoInfo
from relayd.hops.lfs_push import (
    GROUP,
    SMALL_CALL_TIMEOUT,
    LfsPushHop,
    destinations,
    pushes_from_vm,
    token_finding,
)
from relayd.services import LOCAL_EXECUTOR
from relayd.vm.agent.lfs_files import wants_lfs
from relayd.vm.executor import Executor


def _destination_check(
    section: ModelScopeConfig, scope: CheckScope, on_vm: bool, target: str, name: str
) -> Callable[[], list[Finding]]:
    """Return the run of a destination's check: an empty pre-check from where the route uploads (the
    repo exists and the token may write to it)."""

    def run() -> list[Finding]:
        executor: Executor = scope.services.get("vm" if on_vm else LOCAL_EXECUTOR)
        params = {"endpoint": section.api_endpoint(), "repo": target, "objects": [], "attempts": 1}
        secrets = {"token": section.token.resolve() or "", "proxy": section.proxy}
        executor.call("ms_precheck", params, secrets=secrets, timeout=scope.timeout)
        return [Finding(GROUP, name, OK, f"{section.api_endpoint()} accepts the token for {target}")]

    return run


class MsUploadHop(LfsPushHop):
    """VM (or staging) → ModelScope via its HTTP upload API; see the module doc. It shares lfs_push's
    knowledge of where the files are and where they go (``[modelscope]``, the executors)."""

    #: What a plain (non-LFS) file's handles name once it is stashed for the commit.
    plain_copy = "stash"

    name = "ms_upload"
    short_name = "ms"

    def _params(self, job: Job, executor: Executor) -> dict[str, Any]:
        return {
            "endpoint": self.section.api_endpoint(),
            "repo": self.destination(job),
            "repo_type": job.repo.repo_type or "model",
            "work_dir": self._work_dir(job, executor),
            "activity_timeout": self.section.activity_timeout,
        }

    def _secrets(self) -> dict[str, str]:
        return {"token": self._token(), "proxy": self.section.proxy}

    # -- ask the end first -----------------------------------------------------------------------

    def held(self, repo: RepoInfo, contents: Sequence[tuple[str, int]]) -> set[str]:
        """Return the sha256s ModelScope holds for any repo (the pre-check), asked from where the
        route uploads."""
        if not contents:
            return set()
        executor = self._vm() if pushes_from_vm(repo.route) else self._staging_executor()
        target = str(repo.destinations.get("modelscope_repo") or repo.name)
        params = {
            "endpoint": self.section.api_endpoint(),
            "repo": target,
            "repo_type": repo.repo_type or "model",
            "objects": [{"oid": oid, "size": size} for oid, size in contents],
        }
        result = executor.call("ms_precheck", params, secrets=self._secrets(), cancel=self.ctx.cancel)
        return {str(oid) for oid in result.get("present") or []}

    # -- per file ---------------------------------------------------------------------------------

    def plan(self, job: Job) -> Sequence[PieceSpec]:
        return [PieceSpec(0, 0, job.file_or_fail.size)]

    def move(self, job: Job, missing: Sequence[PieceSpec]) -> None:
        file = job.file_or_fail
        executor = self._executor_for(job)
        source = self._source(job, file, job.locations)
        params = self._params(job, executor)
        if source is None and job.previous.get("skipped") and file.sha256:
            self._still_held(job, executor, params, file.sha256, file.size)
            return
        if source is None:
            where = "vm_pull left no path on the VM" if self._on_vm(job) else "no staged copy is recorded"
            raise NeedsPerson(
                f"the file is not where ms_upload can read it ({where})",
                hint="`relayctl retry` the earlier hops of the route, so that the file is there again",
                error_class=ErrorClass.MISSING,
            )
        if not wants_lfs(file.path, file.size, file.lfs):
            stashed = executor.call(
                "ms_stash",
                {"work_dir": params["work_dir"], "path": source, "expect_blob": file.git_blob_id},
                secrets=self._secrets(),
                cancel=self.ctx.cancel,
                timeout=SMALL_CALL_TIMEOUT,
            )
            # "blob": the git blob id the commit will hold (relayctl whereis names it).
            job.handles = {
                "plain": True,
                "stash": stashed["key"],
                "blob": file.git_blob_id,
                "size": file.size,
            }
            job.save_handles()
            job.piece_done(0)
            return
        self._send_object(job, executor, "ms_blobs", params, self._secrets(), source, "ModelScope")

    def _still_held(self, job: Job, executor: Executor, params: dict[str, Any], oid: str, size: int) -> None:
        """The earlier hops skipped the file because ModelScope held its blob when the snapshot was
        recorded: check that it still does (nothing to send), else have the route fetch it again."""
        result = executor.call(
            "ms_precheck",
            {**params, "objects": [{"oid": oid, "size": size}]},
            secrets=self._secrets(),
            cancel=self.ctx.cancel,
        )
        if oid not in (result.get("present") or []):
            reason = f"ModelScope no longer holds blob {oid[:12]}, which the earlier hops skipped"
            job.fetch_again(reason)
            raise Retryable(f"{reason}; it is fetched again", error_class=ErrorClass.REUSE)
        job.handles = {"oid": oid, "size": size, "skipped": True, "sent": 0}
        job.save_handles()
        job.piece_done(0)

    # -- per snapshot -----------------------------------------------------------------------------

    def finish_snapshot(self, job: Job) -> Outcome:
        executor = self._executor_for(job)
        params = self._params(job, executor)
        files: list[dict[str, Any]] = []
        for member in job.snapshot_files:
            file, done = member.file, member.locations.get(self.name, {})
            if wants_lfs(file.path, file.size, file.lfs):
                oid = done.get("oid") or file.sha256
                if not oid:
                    raise Retryable(f"{file.path} has no recorded blob yet", error_class=ErrorClass.INTEGRITY)
                files.append({"path": file.path, "lfs": True, "oid": oid, "size": file.size})
            elif done.get("stash"):
                files.append({"path": file.path, "stash": done["stash"]})
            else:
                raise Retryable(
                    f"{file.path} has no copy kept for the commit", error_class=ErrorClass.INTEGRITY
                )
        paths = sorted(f["path"] for f in files)
        previous = job.previous_snapshot_handles or {}
        removed: list[str] = []
        same = (previous.get("endpoint"), previous.get("repo"), previous.get("branch"))
        if same == (params["endpoint"], params["repo"], self.section.branch):
            removed = sorted(set(previous.get("paths") or []) - set(paths))

        def on_event(event: dict[str, Any]) -> None:
            if event.get("event") == "retry":
                job.log.info("retrying %s: %s", event.get("what"), event.get("error"))
            job.add_progress(0)

        result = executor.call(
            "ms_commit",
            {
                **params,
                "revision": self.section.branch,
                "message": self._message(job),
                "files": files,
                "removed": removed,
            },
            secrets=self._secrets(),
            on_event=on_event,
            cancel=self.ctx.cancel,
        )
        commits = [str(c) for c in result.get("commits") or []]
        job.log.info(
            "committed %s to %s %s through the HTTP API (%d action(s), %d removed)",
            ", ".join(c[:12] for c in commits),
            params["repo"],
            self.section.branch,
            int(result.get("actions") or 0),
            len(removed),
        )
        return Outcome(
            handles={
                "commit": str(result.get("commit") or ""),
                "commits": commits,
                "branch": self.section.branch,
                "endpoint": params["endpoint"],
                "repo": params["repo"],
                "remote": self.remote(job),  # where git clones it from (relayctl whereis)
                "paths": paths,
            }
        )

    # -- operations -------------------------------------------------------------------------------

    @classmethod
    def checks(cls, section: ModelScopeConfig, scope: CheckScope) -> Sequence[Check]:
        """Return the token's check and, per destination repo, an empty pre-check from where the route
        uploads (no git needed anywhere)."""
        checks = [Check(GROUP, "modelscope token", lambda: [token_finding(section)])]
        for name, target, on_vm in destinations(scope, checks):
            checks.append(
                Check(
                    GROUP,
                    name,
                    _destination_check(section, scope, on_vm, target, name),
                    f"check [modelscope] endpoint ({section.api_endpoint()}) and the network path to it",
                    needs={"modelscope token": "the ModelScope token"},
                )
            )
        return checks
