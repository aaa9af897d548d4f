"""`relayd demo`: a whole relay on the local sandbox, verified end to end.

The demo starts the sandbox (a fake Hub with a generated model, the fake drive, the VM through SSH when
an sshd is available or locally, and a git + LFS server), a real daemon on a temporary catalogue, adds
the repo with relayctl, shows live progress per file and hop, and ends with a verification table: each
file's sha256 at the Hub, on the drive, on the VM and in a fresh clone of the pushed repo. Then it
commits a change upstream (one shard changed, one file removed) and shows that only that shard travels
and that the pushed repo matches the new revision, and last each hop's bytes moved (re-sends included)
beside what the sandbox's servers counted. It exits 0 only if everything verified and agreed.
``--local`` runs the short local_copy route instead (no network services at all).

The sandbox is a distribution of its own (``relayd-sandbox``, in the checkout's ``sandbox/``), imported
only here and only when the demo runs: without it the demo says how to install it.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from relayd.demo_sandbox import sandbox_missing
from relayd.demo_tables import print_route_table, print_table
from relayd.digest import sha256_file
from relayd.units import format_size, parse_size

DEMO_REPO = "demo/tiny-model"


@dataclass(frozen=True)
class DemoOptions:
    shards: int
    shard_size: int
    workdir: Path | None
    keep: bool
    timeout: float
    change: bool
    local: bool
    ssh: bool | None
    sites: int = 1  # 2: one daemon per site on a shared PostgreSQL catalogue (relayd.demo_sites)
    #: The drive backend the route uses: "aligo" (the web API) or "open" (the Open Platform).
    drive: str = "aligo"


def progress_line(document: dict[str, Any]) -> str:
    """One line per change of progress, for output that is not a terminal (logs, CI)."""
    repo = document.get("repo") or {}
    snapshot = repo.get("snapshot") or {}
    if not snapshot:
        return ""
    parts = [f"{hop['hop']} {hop['files_done']}/{hop['files_total']}" for hop in repo.get("hops") or []]
    return f"snapshot {str(snapshot.get('commit', ''))[:12]} {snapshot.get('state')}: " + ", ".join(parts)


class Demo(abc.ABC):
    """What both demos share: relayctl against the sandbox's config, the daemon, and live progress."""

    options: DemoOptions
    config_path: Path
    log_path: Path
    catalogue_url: str
    daemon: subprocess.Popen[bytes] | None

    @abc.abstractmethod
    def relayctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run relayctl with the demo's config; raise CalledProcessError if *check* and it fails."""

    # -- watching ----------------------------------------------------------------------------------

    def status(self, repo: str = DEMO_REPO) -> dict[str, Any]:
        result = self.relayctl("status", repo, "--json", check=False)
        if result.returncode != 0:
            return {}
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def wait_for_snapshot(
        self, say: Callable[[str], None], previous: str | None, repo: str = DEMO_REPO
    ) -> dict[str, Any]:
        """Show live progress until *repo*'s current snapshot (newer than *previous*) is done."""
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        deadline = time.monotonic() + self.options.timeout
        console = Console(stderr=False)
        last_line = ""
        live_view = (
            Live(Text("waiting for the first poll…"), console=console, refresh_per_second=4, transient=True)
            if console.is_terminal
            else contextlib.nullcontext(None)
        )
        with live_view as live:
            while time.monotonic() < deadline:
                self.check_daemons()
                document = self.status(repo)
                if live is not None:
                    live.update(Text(self.relayctl("status", repo, check=False).stdout))
                else:
                    line = progress_line(document)
                    if line and line != last_line:
                        say(line)
                        last_line = line
                snapshot = (document.get("repo") or {}).get("snapshot") or {}
                if snapshot.get("state") == "done" and snapshot.get("commit") != previous:
                    return document
                if document.get("blocked"):
                    say("blocked: " + "; ".join(str(item) for item in document["blocked"]))
                time.sleep(1)
        raise TimeoutError(
            f"the relay did not finish within {self.options.timeout:.0f}s; see {self.log_path}"
        )

    def check_daemons(self) -> None:
        """Raise RuntimeError if the daemon exited."""
        if self.daemon is not None and self.daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited (code {self.daemon.returncode}); see {self.log_path}")

    # -- verification ------------------------------------------------------------------------------

    def bytes_moved(self, hop: str | None = None) -> int:
        """Return the payload bytes the daemon moved (on *hop*, or on every hop), re-sends included."""
        from sqlalchemy import func, select

        from relayd.catalogue.schema import Transfer
        from relayd.catalogue.store import Store

        store = Store(self.catalogue_url)
        try:
            query = select(func.coalesce(func.sum(Transfer.bytes_moved), 0))
            if hop is not None:
                query = query.where(Transfer.hop == hop)
            with store.read() as session:
                return int(session.scalar(query) or 0)
        finally:
            store.close()


