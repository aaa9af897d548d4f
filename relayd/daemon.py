"""relayd, the daemon: lock → config → catalogue check → hops → scheduler and engine → wait → drain.

`relayd run` serves until SIGTERM (first: stop claiming and let in-flight pieces reach a durable point
within the grace; second: exit at once). SIGHUP and edits of the config file reload it through one code
path. `relayd run --once` polls every repo once and runs until nothing is runnable.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from relayd import __version__
from relayd.assembly import build_hops, build_sources, end_asker, hop_rules
from relayd.catalogue.db import is_sqlite
from relayd.catalogue.queries import open_reader, schema_at_head
from relayd.catalogue.schema import Repo
from relayd.catalogue.store import Store, WorkerBeat, new_owner_id, utcnow
from relayd.config import Config, load_config
from relayd.engine import Engine, EngineSettings
from relayd.errors import ConfigError, RelayError
from relayd.hops.base import Hop, HopContext
from relayd.instance_lock import instance_lock
from relayd.logs import SCRUBBER, log_failure, setup_logging
from relayd.poll import Poller
from relayd.sdnotify import Notifier
from relayd.services import build_services
from relayd.sites import check_sites, prepare_used, served_hops, serves, staging_holder, worker_beat
from relayd.staging import Staging

if TYPE_CHECKING:  # the metrics, the web server and Alembic are imported when a run uses them
    from relayd.metrics import MetricsServer
    from relayd.web.server import WebServer

log = logging.getLogger(__name__)

RECONCILE_INTERVAL = 2.0
HEARTBEAT_INTERVAL = 10.0
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
#: Everything relayd creates (state, catalogue, staging, tokens, the VM's files through its children) is
#: its user's alone, whatever umask it was started with.
PRIVATE_UMASK = 0o077


def register_secrets(config: Config) -> None:
    """Teach the log scrubber every configured secret value."""
    for ref in config.secrets():
        try:
            SCRUBBER.add(ref.resolve())
        except ConfigError:
            continue


@dataclass
class _ScheduledRepo:
    every: float
    requested_at: datetime | None


class Daemon:
    """One relayd process serving one catalogue."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        self.notifier = Notifier()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._signals = 0
        self._scheduled: dict[str, _ScheduledRepo] = {}
        self._fingerprint: tuple[Any, ...] | None = None
        self._next_due: datetime | None = None
        self._debounce_timer: threading.Timer | None = None
        self._started_at = utcnow()
        self.web: WebServer | None = None

    # -- signals -----------------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            # Second signal: no more waiting. Durable pieces are recorded; nothing else is trusted.
            os.write(2, b"relayd: second stop signal, exiting at once\n")
            os._exit(EXIT_RUNTIME)
        log.info("received %s: stopping after in-flight pieces", signal.Signals(signum).name)
        self._stop.set()

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    # -- the run -----------------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> int:
        config = self.config
        check_sites(config)
        register_secrets(config)
        if config.web.listen and not once:
            from relayd.web.access import resolve_token

            resolve_token(config.web)  # an unusable token refuses the start, before anything runs
        with instance_lock(config):
            store = Store(config.catalogue.url)
            try:
                self._check_schema(store)
                if is_sqlite(config.catalogue.url):
                    orphans = store.reset_orphaned()
                    if orphans:
                        log.info(
                            "%d transfer(s) were running when relayd last stopped; they continue now", orphans
                        )
                return self._serve(store, once=once)
            finally:
                store.close()

    def _check_schema(self, store: Store) -> None:
        """Create a new catalogue at head, upgrade it (catalogue.auto_upgrade), or raise SchemaMismatch.
        A catalogue already at head is told without importing Alembic (a second of start-up)."""
        reader = open_reader(self.config.catalogue.url)
        try:
            if schema_at_head(reader):
                return
        finally:
            reader.close()
        from relayd.catalogue import migrate

        migrate.ensure_schema(
            store.engine, auto_upgrade=self.config.catalogue.auto_upgrade, config_path=self.config_path
        )

    def _serve(self, store: Store, *, once: bool) -> int:
        config = self.config
        staging = Staging(config.staging)
        owner = new_owner_id()
        ctx = HopContext(
            store=store,
            staging=staging,
            state_dir=config.daemon.state_dir,
            cancel=threading.Event(),
            owner=owner,
            services=build_services(config, store),
        )
        config.daemon.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        hops = build_hops(config, ctx)  # every hop: the store's rules need what each one declares
        store.rules = hop_rules(hops)
        store.webhooks = config.notify.webhooks
        store.lease_holder = owner
        if not is_sqlite(config.catalogue.url):
            store.staging_holder = staging_holder(config)
        served = served_hops(config, hops)
        prepare_used(config, served, (repo.route for repo in store.repos()))
        sources, source_for_hop = build_sources(config, served)
        self.poller = Poller(store, sources, source_for_hop, config.retry, end_asker(config, hops))
        self.store = store
        self.engine = Engine(store, staging, served, ctx, self._engine_settings(config, served))
        # What start-up built (modules, the config, the hops) lives as long as the process: keep the
        # garbage collector from walking it again on every full collection while bytes flow.
        gc.freeze()
        if once:
            return self._run_once()
        return self._run_forever()

    @staticmethod
    def _engine_settings(config: Config, hops: dict[str, Hop]) -> EngineSettings:
        return EngineSettings(
            workers=config.daemon.workers,
            lease=config.daemon.lease,
            idle_wait=config.daemon.idle_wait,
            retry=config.retry,
            limits={name: config.concurrency_for(name) for name in hops},
        )

    def _run_once(self) -> int:
        for repo in self.store.repos():
            if self._polls(repo):
                self.poller.poll(repo)
        self.engine.run_until_idle()
        self.engine.drain(self.config.daemon.shutdown_grace)
        log.info("nothing is runnable any more; exiting (--once)")
        return EXIT_OK

    def _run_forever(self) -> int:
        from apscheduler.schedulers.background import BackgroundScheduler

        from relayd.notify import Notifier as WebhookNotifier
        from relayd.web.throughput import Throughput

        self.install_signals()
        self.scheduler = BackgroundScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300}
        )
        self.scheduler.start()
        metrics = self._start_metrics()  # before the engine, so its counters miss no byte
        self.throughput = Throughput()
        self.throughput.watch(self.store)
        self.web = self._start_web()
        self.engine.start()
        self.notifier_thread = WebhookNotifier(self.store, self.config.notify)
        self.notifier_thread.start()
        watcher = self._watch_config()
        self._reconcile()
        self._safely(self.store.forget_workers)
        self._heartbeat()
        self.notifier.ready(f"serving {len(self._scheduled)} repos")
        log.info("relayd %s serving %s (pid %d)", __version__, self.config.catalogue.url, os.getpid())
        last_reconcile = last_heartbeat = last_watchdog = time.monotonic()
        try:
            while not self._stop.wait(0.25):
                now = time.monotonic()
                if self.notifier.watchdog_interval and now - last_watchdog >= self.notifier.watchdog_interval:
                    self.notifier.watchdog()
                    last_watchdog = now
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                if now - last_reconcile >= RECONCILE_INTERVAL:
                    last_reconcile = now
                    self._safely(self._reconcile)
                if now - last_heartbeat >= HEARTBEAT_INTERVAL:
                    last_heartbeat = now
                    self._safely(self._heartbeat)
        finally:
            self.notifier.stopping()
            if watcher is not None:
                # watchdog's inotify thread races its own stop() and logs a spurious ERROR about
                # queue_events(); nothing is lost by muting it while the watcher goes away.
                logging.getLogger("watchdog").setLevel(logging.CRITICAL)
                watcher.stop()
                watcher.join(5)
            if metrics is not None:
                metrics.stop()
            if self.web is not None:
                self._stop_web()
                self._safely(lambda: self.store.publish("web", {"state": "stopped"}))
            self.notifier_thread.stop()
            self.scheduler.shutdown(wait=False)
            drained = self.engine.drain(self.config.daemon.shutdown_grace)
            if not drained:
                log.warning(
                    "some transfers did not reach a durable point within the grace; they resume next start"
                )
            self._safely(lambda: self.store.publish("daemon", {**self._daemon_facts(), "state": "stopped"}))
            self._safely(lambda: self.store.beat(self._worker("stopped")))
        log.info("stopped")
        return EXIT_OK

    def _start_metrics(self) -> MetricsServer | None:
        if not self.config.metrics.listen:
            return None
        from relayd.metrics import Metrics, MetricsServer

        metrics = Metrics(self.store)
        try:
            server = MetricsServer(metrics, self.config.metrics.listen)
        except (ValueError, OSError) as exc:
            log.error("metrics are off: %s", exc)
            return None
        metrics.watch(self.store, self.engine.hops)
        server.start()
        return server

    def _start_web(self) -> WebServer | None:
        """Serve the status page and API when web.listen is set; a failure is logged and published
        (the `web` service fact), and relaying goes on without them."""
        listen = self.config.web.listen
        if not listen:
            return None
        from relayd.web.server import serve

        try:
            server = serve(self.config, self.store, self.throughput)
        except (ConfigError, OSError) as exc:
            log.error("the status page is off: %s", exc)
            failed = {"state": "failed", "listen": listen, "error": str(exc)}
            self._safely(lambda: self.store.publish("web", failed))
            return None
        self._safely(lambda: self.store.publish("web", {"state": "serving", "url": server.url}))
        return server

    def _stop_web(self) -> None:
        if self.web is not None:
            self.web.stop()
            self.web = None

    def _reload_web(self, old: Config) -> None:
        """Keep serving with the new config when [web] and its token are unchanged; else restart."""
        new = self.config
        if self.web is not None and old.web == new.web:
            from relayd.web.access import resolve_token

            try:
                same = resolve_token(new.web) == self.web.app.access.token
            except ConfigError:
                same = False
            if same:
                self.web.app.config = new
                return
        was_on = self.web is not None
        self._stop_web()
        self.web = self._start_web()
        if was_on and self.web is None and not new.web.listen:
            self._safely(lambda: self.store.publish("web", {"state": "off"}))

    @staticmethod
    def _safely(action: Any) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - retried; log_failure logs it
            log_failure(log, "periodic task failed; trying again later", exc)

    def _daemon_facts(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "version": __version__,
            "started_at": self._started_at.isoformat(),
            "running": self.engine.running_count(),
            "state": "running",
            "config": str(self.config_path),
        }

    def _worker(self, state: str = "running") -> WorkerBeat:
        return worker_beat(self.config, self.engine.owner, self._started_at, state)

    def _heartbeat(self) -> None:
        self.store.publish("daemon", self._daemon_facts())
        self.store.beat(self._worker())

    # -- scheduling --------------------------------------------------------------------------------

    def _poll_job(self, name: str) -> None:
        repo = self.store.repo(name)
        if repo is None or not self._polls(repo):
            return
        self.poller.poll(repo)
        self.engine.wake()

    def _polls(self, repo: Repo) -> bool:
        """Return whether this daemon polls *repo*: not paused, and its route's first hop is served here
        (on the site that reaches its source)."""
        return not repo.paused and bool(repo.route) and serves(self.config, repo.route[0])

    def _reconcile(self) -> None:
        """Bring the scheduler in line with the catalogue's repos (added, removed, paused, changed),
        and run polls that relayctl asked for (add, resume, retry)."""
        from apscheduler.triggers.interval import IntervalTrigger

        fingerprint = self.store.repos_fingerprint()
        now = utcnow()
        if fingerprint == self._fingerprint and (self._next_due is None or self._next_due > now):
            return  # nothing changed and no requested poll has come due: no need to read every repo
        self._fingerprint = fingerprint
        repos: dict[str, Repo] = {repo.name: repo for repo in self.store.repos() if self._polls(repo)}
        prepare_used(self.config, self.engine.hops, (repo.route for repo in repos.values()))
        future = [
            repo.next_poll_at for repo in repos.values() if repo.next_poll_at and repo.next_poll_at > now
        ]
        self._next_due = min(future) if future else None
        for name in list(self._scheduled):
            if name not in repos:
                self._remove_job(name)
                del self._scheduled[name]
                log.info("%s: no longer polled", name)
        for name, repo in repos.items():
            job_id = f"poll:{name}"
            known = self._scheduled.get(name)
            if known is None or known.every != repo.every:
                self.scheduler.add_job(
                    self._poll_job,
                    IntervalTrigger(
                        seconds=repo.every, jitter=self.config.daemon.poll_jitter or None, timezone=UTC
                    ),
                    id=job_id,
                    args=[name],
                    replace_existing=True,
                    next_run_time=now,
                )
                if known is None:
                    log.info("%s: polling every %.0fs", name, repo.every)
                self._scheduled[name] = _ScheduledRepo(repo.every, repo.next_poll_at)
                continue
            if (
                repo.next_poll_at is not None
                and repo.next_poll_at <= now
                and known.requested_at != repo.next_poll_at
            ):
                known.requested_at = repo.next_poll_at
                self.scheduler.modify_job(job_id, next_run_time=now)
        self.engine.wake()

    def _remove_job(self, name: str) -> None:
        from apscheduler.jobstores.base import JobLookupError

        with suppress(JobLookupError):
            self.scheduler.remove_job(f"poll:{name}")

    # -- reload ------------------------------------------------------------------------------------

    def _watch_config(self) -> Any:
        """Watch the config file; an edit requests the same reload as SIGHUP (debounced)."""
        if not self.config.daemon.watch_config:
            return None
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        target = self.config_path.resolve()
        daemon = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                paths = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")}
                if str(target) in paths:
                    daemon._request_reload_debounced()

        observer = Observer()
        observer.schedule(Handler(), str(target.parent), recursive=False)
        observer.daemon = True
        observer.start()
        return observer

    def _request_reload_debounced(self) -> None:
        if self._debounce_timer is not None:
            self._debounce_timer.cancel()
        self._debounce_timer = threading.Timer(0.5, self._reload.set)
        self._debounce_timer.daemon = True
        self._debounce_timer.start()

    def reload(self) -> bool:
        """Load the config again; keep the running one if the new one is invalid. Return success."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
            check_sites(new)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            self.notifier.status("reload refused: invalid config")
            self.notifier.notify("READY=1")
            return False
        if (
            new.catalogue.url != self.config.catalogue.url
            or new.daemon.state_dir != self.config.daemon.state_dir
        ):
            log.warning("catalogue.url and daemon.state_dir take effect only after a restart")
        register_secrets(new)
        self.store.webhooks = new.notify.webhooks
        self.notifier_thread.config = new.notify
        ctx = self.engine.ctx
        build_services(new, self.store, ctx.services)
        hops = build_hops(new, ctx)
        served = served_hops(new, hops)
        prepare_used(new, served, (repo.route for repo in self.store.repos()))
        self.engine.hops = served
        self.store.rules = hop_rules(hops)
        self.engine.settings = self._engine_settings(new, served)
        self.engine.staging.config = new.staging
        sources, source_for_hop = build_sources(new, served)
        self.poller.sources, self.poller.source_for_route = sources, source_for_hop
        self.poller.retry = new.retry
        old, self.config = self.config, new
        self._reload_web(old)
        self._scheduled.clear()
        self._fingerprint = None
        self._reconcile()
        log.info("reloaded %s", self.config_path)
        self.notifier.ready(f"serving {len(self._scheduled)} repos (reloaded)")
        return True


# -- command line ----------------------------------------------------------------------------------

DEFAULT_CONFIG = "/etc/relayd/relayd.toml"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relayd")
def main() -> None:
    """relayd: a resumable, hash-verified relay for model files (Hugging Face → Aliyun Drive → VM →
    ModelScope). Manage it with relayctl."""


@main.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("RELAYD_CONFIG", DEFAULT_CONFIG),
    show_default="$RELAYD_CONFIG or " + DEFAULT_CONFIG,
    help="The config file.",
)
@click.option("--once", is_flag=True, help="Poll every repo once, run until nothing is runnable, then exit.")
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="Override daemon.log_level."
)
def run(config_path: Path, once: bool, log_level: str | None) -> None:
    """Serve the catalogue: poll repos on their schedules and move their files along their routes."""
    os.umask(PRIVATE_UMASK)
    setup_logging(log_level or "info")
    try:
        daemon = Daemon(config_path)
        setup_logging(log_level or daemon.config.daemon.log_level)
        code = daemon.run(once=once)
    except ConfigError as exc:
        log.error("%s", exc)
        sys.exit(EXIT_CONFIG)
    except RelayError as exc:
        log.error("%s", exc)
        sys.exit(EXIT_RUNTIME)
    sys.exit(code)


# --help goes to the demo's own command, which lists its options.
@main.command(
    add_help_option=False, context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
)
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run a whole relay on the local sandbox and verify it (see `relayd demo --help`)."""
    from relayd.demo import demo_main

    sys.exit(demo_main(ctx.args))
