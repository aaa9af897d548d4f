"""`relayctl config`: validate the config file, show the effective config without its secrets, and print
the documented example to start one from."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from relayd.cli.app import App, echo_json, json_option, pass_app
from relayd.errors import ConfigError

if TYPE_CHECKING:
    from relayd.config import Config


@click.group("config")
def config_group() -> None:
    """Check or show the config."""


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _collect_warnings(name: str) -> Iterator[list[str]]:
    """Collect the warnings logger *name* emits (instead of logging them too)."""
    logger = logging.getLogger(name)
    handler = _Collect()
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def config_warnings(config: Config) -> list[str]:
    """Return what is valid but probably not intended: unset secrets, hops that are not installed.

    Raise ConfigError if a configured secret file or credential cannot be read.
    """
    from relayd.hops import DEFAULT_ROUTE, hop_names, load_hop_class

    warnings: list[str] = []
    for ref in config.secrets():
        if not ref.configured:
            warnings.append(f"{ref.key} is not set; hops that need it will block")
            continue
        try:
            value = ref.resolve()
        except ConfigError as exc:
            raise ConfigError(f"{config.path}: {exc}") from exc
        if value is None:
            warnings.append(f"{ref.key} comes {ref.describe()}, which is empty; hops that need it will block")
    if config.vm.executor == "ssh":
        warnings += _vm_credential_warnings(config)
    known = set(hop_names())
    missing = [hop for hop in DEFAULT_ROUTE if hop not in known]
    if missing:
        warnings.append(
            f"the default route names hops that are not installed ({', '.join(missing)}); "
            "give `relayctl add` a --route until they are"
        )
    for name in config.plugin_sections:
        if name not in known:
            warnings.append(f"hops.{name}: no hop named {name!r} is installed")
    for name in sorted(known):
        try:
            load_hop_class(name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, not fatal, here
            warnings.append(f"hop {name!r} cannot be loaded: {exc}")
    return warnings


def _vm_credential_warnings(config: Config) -> list[str]:
    """Return a warning for each VM credential (SSH key, known_hosts) that is named but empty or absent."""
    from relayd.config import credential_path

    warnings = []
    for key in ("identity_credential", "known_hosts_credential"):
        name = getattr(config.vm, key)
        if not name:
            continue
        path = credential_path(name, f"vm.{key}")
        try:
            empty = not path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"{config.path}: vm.{key}: cannot read {path}: {exc.strerror}") from exc
        if empty:
            warnings.append(
                f"vm.{key} names the credential {name!r}, which is empty; the VM cannot be reached"
            )
    return warnings


@config_group.command("check")
@pass_app
def check(app: App) -> None:
    """Validate the config; print "ok: PATH" and any warnings, or fail (exit 2) naming the key."""
    from relayd.sites import check_sites

    with _collect_warnings("relayd.config") as load_warnings:
        config = app.config
    check_sites(config)
    warnings = load_warnings + config_warnings(config)
    click.echo(f"ok: {config.path}")
    for warning in warnings:
        click.echo(f"warning: {warning}")


_URL_PASSWORD = re.compile(r"^([A-Za-z][\w+.-]*://[^/@:]*:)[^/@]*@")


def mask_url(url: str) -> str:
    """Return a database URL with its password, if any, replaced by '***'."""
    return _URL_PASSWORD.sub(r"\1***@", url)


def _secret_keys(config: Config) -> set[tuple[str, str]]:
    """Return (section, key) of every secret, so `show` can print them as comments."""
    found = set()
    for ref in config.secrets():
        section, _, key = ref.key.rpartition(".")
        found.add((section, key))
    return found


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(str(value), ensure_ascii=False)


def render_toml(data: dict[str, Any], secrets: set[tuple[str, str]]) -> list[str]:
    """Return the effective config as TOML-like lines; secrets appear as comments naming their source,
    unset values as comments, so pasting the output back never turns a description into a value."""
    lines = [f"# effective config of {data.get('path')} (defaults filled in)"]
    for section, values in data.items():
        if not isinstance(values, dict):
            continue
        lines.append("")
        lines.append(f"[{section}]")
        for key, value in values.items():
            if (section, key) in secrets:
                lines.append(f"# {key}: {value}")
            elif value is None:
                lines.append(f"# {key} is not set")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
    return lines


def redact_urls(data: dict[str, Any]) -> set[tuple[str, str]]:
    """Hide the secrets that URLs in the effective config *data* carry, in place: a password in the
    catalogue URL, the userinfo of each service's proxy, all but the scheme and host of webhooks.
    Return (section, key) of each value changed beyond pasting back (shown as comments)."""
    from relayd.logs import scrub_urls, url_host

    data["catalogue"]["url"] = mask_url(data["catalogue"]["url"])
    changed = set()
    for section in ("hub", "drive", "vm", "modelscope"):
        proxy = data[section].get("proxy") or ""
        if scrub_urls(proxy) != proxy:
            data[section]["proxy"] = scrub_urls(proxy)
            changed.add((section, "proxy"))
    if data["notify"]["webhooks"]:
        data["notify"]["webhooks"] = [url_host(url) + "/…" for url in data["notify"]["webhooks"]]
        changed.add(("notify", "webhooks"))
    return changed


@config_group.command("show")
@json_option
@pass_app
def show(app: App, as_json: bool) -> None:
    """Print the effective config; secrets are shown only as where they come from, URLs without the
    secrets they may carry."""
    from relayd.config import config_as_dict

    config = app.config
    data = config_as_dict(config)
    redacted = redact_urls(data)
    if as_json:
        echo_json(data)
        return
    for line in render_toml(data, _secret_keys(config) | redacted):
        click.echo(line)
    if config.plugin_sections:
        names = ", ".join(sorted(config.plugin_sections))
        click.echo("")
        click.echo(f"# [hops.*] sections ({names}) belong to their plugins and are not shown")


def example_path() -> Path:
    """Return the documented example config: the wheel's copy (package data), else the checkout's."""
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir / "config.example.toml", package_dir.parent / "config.example.toml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"the example config is missing from this installation (looked in {package_dir})")


@config_group.command("example")
def example() -> None:
    """Print the documented example config (every key, its default and what it does), e.g.
    `relayctl config example > relayd.toml`."""
    click.echo(example_path().read_text(encoding="utf-8"), nl=False)