class LocalDemo(Demo):
    """The local_copy route: source directory → destination directory, under the real daemon."""

    def __init__(self, options: DemoOptions, root: Path) -> None:
        self.options = options
        self.root = root
        self.source = root / "source" / DEMO_REPO
        self.dest = root / "copies" / DEMO_REPO
        self.config_path = root / "relayd.toml"
        self.log_path = root / "relayd.log"
        self.catalogue_url = f"sqlite:///{root / 'state' / 'catalogue.db'}"
        self.daemon = None

    # -- setup -------------------------------------------------------------------------------------

    def build_model(self) -> None:
        from relayd_sandbox.hub_store import write_generated_file

        for index in range(self.options.shards):
            name = f"model-{index + 1:05d}-of-{self.options.shards:05d}.safetensors"
            write_generated_file(self.source / name, self.options.shard_size, seed=index)
        (self.source / "config.json").write_text(
            json.dumps({"architectures": ["DemoModel"], "hidden_size": 64})
        )
        write_generated_file(self.source / "tokenizer.json", 256 * 1024, seed=1000)
        (self.source / "README.md").write_text("# demo/tiny-model\n\nGenerated by relayd demo.\n")

    def write_config(self) -> None:
        self.config_path.write_text(
            f"""# Written by relayd demo.
[daemon]
state_dir = "{self.root / "state"}"
poll_jitter = "0s"
idle_wait = "0.2s"
[catalogue]
url = "sqlite:///{self.root / "state" / "catalogue.db"}"
[retry]
initial = "1s"
maximum = "10s"
[staging]
dir = "{self.root / "staging"}"
max_bytes = "50 GB"
min_free = "0"
[local_copy]
source = "{self.root / "source"}"
dest = "{self.root / "copies"}"
piece_size = "8 MiB"
concurrency = 2
"""
        )
        self.config_path.chmod(0o600)

    # -- processes ---------------------------------------------------------------------------------

    def relayctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "relayd.cli", "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            check=check,
        )

    def start_daemon(self) -> None:
        log = self.log_path.open("ab")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "relayd", "run", "-c", str(self.config_path)],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()

    def verify(self) -> list[tuple[str, str, str, bool]]:
        rows = []
        for path in sorted(p for p in self.source.rglob("*") if p.is_file()):
            relative = path.relative_to(self.source).as_posix()
            source = sha256_file(path)
            copy = self.dest / relative
            landed = sha256_file(copy) if copy.exists() else "missing"
            rows.append((relative, source, landed, source == landed))
        return rows

    def change_upstream(self) -> tuple[str, str]:
        """Change one shard and remove the tokenizer; return (changed, removed)."""
        from relayd_sandbox.hub_store import write_generated_file

        changed = f"model-00001-of-{self.options.shards:05d}.safetensors"
        write_generated_file(self.source / changed, self.options.shard_size, seed=424242)
        removed = "tokenizer.json"
        (self.source / removed).unlink()
        return changed, removed


