"""lfs_push: disk on the VM side, a re-run's object bytes, and upload throughput against git-lfs.

Usage: .venv/bin/python bench/lfs_bench.py [--size "4 GiB"] [--shards 4] [--dir /work]

LFS_BENCH_LANES (default 2, the hop's default concurrency) sets how many objects are uploaded at once,
by relayd and by git-lfs (lfs.concurrenttransfers) alike.

One sandbox git + LFS server (sandbox/relayd_sandbox/gitlfs.py) on 127.0.0.1, in its own process, serves
both sides:

1. relayd: the agent's ``lfs_upload`` (two objects at a time, as the hop runs with concurrency 2) and
   ``git_publish``, through the local VM executor, from a "VM" directory holding a model of --size
   bytes in --shards safetensors shards. The VM side's disk (the model's directory, the scratch work
   directory and the agent cache) is sampled every 200 ms; its peak is compared with the model size.
2. The same two ops again: the server must receive 0 object bytes.
3. ``git lfs push --object-id`` of the same objects to a fresh repository on the same server, the
   objects hard-linked into ``.git/lfs/objects`` (the baseline's own setup, not timed).

Throughput is object bytes / wall time of the object uploads only (batch + PUT + verify), for both,
over --rounds rounds to fresh repos in alternating order; the median ratio is reported, since a
shared machine's load varies from one minute to the next.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from relayd.config import VmConfig
from relayd.units import format_size, parse_size
from relayd.vm.executor import LocalExecutor
from relayd_sandbox.gitlfs import GitLfsServer

OWNER = "bench"
LANES = int(os.environ.get("LFS_BENCH_LANES", "2"))
HELPER = '!f() { test "$1" = get && echo username=oauth2 && echo "password=$MS_TOKEN"; }; f'


class ServerProcess:
    """The sandbox server in its own process (as a real server is: it must not share this
    harness's interpreter lock), driven by one-line commands on its stdin."""

    def __init__(self, root: Path) -> None:
        self.token = secrets.token_hex(16)
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "LFS_BENCH_TOKEN": self.token},
        )
        self.base_url = self._ask("url")

    def _ask(self, command: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def remote_url(self, owner: str, name: str) -> str:
        return f"{self.base_url}/{owner}/{name}.git"

    def new_repo(self, owner: str, name: str) -> None:
        self._ask(f"new {owner} {name}")

    def drop_objects(self, owner: str, name: str) -> None:
        self._ask(f"drop {owner} {name}")

    def put_bytes(self) -> int:
        return int(self._ask("put_bytes"))

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


def serve(root: Path) -> int:
    """Serve the sandbox until stdin ends, answering the commands of ServerProcess."""
    with GitLfsServer(root, token=os.environ["LFS_BENCH_TOKEN"]) as server:
        for line in sys.stdin:
            words = line.split()
            if words[0] == "url":
                answer = server.base_url
            elif words[0] == "new":
                server.new_repo(words[1], words[2])
                answer = "ok"
            elif words[0] == "drop":
                shutil.rmtree(server.store.repo_dir(words[1], words[2]), ignore_errors=True)
                answer = "ok"
            else:
                answer = str(server.counters().put_bytes)
            sys.stdout.write(answer + "\n")
            sys.stdout.flush()
    return 0


def disk_usage(paths: list[Path]) -> int:
    """Return the bytes allocated under *paths* (st_blocks, hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in paths:
        for directory, _dirs, files in os.walk(root):
            for name in files:
                try:
                    info = os.lstat(os.path.join(directory, name))
                except OSError:
                    continue
                key = (info.st_dev, info.st_ino)
                if key not in seen:
                    seen.add(key)
                    total += info.st_blocks * 512
    return total


class PeakDisk:
    """Sample the disk used under some directories in a thread; keep the peak."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, disk_usage(self.paths))
            self._stop.wait(0.2)

    def __enter__(self) -> PeakDisk:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, disk_usage(self.paths))


