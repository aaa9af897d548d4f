"""The relayctl click group, its shared context and its error and exit-code rules.

Commands reach the config and the catalogue through ``App``, which loads each lazily, so a command
imports only what it uses: ``status`` reads a SQLite catalogue with the standard library alone, while
commands that write go through ``relayd.catalogue.store``.

Exit codes: 0 success, 1 runtime failure (the catalogue cannot be read or written, its schema is out of
date, a database error), 2 usage or config error (bad arguments, an invalid config naming the key, an
unknown repo or hop). Expected errors print ``relayctl: error: <message>`` and no traceback.
"""

from __future__ import annotations

import importlib
import json
import logging
import sqlite3
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.shell_completion import CompletionItem

from relayd.errors import ConfigError, RelayError, UsageError
from relayd.logs import SCRUBBER

if TYPE_CHECKING:
    from relayd.catalogue.queries import Reader
    from relayd.catalogue.store import Store
    from relayd.config import Config

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "/etc/relayd/relayd.toml"
EXIT_RUNTIME = 1
EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., Any])

EPILOG = (
    "Data goes to stdout, logs and errors to stderr. "
    "Exit status: 0 success; 1 runtime error (catalogue unreadable or at an old schema: run "
    "`relayctl db upgrade`, database errors); 2 usage or config error (bad arguments, invalid config, "
    "unknown repo or hop). The config file is -c/--config, else $RELAYD_CONFIG, else "
    f"{DEFAULT_CONFIG}."
)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Write to whatever ``sys.stderr`` is at the time of each record (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(verbose: int) -> None:
    """Send log records to stderr: warnings by default, info with -v, debug with -vv."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("relayctl: %(levelname)s: %(name)s: %(message)s"))
    handler.addFilter(SCRUBBER)  # tokens, signed URLs' queries and proxy passwords never reach stderr
    root.addHandler(handler)
    root.setLevel(level)


@dataclass
class App:
    """What every command shares: the config path, loaded lazily, and the catalogue, opened lazily."""

    config_path: Path
    verbose: int = 0
    # relayctl --url: a daemon's web API to talk to instead of the catalogue, and where its token is.
    url: str | None = None
    token_file: Path | None = None
    _config: Config | None = None
    _store: Store | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def config(self) -> Config:
        """The validated config. Raise ConfigError (exit 2) naming the file and key."""
        if self._config is None:
            from relayd.config import load_config

            self._config = load_config(self.config_path)
        return self._config

    def store(self) -> Store:
        """Return the catalogue's Store, after making sure its schema is the one this relayd expects."""
        if self._store is None:
            from relayd.catalogue.store import Store

            store = Store(self.config.catalogue.url)
            self._closers.append(store.close)
            self._check_schema(store)
            self._store = store
        return self._store

    def reader(self) -> Reader:
        """Return a read-only view of the catalogue for status, after the same schema check."""
        from relayd.catalogue.queries import open_reader, schema_at_head, sqlite_file

        url = self.config.catalogue.url
        path = sqlite_file(url)
        if path is not None and not path.exists():
            # A brand-new catalogue: let the migration code create it at head first.
            self.store()
        reader = open_reader(url)
        self._closers.append(reader.close)
        if self._store is None and not schema_at_head(reader):
            self.store()
        return reader

    def _check_schema(self, store: Store) -> None:
        """Create a new catalogue at head, or raise SchemaMismatch (exit 1) naming `relayctl db upgrade`.

        The common case (already at head) is answered without importing Alembic.
        """
        from relayd.catalogue.queries import open_reader, schema_at_head

        reader = open_reader(self.config.catalogue.url)
        try:
            if schema_at_head(reader):
                return
        finally:
            reader.close()
        from relayd.catalogue import migrate

        migrate.ensure_schema(store.engine, auto_upgrade=False, config_path=self.config_path)

    def close(self) -> None:
        for closer in reversed(self._closers):
            closer()
        self._closers.clear()


pass_app = click.make_pass_decorator(App)


def complete_repo(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Return the watched repos whose names start with *incomplete*, for shell completion: read from the
    catalogue of the config the command line names (or $RELAYD_CONFIG, or the default). Completion never
    fails aloud nor creates a catalogue: anything in the way just offers nothing."""
    from relayd.catalogue.queries import open_reader, repo_targets, sqlite_file
    from relayd.config import load_config

    del param
    logging.disable(logging.CRITICAL)  # a config warning would land in the middle of the command line
    try:
        path = ctx.find_root().params.get("config_path") or DEFAULT_CONFIG
        url = load_config(Path(path)).catalogue.url
        database = sqlite_file(url)
        if database is not None and not database.exists():
            return []
        reader = open_reader(url)
        try:
            names = [repo.name for repo in repo_targets(reader)]
        finally:
            reader.close()
    except Exception:  # noqa: BLE001 - a shell's Tab must never print a traceback
        return []
    finally:
        logging.disable(logging.NOTSET)
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


def complete_hop(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Return the installed hops whose names start with *incomplete*, for shell completion."""
    from relayd.hops import hop_names

    del ctx, param
    return [CompletionItem(name) for name in hop_names() if name.startswith(incomplete)]


def json_option(function: F) -> F:
    """Add ``--json``: one complete JSON document on stdout instead of text."""
    option = click.option("--json", "as_json", is_flag=True, help="Write one JSON document to stdout.")
    return option(function)


def echo_json(data: Any) -> None:
    """Write *data* as one JSON document: indented for a terminal, compact for a pipe.

    Compact output also keeps to json's C encoder, several times faster on a 5,000-file status.
    """
    if sys.stdout.isatty():
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        click.echo(json.dumps(data, separators=(",", ":"), ensure_ascii=False))


def _is_database_error(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        return True
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    return sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.SQLAlchemyError)


class RelayctlGroup(click.Group):
    """A click group that imports each command's module only when it runs, and turns relayd's expected
    errors into one line on stderr and an exit code."""

    def __init__(
        self,
        *args: Any,
        lazy_commands: Mapping[str, str] | None = None,
        remote_commands: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        # command name → "module:attribute"
        self.lazy_commands = dict(lazy_commands or {})
        # what runs instead when --url names a daemon (never cached: the same group serves both)
        self.remote_commands = dict(remote_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if ctx.params.get("url") and cmd_name in self.lazy_commands:
            remote = self.remote_commands.get(cmd_name)
            if remote is None:
                raise UsageError(
                    f"relayctl --url runs {', '.join(sorted(self.remote_commands))}; run `relayctl "
                    f"{cmd_name}` on the daemon's machine"
                )
            module_name, _, attribute = remote.partition(":")
            command: click.Command = getattr(importlib.import_module(module_name), attribute)
            return command
        target = self.lazy_commands.get(cmd_name)
        if target is not None and cmd_name not in self.commands:
            module_name, _, attribute = target.partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, UsageError) as exc:
            self._fail(ctx, str(exc), EXIT_USAGE)
        except RelayError as exc:
            self._fail(ctx, str(exc), EXIT_RUNTIME)
        except Exception as exc:
            if not _is_database_error(exc):
                raise
            log.debug("database error", exc_info=True)
            self._fail(ctx, f"catalogue: {exc}", EXIT_RUNTIME)
        finally:
            app = ctx.find_object(App)
            if app is not None:
                app.close()

    @staticmethod
    def _fail(ctx: click.Context, message: str, code: int) -> None:
        click.echo(f"relayctl: error: {message}", err=True)
        ctx.exit(code)