class RouteDemo(Demo):
    """The default route on the route sandbox: Hub → staging → drive → VM → git + LFS."""

    def __init__(self, options: DemoOptions, root: Path) -> None:
        from relayd_sandbox.route import RouteSandbox

        self.options = options
        self.sandbox = RouteSandbox(
            root, shards=options.shards, shard_size=options.shard_size, ssh=options.ssh, drive=options.drive
        )
        self.config_path = self.sandbox.config_path
        self.log_path = self.sandbox.log_path
        self.catalogue_url = f"sqlite:///{root / 'state' / 'catalogue.db'}"
        self.daemon = None

    def start(self) -> None:
        self.sandbox.start()
        if self.options.drive == "open":
            # The login a person makes once: `relayctl drive login` shows the QR code, the fake drive
            # plays the phone that scans it.
            login = self.relayctl("drive", "login", "--wait", "60")
            click.echo(login.stdout, nl=False)
        self.daemon = self.sandbox.start_daemon()

    def stop(self) -> None:
        if self.daemon is not None:
            self.sandbox.stop_daemon(self.daemon)
        self.sandbox.stop()

    def mid_route(self, say: Callable[[str], None]) -> None:
        """What the demo does once the repo is added, while its first revision travels (nothing here)."""

    def relayctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = self.sandbox.relayctl(*args)
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, args, result.stdout, result.stderr)
        return result

    def report_bytes_moved(self, say: Callable[[str], None]) -> bool:
        """Say each hop's bytes moved (re-sends included) beside what the sandbox's servers counted
        (the CDN sent; the drive, its data host and the LFS server received); True if they agree."""
        sandbox = self.sandbox
        assert sandbox.hub is not None and sandbox.drive is not None and sandbox.git is not None  # noqa: S101
        stats = sandbox.drive.stats()
        counted = {
            "download": sandbox.hub.bytes_served(),
            "pan_upload": stats.put_bytes,
            "vm_pull": stats.download_bytes,
            "lfs_push": sandbox.git.counters().put_bytes,
        }
        moved = {hop: self.bytes_moved(hop) for hop in counted}
        parts = [
            f"{hop} {format_size(moved[hop])}"
            + ("" if moved[hop] == count else f" (the server counted {format_size(count)})")
            for hop, count in counted.items()
        ]
        agree = all(self.bytes_agree(hop, moved[hop], count) for hop, count in counted.items())
        if all(moved[hop] == count for hop, count in counted.items()):
            tail = "; the servers counted the same"
        else:
            tail = (
                "; the rest was in flight when a daemon was killed"
                if agree
                else "; THE SERVERS COUNTED OTHERWISE"
            )
        say("bytes moved, re-sends included: " + ", ".join(parts) + tail)
        return agree

    def bytes_agree(self, hop: str, moved: int, counted: int) -> bool:
        """Return whether the daemon's count of *hop*'s bytes agrees with the server's."""
        return moved == counted


