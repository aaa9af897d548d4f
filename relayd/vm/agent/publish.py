"""Publish one snapshot as one commit (``git_publish``), plus ``git_blob`` and ``lfs_check``.

The commit is built with plumbing in a small scratch bare repository: fetch the branch tip (depth 1),
read its tree into a private index, write LFS pointers and small files as blobs, merge
``.gitattributes`` so every pointer is covered by ``filter=lfs``, drop the paths removed upstream,
``write-tree``, ``commit-tree``, check that the commit holds every path of the snapshot (git drops a
path it refuses with only a warning), and push, with git-lfs's pre-push hook installed as a safety net.
A rejected non-fast-forward is rebuilt on the new tip. Before reporting success every object of the
snapshot is confirmed present with a batch ``download`` request.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import shutil
import tempfile
from typing import Any

from .core import AgentError, Context, op
from .git_runner import GitRunner, git_failure, open_scratch
from .lfs_answers import tail
from .lfs_files import LFS_ATTRIBUTES, OID, attribute_pattern, check_path, merge_attributes, pointer
from .lfs_upload import make_client, upload_objects, with_retries

NULL_SHA = "0" * 40
_SHA = re.compile(r"^[0-9a-f]{40}$")


@op("git_blob")
def git_blob(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Store the small file ``path`` as a blob in the scratch repository of ``remote`` and return
    ``{"blob": <git blob id>, "size": n}``; check it against ``expect_blob`` when given."""
    path = str(params.get("path") or "")
    if not os.path.isfile(path):
        raise AgentError("%s is not on the VM" % path, kind="retryable", error_class="missing")
    runner = open_scratch(params, secrets, context)
    blob = runner.output(["hash-object", "-w", "--no-filters", "--", path])
    expected = params.get("expect_blob")
    if expected and expected != blob:
        raise AgentError(
            "the file %s on the VM is not the upstream content (git blob %s, expected %s)"
            % (path, blob, expected),
            kind="blocked",
            error_class="integrity",
            hint="delete the copy on the VM and run `relayctl retry` so that it is fetched again",
        )
    return {"blob": blob, "size": os.path.getsize(path)}


def _filters(runner: GitRunner, paths: list[str], env: dict[str, str]) -> dict[str, str]:
    """Return path → the value of the ``filter`` attribute as the index's .gitattributes say."""
    if not paths:
        return {}
    data = b"".join(p.encode("utf-8") + b"\0" for p in paths)
    out = runner.run(["check-attr", "--cached", "-z", "--stdin", "filter"], data=data, env=env)[1]
    fields = out.split(b"\0")
    result = {}
    for index in range(0, len(fields) - 2, 3):
        result[fields[index].decode("utf-8")] = fields[index + 2].decode("utf-8")
    return result


# -- the publish -----------------------------------------------------------------------------------------


def _remote_tip(runner: GitRunner, remote: str, branch: str, repo: str) -> str | None:
    code, out, err = runner.run(["ls-remote", "--", remote, "refs/heads/" + branch], check=False)
    if code != 0:
        raise git_failure("git ls-remote", err, repo)
    for line in out.decode("utf-8", "replace").splitlines():
        sha, _, ref = line.partition("\t")
        if ref.strip() == "refs/heads/" + branch and _SHA.match(sha):
            return sha
    return None


def _rejected(stdout: str, stderr: str) -> bool:
    text = (stdout + "\n" + stderr).lower()
    return any(
        marker in text
        for marker in ("non-fast-forward", "fetch first", "[rejected]", "stale info", "cannot lock ref")
    )


