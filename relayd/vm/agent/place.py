"""The vm_pull hop's operations on files already on the VM or on this machine.

``pull_finish`` hashes the partial (or an already renamed target) and renames it; ``piece_hashes``
hashes given ranges (to find bad pieces against a known-good copy); ``place_file`` takes a file that
is already on this machine (hard link, else a copy piece by piece), verified the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Any

from .core import AgentError, Context, op
from .files import (
    HASH_CHUNK,
    PARTIAL_SUFFIX,
    PrefixHasher,
    as_pieces,
    check_space,
    finalize,
    hash_file,
    open_partial,
    resolve_target,
)


@op("pull_finish")
def pull_finish(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Hash the complete partial file (or the target, if a crash came after its rename) and rename
    it into place when its sha256 is ``expected_sha256``. Return ``{"path", "sha256", "sha1",
    "size", "renamed"}``; raise ``partial_lost`` when neither file is there."""
    target = resolve_target(params["root"], params["relpath"])
    partial = target + PARTIAL_SUFFIX
    expected = params.get("expected_sha256")
    source = partial if os.path.isfile(partial) else target
    if not os.path.isfile(source):
        raise AgentError("neither %s nor its partial file is on the VM" % target, error_class="partial_lost")
    sha256, sha1, size = hash_file(source, context, bool(params.get("sha1", True)))
    renamed = source == target
    if sha256 == expected and size == int(params["size"]) and source == partial:
        fd = os.open(partial, os.O_RDONLY)
        try:
            finalize(fd, partial, target)
        finally:
            os.close(fd)
        renamed = True
    return {
        "path": target,
        "sha256": sha256,
        "sha1": sha1,
        "size": size,
        "renamed": renamed and sha256 == expected,
    }


@op("piece_hashes")
def piece_hashes(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Return the sha256 of each given piece of the partial file (or *path*): ``{"hashes": {i: hex}}``."""
    if params.get("path"):
        path = str(params["path"])
    else:
        path = resolve_target(params["root"], params["relpath"]) + PARTIAL_SUFFIX
    hashes = {}
    fd = os.open(path, os.O_RDONLY)
    try:
        for index, offset, length in as_pieces(params["pieces"]):
            context.check_cancelled()
            digest = hashlib.sha256()
            position, end = offset, offset + length
            while position < end:
                data = os.pread(fd, min(HASH_CHUNK, end - position), position)
                if not data:
                    break
                digest.update(data)
                position += len(data)
            hashes[str(index)] = digest.hexdigest()
    finally:
        os.close(fd)
    return {"hashes": hashes}


@op("place_file")
def place_file(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Put a file already on this machine (``source``) at the target: a hard link when the
    filesystem allows it, else a copy of the missing pieces (each fsynced before ``piece_done``);
    verified by sha256 before the rename. Return ``{"path", "sha256", "sha1", "renamed", "method"}``."""
    source = str(params["source"])
    target = resolve_target(params["root"], params["relpath"])
    partial = target + PARTIAL_SUFFIX
    size = int(params["size"])
    plan = as_pieces(params["plan"])
    missing_set = set(int(i) for i in params["missing"])
    if not os.path.isfile(source) or os.stat(source).st_size != size:
        raise AgentError("the staged copy %s is gone or changed" % source, error_class="staging")
    method = "copy"
    if bool(params.get("fresh")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        try:
            os.link(source, partial)
            method = "link"
        except OSError:
            method = "copy"
    if method == "link":
        sha256, sha1, _ = hash_file(partial, context, bool(params.get("sha1", True)))
        for index in sorted(missing_set):
            context.emit("piece_done", index=index)
    else:
        fd = open_partial(partial, size, bool(params.get("fresh")))
        source_fd = os.open(source, os.O_RDONLY)
        try:
            check_space(partial, size if params.get("fresh") else 0)
            hasher = PrefixHasher(
                fd, plan, {p[0] for p in plan} - missing_set, context, bool(params.get("sha1", True))
            )
            hasher.start()
            try:
                for index, offset, length in plan:
                    if index not in missing_set:
                        continue
                    if context.cancelled:
                        hasher.stop()
                        context.check_cancelled()
                    context.emit("piece_start", index=index)
                    position, end = offset, offset + length
                    while position < end:
                        data = os.pread(source_fd, min(HASH_CHUNK, end - position), position)
                        if not data:
                            raise AgentError("the staged copy ended early", error_class="staging")
                        os.pwrite(fd, data, position)
                        position += len(data)
                    os.fdatasync(fd)
                    context.emit("progress", bytes=length)
                    context.emit("piece_done", index=index)
                    hasher.mark_done(index)
                sha256, sha1 = hasher.finish()
            except BaseException:
                hasher.stop()
                raise
        finally:
            os.close(source_fd)
            os.close(fd)
    renamed = False
    if sha256 == params.get("expected_sha256"):
        fd = os.open(partial, os.O_RDONLY)
        try:
            finalize(fd, partial, target)
        finally:
            os.close(fd)
        renamed = True
    return {"path": target, "sha256": sha256, "sha1": sha1, "renamed": renamed, "method": method}
