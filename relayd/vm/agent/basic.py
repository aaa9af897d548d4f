"""Operations every hop may need on the VM: what is installed, and file facts."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from typing import Any

from .core import AgentError, Context, op


def tool_version(command: list[str]) -> str:
    """Return the first line a tool prints for its version, or '' when it is missing or broken."""
    if shutil.which(command[0]) is None:
        return ""
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (output.stdout or output.stderr).strip().splitlines()[0] if output.returncode == 0 else ""


@op("check")
def check(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Report python, git and git-lfs versions and the free space under ``root``."""
    root = params.get("root") or "/"
    probe = root
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe.rstrip("/")) or "/"
    usage = shutil.disk_usage(probe or "/")
    return {
        "python": "%d.%d.%d" % sys.version_info[:3],
        "git": tool_version(["git", "--version"]),
        "git_lfs": tool_version(["git", "lfs", "version"]),
        "free": usage.free,
        "root_exists": os.path.isdir(root),
    }


@op("sha256")
def sha256(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Hash a file on the VM (sha256 and sha1), reporting progress."""
    path = params["path"]
    if not os.path.isfile(path):
        raise AgentError("%s does not exist on the VM" % path, kind="retryable", error_class="missing")
    digest256, digest1 = hashlib.sha256(), hashlib.sha1()
    done = 0
    with open(path, "rb") as handle:
        while True:
            context.check_cancelled()
            chunk = handle.read(8 * 1024 * 1024)
            if not chunk:
                break
            digest256.update(chunk)
            digest1.update(chunk)
            done += len(chunk)
            context.emit("hashed", bytes=done)
    return {"sha256": digest256.hexdigest(), "sha1": digest1.hexdigest(), "size": done}


@op("stat")
def stat(params: dict[str, Any], secrets: dict[str, str], context: Context) -> dict[str, Any]:
    """Return a path's size (or None when absent)."""
    path = params["path"]
    try:
        return {"size": os.stat(path).st_size}
    except FileNotFoundError:
        return {"size": None}
