"""A throwaway PostgreSQL server on 127.0.0.1 for the tests and the demo, so that nothing depends on a
server the machine happens to run.

``ThrowawayPostgres`` runs Debian's ``initdb`` (package ``postgresql``, which ``scripts/dev setup``
installs) in a temporary directory and starts ``postgres`` on a free port, listening on 127.0.0.1 only,
with its socket in that directory::

    with ThrowawayPostgres() as server:
        url = server.create_database("relayd_test")   # postgresql+psycopg://postgres@127.0.0.1:PORT/...

PostgreSQL refuses to run as root; run as root (as CI does), the server runs as the ``postgres``
system user the package creates, and its directory is handed to that user. Durability is switched
off (``fsync``, ``synchronous_commit``, ``full_page_writes``): the data is thrown away with the
directory, and the tests measure relayd, not the disk. Trust authentication on loopback: the server
lives for one test session and is reachable only from this machine.

``ThrowawayPostgres(tls=ca)`` serves TLS only, as docs/sites.md tells a site to: a certificate of the
sandbox's throwaway CA, ``cert`` authentication (the client certificate's CN is the role) for every
role but the superuser, and plain TCP refused.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import urlencode

import psycopg

from relayd_sandbox._http import free_port
from relayd_sandbox.processes import ServerProcess

if TYPE_CHECKING:
    from relayd_sandbox.tls import ThrowawayCA

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
# The system user Debian's postgresql-common creates, which the server runs as when we are root.
SYSTEM_USER = "postgres"


_Finalizer: TypeAlias = 'weakref.finalize[[subprocess.Popen[bytes] | None, Path], "ThrowawayPostgres"]'


class PostgresError(RuntimeError):
    """The throwaway PostgreSQL could not be set up or started."""


def find_bindir() -> Path | None:
    """Return the directory holding ``initdb`` and ``postgres`` (the newest Debian version's, else the
    one on PATH), or None when PostgreSQL's server is not installed."""
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3].split(".")[0])
    )
    if versions:
        return Path(versions[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class ThrowawayPostgres(ServerProcess):
    """A PostgreSQL server of its own in a temporary directory, removed by ``stop()``.

    ``start()`` runs ``initdb``, starts ``postgres`` on a free port and returns once it accepts
    connections; ``create_database(name)`` returns a SQLAlchemy URL for a new database.
    """

    host = "127.0.0.1"

    def __init__(self, *, start_timeout: float = 30.0, tls: ThrowawayCA | None = None) -> None:
        self.start_timeout = start_timeout
        self.tls = tls
        self.port = 0
        self.workdir = Path(tempfile.mkdtemp(prefix="relayd-pg-"))
        self.datadir = self.workdir / "data"
        self.log_file = self.workdir / "postgres.log"
        self._process: subprocess.Popen[bytes] | None = None
        # Stops the server (once there is one) and removes the directory, at stop() or at exit.
        self._finalizer: _Finalizer = weakref.finalize(self, _shutdown, None, self.workdir)
        self._user = SYSTEM_USER if os.geteuid() == 0 else None

    def start(self) -> ThrowawayPostgres:
        """Create the cluster, start the server and wait until it answers; return self.

        Raise PostgresError when PostgreSQL is not installed, initdb fails or the server does not
        come up in time.
        """
        if self._process is not None or not self._finalizer.alive:
            raise PostgresError("a throwaway PostgreSQL starts once")
        try:
            bindir = find_bindir()
            if bindir is None:
                raise PostgresError(
                    "PostgreSQL's initdb is not installed (scripts/dev setup installs postgresql)"
                )
            self._prepare_workdir()
            self._initdb(bindir)
            if self.tls is not None:
                self._serve_tls_only(self.tls)
            self._spawn(bindir)
        except BaseException:
            self.stop()
            raise
        log.info("throwaway PostgreSQL listening on %s:%d (pid %d)", self.host, self.port, self.pid or 0)
        return self

    def stop(self) -> None:
        """Stop the server (a fast shutdown, then SIGKILL) and remove its directory."""
        self._finalizer()

    # -- databases --------------------------------------------------------------------------------

    def url(self, database: str, *, user: str = SUPERUSER, options: dict[str, str] | None = None) -> str:
        """Return the SQLAlchemy URL of *database* on this server, as *user* (no password: trust), with
        libpq's *options* (``sslmode``, ``sslcert`` …) as its query."""
        query = f"?{urlencode(options)}" if options else ""
        return f"postgresql+psycopg://{user}@{self.host}:{self.port}/{database}{query}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """Return an autocommit connection to the ``postgres`` database as the superuser."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=5,
        )

    def create_database(self, name: str) -> str:
        """Create the database *name* (letters, digits and ``_`` only) and return its URL."""
        _check_name(name)
        with self.admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop the database *name*, ending the sessions still connected to it."""
        _check_name(name)
        with self.admin() as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')

    # -- internals --------------------------------------------------------------------------------

    def _prepare_workdir(self) -> None:
        self.workdir.chmod(0o700)
        if self._user is not None:
            try:
                entry = pwd.getpwnam(self._user)
            except KeyError:
                raise PostgresError(
                    f"running as root, and there is no {self._user!r} user to run PostgreSQL as "
                    "(Debian's postgresql-common creates it: scripts/dev setup installs postgresql)"
                ) from None
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)

    def _run_as(self) -> dict[str, object]:
        """Return the Popen arguments that run a child as the server's user."""
        if self._user is None:
            return {}
        entry = pwd.getpwnam(self._user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _initdb(self, bindir: Path) -> None:
        result = subprocess.run(
            [
                str(bindir / "initdb"),
                "--pgdata",
                str(self.datadir),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            capture_output=True,
            cwd=self.workdir,
            check=False,
            **self._run_as(),  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            raise PostgresError(f"initdb failed: {result.stderr.decode(errors='replace')[-2000:]}")

    def _serve_tls_only(self, ca: ThrowawayCA) -> None:
        """Give the server the CA's certificate, and accept roles over TLS by client certificate only."""
        for source, name in (
            (ca.server_cert, "server.pem"),
            (ca.server_key, "server.key"),
            (ca.ca_cert, "ca.pem"),
        ):
            target = self.datadir / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            if self._user is not None:
                entry = pwd.getpwnam(self._user)
                os.chown(target, entry.pw_uid, entry.pw_gid)
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.pem'\n")
            conf.write("ssl_key_file = 'server.key'\nssl_ca_file = 'ca.pem'\n")
        (self.datadir / "pg_hba.conf").write_text(
            "local    all  all       trust\n"
            f"hostssl  all  {SUPERUSER}  {self.host}/32  trust\n"
            f"hostssl  all  all       {self.host}/32  cert\n"
            f"host     all  all       {self.host}/32  reject\n"
        )

    def _spawn(self, bindir: Path) -> None:
        error = ""
        for _attempt in range(5):
            self.port = free_port()
            with self.log_file.open("ab") as log_out:
                process: subprocess.Popen[bytes] = subprocess.Popen(
                    [
                        str(bindir / "postgres"),
                        "-D",
                        str(self.datadir),
                        "-p",
                        str(self.port),
                        "-k",
                        str(self.workdir),
                        "-c",
                        f"listen_addresses={self.host}",
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                        "-c",
                        "max_connections=200",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log_out,
                    stderr=log_out,
                    cwd=self.workdir,
                    start_new_session=True,
                    **self._run_as(),  # type: ignore[call-overload]
                )
            self._process = process
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _shutdown, process, self.workdir)
            error = self._wait_ready(process)
            if not error:
                return
            _stop_process(process)
            if "could not bind" not in error and "already in use" not in error:
                break
        raise PostgresError(f"the throwaway PostgreSQL did not start: {error}")

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> str:
        """Return "" once the server accepts connections, else what went wrong."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return self.log_file.read_text(errors="replace")[-2000:]
            try:
                self.admin().close()
            except psycopg.OperationalError:
                time.sleep(0.1)
                continue
            return ""
        return f"no answer on port {self.port} within {self.start_timeout:.0f}s"


def _check_name(name: str) -> None:
    if not name or not all(ch.isascii() and (ch.isalnum() or ch == "_") for ch in name):
        raise ValueError(f"database name {name!r}: letters, digits and _ only")


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    """Ask the server for a fast shutdown (SIGINT), then SIGKILL after 10 s."""
    if process.poll() is None:
        process.send_signal(2)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _shutdown(process: subprocess.Popen[bytes] | None, workdir: Path) -> None:
    if process is not None:
        _stop_process(process)
    shutil.rmtree(workdir, ignore_errors=True)
