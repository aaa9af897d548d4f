"""What relayd creates is its user's alone, whatever umask it was started with: the state directory,
the catalogue and its lock, staging and its blobs, the drive's rotated tokens, and the VM's files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from relayd_sandbox.hub import make_model_repo
from relayd_sandbox.route import NAME, OWNER, REPO, RouteSandbox

pytestmark = pytest.mark.timeout(300)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run(box: RouteSandbox, *args: str) -> None:
    """Run relayctl (a command) or relayd run --once ("run") under umask 022, as a login shell gives."""
    old = os.umask(0o022)
    try:
        if args == ("run",):
            daemon = box.start_daemon("--once")
            assert daemon.wait(240) == 0, box.log_path.read_text()[-3000:]
        else:
            result = box.relayctl(*args)
            assert result.returncode == 0, result.stderr
    finally:
        os.umask(old)


def test_files_relayd_creates_are_private(local_route: RouteSandbox) -> None:
    box = local_route
    assert box.hub is not None
    # A repo over the whole route (drive, VM), then a mirror in staging (its blobs stay there).
    run(box, "add", REPO)
    state = box.root / "state"
    assert mode(state / "catalogue.db") == 0o600  # created by relayctl
    run(box, "run")
    make_model_repo(box.hub, f"{OWNER}/mirror", shards=1, shard_size=256 * 1024, seed=7)
    run(box, "add", f"{OWNER}/mirror", "--route", "download")
    run(box, "run")
    repos = {repo["name"]: repo for repo in json.loads(box.relayctl("status", "--json").stdout)["repos"]}
    assert repos[REPO]["snapshot"]["state"] == "done"

    assert mode(state) == 0o700
    for name in ("catalogue.db", "catalogue.db.lock"):
        assert mode(state / name) == 0o600, name
    staging = box.root / "staging"
    blobs = [path for path in (staging / "blobs").rglob("*") if path.is_file()]
    assert blobs, "the mirror's blobs stay in staging"
    for path in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
        assert mode(path) == 0o700, path
    for path in blobs:
        assert mode(path) == 0o600, path
    tokens = [path for path in (state / "drive").rglob("*") if path.is_file()]
    assert tokens, "the drive's rotated tokens are kept in the state directory"
    for path in tokens:
        assert mode(path) == 0o600, path
    landed = [path for path in (box.vm_root / OWNER / NAME).rglob("*") if path.is_file()]
    assert landed, "the repo's files are on the VM"
    for path in landed:
        assert mode(path) == 0o600, path
        assert mode(path.parent) == 0o700, path.parent