def make_model(folder: Path, size: int, shards: int) -> dict[str, tuple[str, int]]:
    """Write a model of *size* random bytes in *shards* files; return path → (sha256, size)."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[str, int]] = {}
    per = size // shards
    for index in range(shards):
        name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        digest = hashlib.sha256()
        left = per if index < shards - 1 else size - per * (shards - 1)
        with (folder / name).open("wb") as out:
            while left:
                chunk = os.urandom(min(left, 16 * 1024 * 1024))
                digest.update(chunk)
                out.write(chunk)
                left -= len(chunk)
        files[name] = (digest.hexdigest(), (folder / name).stat().st_size)
    (folder / "config.json").write_text('{"model_type": "bench"}\n')
    (folder / "README.md").write_text("# bench model\n")
    return files


def relayd_push(
    executor: LocalExecutor,
    server: ServerProcess,
    name: str,
    vm: Path,
    work: Path,
    files: dict[str, tuple[str, int]],
) -> tuple[float, dict[str, Any]]:
    """Upload the objects two at a time, then publish; return (upload seconds, publish result)."""
    remote = server.remote_url(OWNER, name)
    common = {"remote": remote, "work_dir": str(work), "activity_timeout": 3600}
    objects = [{"oid": oid, "size": size, "path": str(vm / path)} for path, (oid, size) in files.items()]
    lanes = [objects[i::LANES] for i in range(LANES)]
    errors: list[BaseException] = []

    def lane(items: list[dict[str, Any]]) -> None:
        try:
            for item in items:
                executor.call(
                    "lfs_upload",
                    {**common, "ref": "refs/heads/master", "objects": [item], "verify": "stat"},
                    secrets={"token": server.token},
                )
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=lane, args=(items,)) for items in lanes if items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    upload_seconds = time.monotonic() - started
    if errors:
        raise errors[0]
    entries: list[dict[str, Any]] = [
        {"path": path, "size": size, "lfs": True, "oid": oid, "source": str(vm / path)}
        for path, (oid, size) in files.items()
    ]
    for plain in ("config.json", "README.md"):
        entries.append(
            {"path": plain, "size": (vm / plain).stat().st_size, "lfs": False, "source": str(vm / plain)}
        )
    result = executor.call(
        "git_publish",
        {**common, "branch": "master", "files": entries, "message": "bench\n"},
        secrets={"token": server.token},
    )
    return upload_seconds, result


def git_lfs_push(
    server: ServerProcess, root: Path, vm: Path, files: dict[str, tuple[str, int]], name: str
) -> float:
    """Time `git lfs push --object-id` of the same objects to the fresh repo *name*; return seconds."""
    server.new_repo(OWNER, name)
    home = root / "git-home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "MS_TOKEN": server.token,
    }
    repo = root / name

    def git(*args: str) -> None:
        subprocess.run(
            [
                "git",
                "-c",
                "credential.helper=",
                "-c",
                f"credential.helper={HELPER}",
                "-c",
                "lfs.locksverify=false",
                "-c",
                "lfs.activitytimeout=3600",
                "-c",
                f"lfs.concurrenttransfers={LANES}",  # the same concurrency as relayd's lanes
                *args,
            ],
            cwd=repo,
            env=env,
            check=True,
            capture_output=True,
        )

    repo.mkdir()
    git("init", "-q")
    git("lfs", "install", "--local")
    git("remote", "add", "origin", server.remote_url(OWNER, name))
    for path, (oid, _size) in files.items():
        target = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(vm / path, target)  # the baseline's objects, without a copy
    started = time.monotonic()
    git("lfs", "push", "--object-id", "origin", *[oid for oid, _ in files.values()])
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="4 GiB")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (alternating order)")
    parser.add_argument(
        "--dir", default=None, help="where to put the model and the server (default: a temp dir)"
    )
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(Path(args.serve))
    size = parse_size(args.size)
    root = Path(tempfile.mkdtemp(prefix="relayd-lfs-bench-", dir=args.dir))
    try:
        vm = root / "vm" / "acme" / "model"
        work = root / "vm" / ".relayd-git"
        agent_cache = Path.home() / ".cache" / "relayd"
        print(f"writing a {format_size(size)} model in {args.shards} shards under {vm}")
        files = make_model(vm, size, args.shards)
        model_bytes = disk_usage([vm])
        server = ServerProcess(root / "server")
        try:
            server.new_repo(OWNER, "model")
            executor = LocalExecutor(
                VmConfig(
                    executor="local",
                    root=str(root / "vm"),
                    host="",
                    port=22,
                    user="",
                    identity_file=None,
                    known_hosts_file=None,
                    ssh_config_file=None,
                    strict_host_key_checking="yes",
                    ssh_options=(),
                    ssh_multiplex=False,
                    python="python3",
                    path="",
                    concurrency=2,
                    connections=2,
                    piece_size=64 << 20,
                    from_staging=False,
                )
            )
            with PeakDisk([root / "vm", agent_cache]) as peak:
                _, first = relayd_push(executor, server, "model", vm, work, files)
            pushed = server.put_bytes()
            assert pushed == size, (pushed, size)
            before = server.put_bytes()
            rerun_upload, second = relayd_push(executor, server, "model", vm, work, files)
            rerun_bytes = server.put_bytes() - before
            # Throughput rounds, each to fresh repos on the same server, in alternating order so that
            # both sides see the same load (the machine may be shared).
            rounds: list[tuple[float, float]] = []
            for number in range(args.rounds):
                times: dict[str, float] = {}
                order = ("relayd", "git-lfs") if number % 2 else ("git-lfs", "relayd")
                for side in order:
                    os.sync()  # start each side with the same (empty) writeback queue
                    if side == "relayd":
                        server.new_repo(OWNER, f"model-{number}")
                        times[side] = relayd_push(executor, server, f"model-{number}", vm, work, files)[0]
                    else:
                        mark = server.put_bytes()
                        times[side] = git_lfs_push(server, root, vm, files, f"baseline-{number}")
                        assert server.put_bytes() - mark == size  # the baseline sent everything
                rounds.append((times["relayd"], times["git-lfs"]))
                for repo in (f"model-{number}", f"baseline-{number}"):
                    server.drop_objects(OWNER, repo)
        finally:
            server.close()
        print(f"model: {format_size(size)} ({args.shards} objects), on disk {format_size(model_bytes)}")
        print(
            f"VM-side disk peak during the push: {format_size(peak.peak)} = "
            f"{peak.peak / size:.3f}x the model (scratch work dir {format_size(disk_usage([work]))})"
        )
        print(f"first push: commit {first['commit'][:12]}")
        print(f"re-run: {rerun_bytes} object bytes sent, pushed={second['pushed']} ({rerun_upload:.2f} s)")
        ratios = []
        for number, (ours_s, theirs_s) in enumerate(rounds, 1):
            ratio = ours_s and theirs_s / ours_s
            ratios.append(ratio)
            print(
                f"round {number}: relayd {ours_s:.1f} s = {size / ours_s / 2**20:.0f} MiB/s, git lfs push "
                f"{theirs_s:.1f} s = {size / theirs_s / 2**20:.0f} MiB/s, ratio {ratio:.2f}"
            )
        median = statistics.median(ratios)
        print(f"relayd / git-lfs throughput (median of {len(ratios)}): {median:.2f}")
        ok = peak.peak <= 1.1 * size and rerun_bytes == 0 and median >= 0.9
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
