"""`relayd demo --sites 2`: the default route split across two sites, as docs/sites.md deploys it.

Two daemons share one throwaway PostgreSQL catalogue (the sandbox's ``ThrowawayPostgres``): site
"abroad" serves download and pan_upload, site "vm" serves vm_pull (the VM's side run locally, as on a
ModelScope notebook VM that takes no inbound SSH), lfs_push and ms_upload (the demo's mirror repo
goes through ModelScope's HTTP API). Once the vm daemon is pulling, the
demo kills it with SIGKILL, starts it again, and the route ends with the same verification table as
the one-daemon demo. `relayctl workers` shows both sites, and the killed process dead. A hop that work
waits for and no daemon serves stops the demo at once, with what `relayctl status` says of it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayd.demo import DEMO_REPO, DemoOptions, RouteDemo

if TYPE_CHECKING:
    from relayd.catalogue.queries.workers import Unserved
    from relayd_sandbox.postgres import ThrowawayPostgres

#: Each site's daemon and the hops it serves.
SITES = {"abroad": ["download", "pan_upload"], "vm": ["vm_pull", "lfs_push", "ms_upload"]}
KILLED = "vm"
#: The hop the killed daemon runs when it is killed.
KILLED_HOP = "vm_pull"
DATABASE = "relayd_demo"
#: Seconds between looks for a hop no daemon serves.
UNSERVED_CHECK = 1.0


def unserved_stop(
    unserved: Sequence[Unserved], beating: Collection[int], started: Iterable[int]
) -> str | None:
    """Return why the demo's wait ends now (what `relayctl status` says of each hop that work waits for
    and no running daemon serves), or None to go on waiting. *beating*: the pids whose heartbeat says
    running; *started*: the demo's daemons. Until each has published its heartbeat, a hop may look
    unserved only because its daemon is starting (or starting again after the kill)."""
    if not unserved or not set(started) <= set(beating):
        return None
    return "; ".join(item.hint for item in unserved)


class SitesDemo(RouteDemo):
    """The default route with one daemon per site on a shared PostgreSQL catalogue."""

    def __init__(self, options: DemoOptions, root: Path) -> None:
        # The vm site runs the VM's side locally: it is the VM.
        super().__init__(replace(options, ssh=False), root)
        self.root = root
        self.configs = {site: root / f"{site}.toml" for site in SITES}
        self.logs = {site: root / f"{site}.log" for site in SITES}
        self.config_path = self.configs["abroad"]
        self.log_path = self.logs["abroad"]
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}
        self.postgres: ThrowawayPostgres | None = None
        self.killed_pid: int | None = None
        self._served_checked = 0.0

    def start(self) -> None:
        from relayd_sandbox.postgres import ThrowawayPostgres

        self.sandbox.start()
        assert self.sandbox.drive is not None  # noqa: S101
        # vm_pull at about two seconds a shard, so that the kill lands while it pulls.
        self.sandbox.drive.settings.download_bandwidth = max(512 * 1024, self.options.shard_size // 2)
        self.postgres = ThrowawayPostgres().start()
        self.catalogue_url = self.postgres.create_database(DATABASE)
        for site, hops in SITES.items():
            self.sandbox.write_site_config(
                self.configs[site], site=site, hops=hops, catalogue_url=self.catalogue_url
            )
            self.start_site(site)

    def start_site(self, site: str) -> None:
        self.daemons[site] = self.sandbox.start_daemon(config=self.configs[site], log_path=self.logs[site])

    def stop(self) -> None:
        for process in self.daemons.values():
            self.sandbox.stop_daemon(process)
        self.sandbox.stop()
        if self.postgres is not None:
            self.postgres.stop()

    def relayctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = self.sandbox.relayctl(*args, config=self.configs["abroad"])
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, args, result.stdout, result.stderr)
        return result

    def check_daemons(self) -> None:
        """Raise RuntimeError when a daemon exited, or when work waits for a hop no daemon serves: it
        would wait until the timeout."""
        for site, process in self.daemons.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"the {site} daemon exited (code {process.returncode}); see {self.logs[site]}"
                )
        if time.monotonic() - self._served_checked < UNSERVED_CHECK:
            return
        self._served_checked = time.monotonic()
        reason = self._unserved()
        if reason is not None:
            raise RuntimeError(reason)

    def _unserved(self) -> str | None:
        """Return what status says of the hops no running daemon serves, once every daemon beats."""
        from relayd.catalogue.queries import open_reader, summary
        from relayd.catalogue.queries.workers import WORKER_RUNNING, workers

        reader = open_reader(self.catalogue_url)
        try:
            now = datetime.now(UTC)
            here = socket.gethostname()
            beating = {
                worker.pid
                for worker in workers(reader, now)
                if worker.state == WORKER_RUNNING and worker.host == here
            }
            unserved = summary(reader, blocked_limit=0, stuck_limit=0, now=now).unserved
        finally:
            reader.close()
        return unserved_stop(unserved, beating, (process.pid for process in self.daemons.values()))

    def mid_route(self, say: Callable[[str], None]) -> None:
        """Kill the vm daemon with SIGKILL once it pulls a file, then start it again."""
        served = (f"{site} serves {' + '.join(hops)}" for site, hops in SITES.items())
        say(f"sites: {', '.join(served)}")
        say(f"one PostgreSQL catalogue for both ({self.catalogue_url}); vm log in {self.logs[KILLED]}")
        deadline = time.monotonic() + self.options.timeout
        while not self._pulling():
            self.check_daemons()
            if time.monotonic() > deadline:
                raise TimeoutError(f"vm_pull never started; see {self.logs[KILLED]}")
            time.sleep(0.2)
        process = self.daemons[KILLED]
        self.killed_pid = process.pid
        process.kill()
        process.wait(30)
        say(f"killed the {KILLED} daemon (pid {process.pid}) with SIGKILL while vm_pull was running")
        self.start_site(KILLED)
        say(
            f"started it again (pid {self.daemons[KILLED].pid}); the transfers it held come back when "
            "their lease (daemon.lease) runs out"
        )

    def _pulling(self) -> bool:
        """Return whether a vm_pull transfer has begun moving bytes (or finished). Raise RuntimeError
        when a transfer is blocked: it would wait for a person, not for the kill."""
        from sqlalchemy import select

        from relayd.catalogue.schema import BLOCKED, Transfer
        from relayd.catalogue.store import Store

        store = Store(self.catalogue_url)
        try:
            with store.read() as session:
                moved = session.scalars(
                    select(Transfer.bytes_done).where(Transfer.hop == KILLED_HOP, Transfer.bytes_done > 0)
                ).first()
                blocked = session.scalars(select(Transfer).where(Transfer.state == BLOCKED)).first()
                if blocked is not None:
                    raise RuntimeError(f"{blocked.hop} is blocked: {blocked.last_error}")
            return moved is not None
        finally:
            store.close()

    def bytes_agree(self, hop: str, moved: int, counted: int) -> bool:
        """Besides agreement, accept that vm_pull's count lacks what was in flight at the kill: the
        drive sent it, the killed daemon never recorded it (at most what it pulls at once)."""
        if hop == KILLED_HOP:
            return 0 <= counted - moved <= self.options.shard_size
        return moved == counted

    def wait_for_snapshot(
        self, say: Callable[[str], None], previous: str | None, repo: str = DEMO_REPO
    ) -> dict[str, Any]:
        document = super().wait_for_snapshot(say, previous, repo)
        if previous is None and repo == DEMO_REPO:
            self.show_workers(say)
        return document

    def show_workers(self, say: Callable[[str], None]) -> None:
        """Print `relayctl workers`: both sites' daemons, the killed one dead."""
        with contextlib.suppress(subprocess.CalledProcessError):
            say("relayctl workers:\n" + self.relayctl("workers").stdout.rstrip())