def run_route_demo(
    options: DemoOptions, root: Path, say: Callable[[str], None], demo: RouteDemo | None = None
) -> bool:
    """Run the default route on the sandbox (with *demo*'s daemons: by default one); True if verified."""
    demo = demo or RouteDemo(options, root)
    sandbox = demo.sandbox
    try:
        say(f"generating {options.shards} shards of {format_size(options.shard_size)} on the fake Hub")
        demo.start()
        hub, drive, git = sandbox.hub, sandbox.drive, sandbox.git
        assert hub is not None and drive is not None and git is not None  # noqa: S101
        say(
            f"fake Hub {hub.endpoint} (CDN {hub.cdn_url}), fake drive {drive.api_url}, git+LFS {git.base_url}"
        )
        say(
            "VM: "
            + (f"over SSH to {sandbox.sshd.host}:{sandbox.sshd.port}" if sandbox.use_ssh else "this machine")
        )
        say(f"daemon started; log in {demo.log_path}")
        added = demo.relayctl("add", DEMO_REPO, "--every", "10s")
        say(added.stdout.strip().splitlines()[0] if added.stdout.strip() else f"added {DEMO_REPO}")
        demo.mid_route(say)
        first = demo.wait_for_snapshot(say, previous=None)
        rows, extra = sandbox.verify()
        print_route_table(rows, f"revision {sandbox.head[:12]}: sha256 at every place")
        ok = all(row.ok for row in rows) and not extra
        if extra:
            say(f"the pushed repo holds files the Hub does not: {sorted(extra)}")
        if ok and options.change:
            moved_before = demo.bytes_moved("download")
            changed, removed, commit = sandbox.change_upstream()
            say(f"upstream commit {commit[:12]}: {changed} changed, {removed} removed")
            previous = ((first.get("repo") or {}).get("snapshot") or {}).get("commit")
            demo.wait_for_snapshot(say, previous=previous)
            moved = demo.bytes_moved("download") - moved_before
            rows, extra = sandbox.verify()
            print_route_table(rows, f"revision {commit[:12]}: sha256 at every place")
            shard = format_size(options.shard_size)
            say(f"the new revision downloaded {format_size(moved)} (one shard is {shard})")
            only_shard = moved == options.shard_size
            gone = removed not in {row.path for row in rows} and removed not in extra
            ok = all(row.ok for row in rows) and not extra and only_shard and gone
            if not gone:
                say(f"{removed} is still in the pushed repo")
        ok = demo.report_bytes_moved(say) and ok
        if ok:
            from relayd.demo_mirror import relay_mirror

            ok = relay_mirror(demo, say)
        if options.keep and ok:
            say(f"the sandbox keeps running; try: relayctl -c {demo.config_path} status. Ctrl-C to stop.")
            while True:
                time.sleep(3600)
        return ok
    finally:
        demo.stop()


def sites_demo(options: DemoOptions, root: Path) -> RouteDemo | None:
    """Return the two-site demo when the options ask for it, else None (one daemon)."""
    if options.sites == 1:
        return None
    from relayd.demo_sites import SitesDemo

    return SitesDemo(options, root)