def _build(
    runner: GitRunner,
    parent: str | None,
    files: list[dict[str, Any]],
    removed: list[str],
    scratch: str,
) -> tuple[str, dict[str, str | None]]:
    """Build the snapshot's tree on top of *parent*'s; return its id and what each of the snapshot's
    paths must hold in it ({path: blob id, or None for .gitattributes, which is merged})."""
    handle, index = tempfile.mkstemp(prefix="index-", dir=scratch)
    os.close(handle)
    os.unlink(index)  # git wants to create it itself
    env = {"GIT_INDEX_FILE": index}
    pointers_dir = tempfile.mkdtemp(prefix="pointers-", dir=scratch)
    try:
        if parent:
            runner.run(["read-tree", parent], env=env)
        else:
            runner.run(["read-tree", "--empty"], env=env)
        wanted = {f["path"] for f in files}
        entries = ["0 %s\t%s" % (NULL_SHA, path) for path in removed if path not in wanted]
        expected: dict[str, str | None] = {}
        lfs_paths = []
        plain_paths = []
        # Pointers: tiny files written once, hashed by one git process.
        pointer_files = []
        for number, item in enumerate(f for f in files if f.get("lfs")):
            pointer_path = os.path.join(pointers_dir, str(number))
            with open(pointer_path, "wb") as out:
                out.write(pointer(item["oid"], item["size"]))
            pointer_files.append((item["path"], pointer_path))
        if pointer_files:
            listing = "".join(p + "\n" for _, p in pointer_files).encode()
            blobs = runner.output(
                ["hash-object", "-w", "--no-filters", "--stdin-paths"], data=listing
            ).split()
            for (path, _), blob in zip(pointer_files, blobs):
                entries.append("100644 %s\t%s" % (blob, path))
                lfs_paths.append(path)
                expected[path] = blob
        upstream_attributes = ""
        for item in files:
            if item.get("lfs"):
                continue
            blob = _plain_blob(runner, item)
            plain_paths.append(item["path"])
            if item["path"] == ".gitattributes":
                upstream_attributes = runner.output(["cat-file", "blob", blob])
                expected[".gitattributes"] = None
                continue
            expected[item["path"]] = blob
            entries.append(
                "%s %s\t%s" % ("100755" if item.get("executable") else "100644", blob, item["path"])
            )
        runner.run(
            ["update-index", "--add", "--replace", "-z", "--index-info"],
            data=b"".join(e.encode("utf-8") + b"\0" for e in entries),
            env=env,
        )
        existing = ""
        if parent:
            code, blob_bytes, _ = runner.run(["cat-file", "blob", parent + ":.gitattributes"], check=False)
            existing = blob_bytes.decode("utf-8", "replace") if code == 0 else ""
        lines = merge_attributes(existing, upstream_attributes)
        _stage_attributes(runner, lines, env)
        filters = _filters(runner, lfs_paths + plain_paths, env)
        additions = [
            "%s %s" % (attribute_pattern(p), LFS_ATTRIBUTES) for p in lfs_paths if filters.get(p) != "lfs"
        ]
        overrides = [
            "%s !filter !diff !merge text" % attribute_pattern(p)
            for p in plain_paths
            if filters.get(p) == "lfs" and p != ".gitattributes"
        ]
        if additions or overrides:
            lines = lines + (["", "# added by relayd"] if lines else []) + additions + overrides
            _stage_attributes(runner, lines, env)
            filters = _filters(runner, lfs_paths + plain_paths, env)
        wrong = [p for p in lfs_paths if filters.get(p) != "lfs"]
        wrong += [p for p in plain_paths if filters.get(p) == "lfs" and p != ".gitattributes"]
        if wrong:
            raise AgentError(
                ".gitattributes could not be made to cover %s" % ", ".join(wrong[:5]),
                kind="permanent",
                error_class="internal",
            )
        return runner.output(["write-tree"], env=env), expected
    finally:
        shutil.rmtree(pointers_dir, ignore_errors=True)
        for leftover in (index, index + ".lock"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def _check_tree(runner: GitRunner, commit: str, expected: dict[str, str | None]) -> None:
    """Raise a blocked AgentError unless the tree of *commit* holds every path of *expected* with its
    blob: git drops a path it refuses from the index with only a warning ("Ignoring path", exit 0)."""
    held = {}
    for record in runner.run(["ls-tree", "-r", "-z", "--full-tree", commit])[1].split(b"\0"):
        meta, _, path = record.partition(b"\t")
        if path:
            held[path] = meta.split()[-1].decode("ascii")
    wrong = [
        path
        for path, blob in sorted(expected.items())
        if held.get(path.encode("utf-8")) is None or (blob and held[path.encode("utf-8")] != blob)
    ]
    if wrong:
        raise AgentError(
            "git left %d path(s) of the snapshot out of its commit, so the snapshot would not be whole: %s"
            % (len(wrong), ", ".join(repr(p) for p in wrong[:5])),
            kind="blocked",
            error_class="path",
            hint="git refuses such paths, so this snapshot cannot be relayed as is: exclude them with the "
            "repo's globs (`relayctl add OWNER/NAME --replace --exclude GLOB`, repeating the repo's other "
            "options), or have them renamed upstream",
        )


def _stage_attributes(runner: GitRunner, lines: list[str], env: dict[str, str]) -> None:
    if not lines:
        runner.run(
            ["update-index", "--index-info"], data=("0 %s\t.gitattributes\n" % NULL_SHA).encode(), env=env
        )
        return
    text = "\n".join(lines) + "\n"
    blob = runner.output(["hash-object", "-w", "--stdin"], data=text.encode("utf-8"))
    runner.run(["update-index", "--add", "--cacheinfo", "100644,%s,.gitattributes" % blob], env=env)


def _plain_blob(runner: GitRunner, item: dict[str, Any]) -> str:
    """Return the blob of a plain file: the one staged earlier (``blob``) if the scratch repository
    still has it, else hashed now from ``source``."""
    blob = item.get("blob")
    if blob and _SHA.match(str(blob)):
        code, _, _ = runner.run(["cat-file", "-e", "%s^{blob}" % blob], check=False)
        if code == 0:
            return str(blob)
    source = item.get("source")
    if source and os.path.isfile(source):
        made = runner.output(["hash-object", "-w", "--no-filters", "--", source])
        if blob and made != blob:
            raise AgentError(
                "the file %s on the VM is not the upstream content of %s" % (source, item["path"]),
                kind="blocked",
                error_class="integrity",
                hint="delete the copy on the VM and run `relayctl retry` so that it is fetched again",
            )
        return made
    raise AgentError(
        "the content of %s is neither in the scratch repository nor on the VM" % item["path"],
        kind="blocked",
        error_class="missing",
        hint="the file must be on the VM again (run `relayctl retry` on its earlier hops)",
    )


@op("git_publish")
def git_publish(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Publish one snapshot as one commit on ``branch`` of ``remote``.

    Params: ``remote``, ``branch``, ``work_dir`` (for the scratch repository), ``message``,
    ``files`` ([{path, size, lfs, oid (LFS), blob (plain, staged by git_blob), source (path on the
    VM)}]), ``removed`` (paths to delete), ``force_push``, ``activity_timeout``, ``attempts`` (pushes
    rejected as non-fast-forward that are rebuilt before giving up).

    Result: ``{"commit", "parent", "tree", "pushed", "rebuilt", "uploaded", "confirmed"}``.
    """
    remote = str(params.get("remote") or "")
    branch = str(params.get("branch") or "master")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", branch) or ".." in branch:
        raise AgentError("invalid branch name %r" % branch, kind="permanent", error_class="config")
    files = list(params.get("files") or [])
    for item in files:
        check_path(str(item.get("path")))
        if item.get("lfs") and (not OID.match(str(item.get("oid"))) or not isinstance(item.get("size"), int)):
            raise AgentError(
                "LFS file %s has no valid oid" % item.get("path"), kind="permanent", error_class="protocol"
            )
    removed = [check_path(str(p)) for p in params.get("removed") or []]
    force = bool(params.get("force_push"))
    attempts = int(params.get("attempts") or 5)
    client = make_client(params, secrets, context)
    runner = open_scratch(params, secrets, context)
    ref = "refs/heads/" + branch
    lfs_objects = []
    seen = set()
    for item in files:
        if item.get("lfs") and item["oid"] not in seen:
            seen.add(item["oid"])
            lfs_objects.append({"oid": item["oid"], "size": item["size"], "path": item.get("source")})

    with open(runner.git_dir + ".publish.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Every object must be on the server before a pointer to it is pushed: normally one batch
        # request that skips them all; an object the server lost is sent again from the VM's file.
        context.emit("stage", step="objects", count=len(lfs_objects))
        objects = upload_objects(client, lfs_objects, ref, int(params.get("upload_attempts") or 3))
        uploaded = [r for r in objects if not r["skipped"]]
        # git-lfs (3.3.0, checked) waits for ever on an object a server leaves out of its batch
        # answer; every object was just found on the server, so its pre-push hook is told to skip.
        push_env = {"GIT_LFS_SKIP_PUSH": "1"} if any(r.get("omitted") for r in objects) else None
        commit = parent = tree = ""
        pushed = False
        rebuilt = 0
        for attempt in range(1, attempts + 1):
            context.check_cancelled()
            context.emit("stage", step="fetch", attempt=attempt)
            tip = with_retries(
                context, 3, lambda: _remote_tip(runner, remote, branch, client.repo), "ls-remote"
            )
            if tip:
                code, _, _ = runner.run(["cat-file", "-e", tip + "^{commit}"], check=False)
                if code != 0:
                    with_retries(
                        context,
                        3,
                        functools.partial(_fetch, runner, remote, branch, client.repo),
                        "fetch",
                    )
            parent = tip or ""
            context.emit("stage", step="build", parent=parent)
            tree, expected = _build(runner, tip, files, removed, runner.git_dir)
            if tip and runner.output(["rev-parse", tip + "^{tree}"]) == tree:
                commit = tip  # already published (e.g. a crash after the push): nothing to add
                _check_tree(runner, commit, expected)
                break
            message = str(params.get("message") or "Relay a snapshot")
            commit = runner.output(
                ["commit-tree", tree] + (["-p", tip] if tip else []) + ["-F", "-"],
                data=message.encode("utf-8"),
            )
            # Every path in the commit, checked before it is pushed: a snapshot missing a file is
            # never published, let alone called done.
            _check_tree(runner, commit, expected)
            context.emit("stage", step="push", commit=commit)
            refspec = ("+" if force else "") + commit + ":" + ref
            code, out, err = runner.run(
                ["push", "--porcelain", "--", remote, refspec], env=push_env, check=False
            )
            if code == 0:
                pushed = True
                break
            stdout = runner.scrub(out.decode("utf-8", "replace"))
            if not force and _rejected(stdout, err):
                rebuilt += 1
                context.emit("stage", step="rejected", attempt=attempt)
                continue
            raise git_failure("git push", err + "\n" + stdout, client.repo)
        else:
            raise AgentError(
                "the branch %s kept moving while relayd pushed (%d attempts)" % (branch, attempts),
                kind="retryable",
                error_class="conflict",
            )
        context.emit("stage", step="confirm", count=len(lfs_objects))
        missing = with_retries(
            context,
            3,
            lambda: client.missing([{"oid": o["oid"], "size": o["size"]} for o in lfs_objects]),
            "confirm",
        )
        if missing:
            raise AgentError(
                "%d LFS object(s) of the snapshot are not on the server after the push (first %s)"
                % (len(missing), missing[0][:12]),
                kind="retryable",
                error_class="integrity",
            )
    return {
        "commit": commit,
        "parent": parent,
        "tree": tree,
        "pushed": pushed,
        "rebuilt": rebuilt,
        "uploaded": len(uploaded),
        "confirmed": len(lfs_objects),
    }


def _fetch(runner: GitRunner, remote: str, branch: str, repo: str) -> None:
    code, _, err = runner.run(
        [
            "fetch",
            "--quiet",
            "--no-tags",
            "--depth=1",
            "--",
            remote,
            "+refs/heads/%s:refs/remotes/origin/%s" % (branch, branch),
        ],
        check=False,
    )
    if code != 0:
        raise git_failure("git fetch", err, repo)


@op("lfs_check")
def lfs_check(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Check that ``remote`` exists and accepts the token on both legs (git and LFS); return the
    branch tip (or None) and the git and git-lfs versions on the VM."""
    client = make_client(params, secrets, context)
    client.batch("upload", [], "refs/heads/" + str(params.get("branch") or "master"))
    runner = open_scratch(params, secrets, context)
    tip = _remote_tip(runner, client.remote, str(params.get("branch") or "master"), client.repo)
    code, out, err = runner.run(["lfs", "version"], check=False)
    if code != 0:
        raise AgentError(
            "git-lfs is not usable on the VM: %s" % tail(err, 300),
            kind="blocked",
            error_class="setup",
            hint="install git-lfs on the VM (e.g. apt-get install git-lfs)",
        )
    return {
        "branch_head": tip,
        "git": runner.output(["--version"]),
        "git_lfs": out.decode("utf-8", "replace").strip(),
    }