def run_demo(options: DemoOptions) -> int:
    missing = sandbox_missing()
    if missing is not None:
        click.echo(f"relayd demo: {missing}", err=True)
        return 1
    root = options.workdir or Path(tempfile.mkdtemp(prefix="relayd-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    demo = LocalDemo(options, root)

    def say(message: str) -> None:
        click.echo(f"relayd demo: {message}")

    if not options.local:
        say(f"sandbox in {root}")
        try:
            ok = run_route_demo(options, root, say, sites_demo(options, root))
        except KeyboardInterrupt:
            return 0
        except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            say(f"failed: {exc} {detail}".strip())
            ok = False
        finally:
            if not options.keep and options.workdir is None:
                shutil.rmtree(root, ignore_errors=True)
        say("everything verified" if ok else "VERIFICATION FAILED")
        return 0 if ok else 1
    try:
        say(f"sandbox in {root}")
        say(f"generating {options.shards} shards of {format_size(options.shard_size)} plus config files")
        demo.build_model()
        demo.write_config()
        demo.start_daemon()
        say(f"daemon started (pid {demo.daemon.pid if demo.daemon else '?'}); log in {demo.log_path}")
        added = demo.relayctl("add", DEMO_REPO, "--route", "local_copy", "--every", "10s")
        say(added.stdout.strip() or f"added {DEMO_REPO}")
        first = demo.wait_for_snapshot(say, previous=None)
        rows = demo.verify()
        print_table(rows, ("source", "destination"))
        ok = all(row[3] for row in rows)
        if ok and options.change:
            moved_before = demo.bytes_moved()
            changed, removed = demo.change_upstream()
            say(f"upstream changed: {changed} rewritten, {removed} removed")
            commit = ((first.get("repo") or {}).get("snapshot") or {}).get("commit")
            demo.wait_for_snapshot(say, previous=commit)
            moved = demo.bytes_moved() - moved_before
            rows = demo.verify()
            print_table(rows, ("source", "destination"))
            only_shard = moved == options.shard_size
            say(
                f"second revision moved {format_size(moved)} (one shard is {format_size(options.shard_size)})"
            )
            ok = all(row[3] for row in rows) and only_shard
        say("everything verified" if ok else "VERIFICATION FAILED")
        if options.keep:
            say(f"the sandbox keeps running; try: relayctl -c {demo.config_path} status. Ctrl-C to stop.")
            while True:
                time.sleep(3600)
        return 0 if ok else 1
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        say(f"failed: {exc} {detail}".strip())
        return 1
    finally:
        demo.stop_daemon()
        if not options.keep and options.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


@click.command(
    name="demo",
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit status: 0 when every file verified at every place, 1 otherwise.",
)
@click.option(
    "--shards",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    metavar="N",
    help="How many weight shards the generated model has.",
)
@click.option(
    "--shard-size",
    default="64 MiB",
    show_default=True,
    metavar="SIZE",
    help="The size of each shard, e.g. 1MiB or '64 MiB'.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Build the sandbox (config, catalogue, logs, every service's files) in DIR and leave it there "
    "[default: a temporary directory, removed at the end].",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Leave the sandbox and its daemon running after the check, to explore with relayctl "
    "(Ctrl-C stops them).",
)
@click.option(
    "--timeout",
    default=600.0,
    show_default=True,
    type=click.FloatRange(min=1),
    metavar="SECONDS",
    help="How long each revision may take to arrive everywhere before the demo fails.",
)
@click.option(
    "--no-change",
    is_flag=True,
    help="Stop after the first revision (skip the upstream change that shows only the changed shard "
    "travels).",
)
@click.option("--local", is_flag=True, help="Relay through local_copy only (no Hub, drive, VM or git).")
@click.option(
    "--drive",
    "drive",
    type=click.Choice(["aligo", "open"]),
    default="aligo",
    show_default=True,
    help="The drive backend: Aliyun Drive's web API (aligo) or its Open Platform (a QR login first).",
)
@click.option(
    "--ssh/--no-ssh",
    default=None,
    help="Reach the VM over SSH through a sandbox sshd, or run its side locally [default: SSH when an "
    "sshd is installed].",
)
@click.option(
    "--sites",
    type=click.Choice(["1", "2"]),
    default="1",
    show_default=True,
    help="2: split the route across two sites (abroad: download + pan_upload; vm: vm_pull + lfs_push), one "
    "daemon each on a throwaway PostgreSQL catalogue, and kill -9 the vm daemon mid-route.",
)
def demo_command(
    shards: int,
    shard_size: str,
    workdir: Path | None,
    keep: bool,
    timeout: float,
    no_change: bool,
    local: bool,
    ssh: bool | None,
    sites: str,
    drive: str,
) -> int:
    """Relay a generated model end to end on the local sandbox and verify every file."""
    try:
        size = parse_size(shard_size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--shard-size'") from exc
    options = DemoOptions(
        shards=shards,
        shard_size=size,
        workdir=workdir,
        keep=keep,
        timeout=timeout,
        change=not no_change,
        local=local,
        ssh=ssh,
        sites=int(sites),
        drive=drive,
    )
    os.environ.setdefault("RELAYD_DEMO", "1")
    # A SIGTERM (an `--keep` sandbox stopped by kill, systemd, a CI timeout) unwinds like Ctrl-C, so
    # the daemon, the sshd and the servers are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    return run_demo(options)


def demo_main(args: list[str]) -> int:
    """Run the demo with command-line *args*; return the exit code."""
    try:
        result = demo_command.main(args=args, prog_name="relayd demo", standalone_mode=False)
    except click.exceptions.Exit as exit_:
        return int(exit_.exit_code)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return int(result or 0)
