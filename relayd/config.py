"""relayd's configuration: one TOML file, validated into frozen typed objects.

Every key is read through a ``SectionReader`` that knows the key's path, so each error names the file,
the key and what was expected, and any key nobody asked for is reported as unknown. Secrets are never
stored here: a ``SecretRef`` says where a secret lives (inline, an environment variable, a file, or a
systemd credential) and is resolved at the moment it is used.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from relayd.errors import ConfigError
from relayd.units import parse_duration, parse_size

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class SecretRef:
    """Where a secret comes from; ``resolve()`` reads it when needed and never logs it."""

    key: str
    value: str | None = None
    env: str | None = None
    file: Path | None = None
    credential: str | None = None

    @property
    def configured(self) -> bool:
        return any((self.value, self.env, self.file, self.credential))

    def describe(self) -> str:
        """Say where the secret comes from without revealing it."""
        if self.value:
            return "set in the config file"
        source = ""
        if self.file:
            source = f"the file {self.file}"
        if self.credential:
            source = f"the systemd credential {self.credential}"
        if self.env:
            return f"from the environment variable {self.env}" + (f", else {source}" if source else "")
        return f"from {source}" if source else "not set"

    def resolve(self) -> str | None:
        """Return the secret, or None when it is not configured or the source is empty. An environment
        variable that is set wins over a file or credential also configured.

        Raise ConfigError when a configured file or credential cannot be read.
        """
        if self.value:
            return self.value
        if self.env and os.environ.get(self.env):
            return os.environ[self.env]
        path: Path | None = self.file
        if self.credential:
            path = credential_path(self.credential, f"{self.key}_credential")
        if path is None:
            return None
        try:
            return path.read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError(f"{self.key}: cannot read {path}: {exc.strerror}") from exc

    def __repr__(self) -> str:
        return f"SecretRef({self.key}: {self.describe()})"


#: What a credential name may be: a plain file name in $CREDENTIALS_DIRECTORY (as systemd's IDs are).
_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,254}$")


def credential_path(name: str, key: str) -> Path:
    """Return where the systemd credential *name* (named by config *key*) is: a file in
    $CREDENTIALS_DIRECTORY, the directory systemd's ``LoadCredential=`` fills for the service.

    Outside systemd, set $CREDENTIALS_DIRECTORY to a directory holding a file of that name (for
    example ``/etc/relayd/credentials`` when relayctl runs as root). Raise ConfigError when it is unset.
    """
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError(
            f"{key} = {name!r} needs $CREDENTIALS_DIRECTORY (set by systemd's LoadCredential=; "
            "outside systemd set it to the directory holding the credential files)"
        )
    return Path(directory) / name


@dataclass(frozen=True)
class CatalogueConfig:
    url: str
    auto_upgrade: bool


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path
    workers: int
    lease: float
    shutdown_grace: float
    poll_jitter: float
    idle_wait: float
    log_level: str
    watch_config: bool


@dataclass(frozen=True)
class RetryConfig:
    initial: float
    maximum: float
    multiplier: float
    # A transfer or poll failing for longer than this (while it retries) is shown as stuck and notified.
    surface_after: float = 3600.0


@dataclass(frozen=True)
class StagingConfig:
    dir: Path
    max_bytes: int
    min_free: int


@dataclass(frozen=True)
class HubConfig:
    endpoint: str
    token: SecretRef
    concurrency: int
    large_concurrency: int
    connections: int
    piece_size: int
    timeout: float
    default_every: float
    stall_timeout: float
    #: An http:// proxy for this service's connections ("" = the proxy variables of the environment).
    proxy: str = ""


@dataclass(frozen=True)
class DriveConfig:
    backend: str
    api_url: str
    refresh_token: SecretRef
    root: str
    drive: str
    concurrency: int
    referer: str
    on_conflict: str
    timeout: float
    url_lifetime: float
    #: An http:// proxy for this service's connections ("" = the proxy variables of the environment).
    proxy: str = ""


@dataclass(frozen=True)
class VmConfig:
    executor: str
    root: str
    host: str
    port: int
    user: str
    identity_file: Path | None
    known_hosts_file: Path | None
    ssh_config_file: Path | None
    strict_host_key_checking: str  # "yes", "accept-new" or "no" (OpenSSH's words)
    ssh_options: tuple[str, ...]
    ssh_multiplex: bool
    python: str
    path: str
    concurrency: int
    connections: int
    piece_size: int
    from_staging: bool
    #: An http:// proxy for this service's connections ("" = the proxy variables of the environment).
    proxy: str = ""
    # The SSH key and known_hosts as systemd credentials (names in $CREDENTIALS_DIRECTORY), instead of
    # identity_file / known_hosts_file.
    identity_credential: str | None = None
    known_hosts_credential: str | None = None


@dataclass(frozen=True)
class ModelScopeConfig:
    remote: str
    token: SecretRef
    branch: str
    concurrency: int
    force_push: bool
    activity_timeout: float
    work_dir: str
    #: An http:// proxy for this service's connections ("" = the proxy variables of the environment).
    proxy: str = ""
    #: The HTTP API's origin for ms_upload ("" = the scheme, host and port of ``remote``).
    endpoint: str = ""

    def api_endpoint(self) -> str:
        """Return the origin of ModelScope's HTTP API (``endpoint``, else ``remote``'s origin)."""
        if self.endpoint:
            return self.endpoint.rstrip("/")
        scheme, _, rest = self.remote.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0]}"


@dataclass(frozen=True)
class LocalCopyConfig:
    source: Path
    dest: Path
    piece_size: int
    concurrency: int
    max_rate: int


@dataclass(frozen=True)
class MetricsConfig:
    listen: str


@dataclass(frozen=True)
class WebConfig:
    """The status page and control API (relayd.web): off while ``listen`` is ""."""

    listen: str
    token: SecretRef
    # On a loopback address, reading (the page, GET /api/v1/...) needs no token; control always does.
    read_without_token: bool


@dataclass(frozen=True)
class NotifyConfig:
    webhooks: tuple[str, ...]
    timeout: float
    retries: int


#: The tables a hop may declare as its section (``Hop.config_section``): a service's, or its own.
HOP_SECTIONS = frozenset({"hub", "drive", "vm", "modelscope", "local_copy"})


@dataclass(frozen=True)
class Config:
    """The whole validated configuration: one section per service, and each plugin hop's raw table."""

    path: Path
    catalogue: CatalogueConfig
    daemon: DaemonConfig
    retry: RetryConfig
    staging: StagingConfig
    hub: HubConfig
    drive: DriveConfig
    vm: VmConfig
    modelscope: ModelScopeConfig
    local_copy: LocalCopyConfig
    metrics: MetricsConfig
    notify: NotifyConfig
    web: WebConfig
    plugin_sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def section(self, key: str) -> Any:
        """Return the config section *key* names: a service's own table (``"hub"``, ``"drive"``, …) or
        a plugin hop's ``"hops.NAME"`` (its raw table, {} when absent). Raise ConfigError otherwise."""
        prefix, dot, plugin = key.partition(".")
        if prefix == "hops" and dot and plugin:
            return self.plugin_sections.get(plugin, {})
        if key in HOP_SECTIONS:
            return getattr(self, key)
        raise ConfigError(f"no config section [{key}]")

    def section_for(self, hop_name: str) -> Any:
        """Return the config section a hop of that name receives (its own slice, nothing else): the one
        its class declares (``Hop.config_section``), else its ``[hops.NAME]`` table."""
        from relayd.hops import load_hop_class

        return self.section(load_hop_class(hop_name).section_key())

    def concurrency_for(self, hop_name: str) -> int:
        """Return how many transfers of that hop may run at once."""
        section = self.section_for(hop_name)
        value = getattr(section, "concurrency", None)
        if value is None and isinstance(section, Mapping):
            value = section.get("concurrency")
        return int(value) if value else 1

    def secrets(self) -> Iterator[SecretRef]:
        """Yield every secret reference of the config (the web token when [web] serves or names one)."""
        yield self.hub.token
        yield self.drive.refresh_token
        yield self.modelscope.token
        if self.web.listen or self.web.token.configured:
            yield self.web.token


class SectionReader:
    """Read the keys of one TOML table, remembering which were read so the rest are reported."""

    def __init__(self, data: Mapping[str, Any], path: str, file: Path, seen: set[str] | None = None) -> None:
        self._data = data
        self._path = path
        self._file = file
        self._read: set[str] = set()
        self.seen: set[str] = seen if seen is not None else set()

    def _key(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def error(self, key: str, expected: str, got: object = ...) -> ConfigError:
        """Return a ConfigError naming the file, the key and what was expected."""
        found = "" if got is ... else f", got {got!r}"
        return ConfigError(f"{self._file}: {self._key(key)}: expected {expected}{found}")

    def _get(self, key: str, default: object) -> Any:
        self._read.add(key)
        self.seen.add(self._key(key))
        if key in self._data:
            return self._data[key]
        if default is ...:
            raise ConfigError(f"{self._file}: {self._key(key)}: required key is missing")
        return default

    def _convert(self, key: str, value: Any, convert: Callable[[Any], T], expected: str) -> T:
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            raise self.error(key, f"{expected} ({exc})", value) from exc

    def string(self, key: str, default: str | EllipsisType = ..., *, choices: tuple[str, ...] = ()) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self.error(key, "a string", value)
        if choices and value not in choices:
            raise self.error(key, "one of " + ", ".join(repr(c) for c in choices), value)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "true or false", value)
        return value

    def integer(
        self, key: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self._get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, "a whole number", value)
        if minimum is not None and value < minimum:
            raise self.error(key, f"a number ≥ {minimum}", value)
        if maximum is not None and value > maximum:
            raise self.error(key, f"a number ≤ {maximum}", value)
        return value

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        value = self._get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.error(key, "a number", value)
        if value < minimum:
            raise self.error(key, f"a number ≥ {minimum}", value)
        return float(value)

    def size(self, key: str, default: str | int, *, minimum: int = 0) -> int:
        value = self._convert(key, self._get(key, default), parse_size, "a size such as '64 MiB'")
        if value < minimum:
            raise self.error(key, f"a size of at least {minimum} bytes", value)
        return value

    def duration(self, key: str, default: str | float, *, minimum: float = 0.0) -> float:
        value = self._convert(
            key, self._get(key, default), parse_duration, "a duration such as '30s' or '1h'"
        )
        if value < minimum:
            raise self.error(key, f"a duration of at least {minimum}s", value)
        return value

    def path(self, key: str, default: str | EllipsisType | None = ...) -> Path | None:
        value = self._get(key, default)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.error(key, "a path", value)
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = (self._file.parent / path).resolve()
        return path

    def required_path(self, key: str, default: str) -> Path:
        path = self.path(key, default)
        if path is None:
            raise self.error(key, "a path", "")
        return path

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self._get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.error(key, "a list of strings", value)
        return tuple(value)

    def secret(self, key: str, default_env: str = "") -> SecretRef:
        """Read a secret given as ``key``, ``key_env``, ``key_file`` or ``key_credential`` (one of them)."""
        value = self._get(key, "")
        env = self._get(f"{key}_env", default_env)
        file_value = self._get(f"{key}_file", "")
        credential = self._get(f"{key}_credential", "")
        for name, item in (
            (key, value),
            (f"{key}_env", env),
            (f"{key}_file", file_value),
            (f"{key}_credential", credential),
        ):
            if not isinstance(item, str):
                raise self.error(name, "a string", item)
        explicit = [
            name
            for name, item in ((key, value), (f"{key}_file", file_value), (f"{key}_credential", credential))
            if item
        ]
        if len(explicit) > 1:
            raise self.error(explicit[1], f"only one of {', '.join(explicit)}")
        if credential and not _CREDENTIAL_NAME.match(credential):
            raise self.error(
                f"{key}_credential", "a credential name (letters, digits, '_.@-', no '/')", credential
            )
        file_path = self.path(f"{key}_file", "") if file_value else None
        if explicit:
            env = env if f"{key}_env" in self._data else ""
        return SecretRef(
            key=self._key(key),
            value=value or None,
            env=env or None,
            file=file_path,
            credential=credential or None,
        )

    def credential(self, key: str) -> str:
        """Read the name of a systemd credential ('' when unset): a plain file name."""
        name = self.string(key, "")
        if name and not _CREDENTIAL_NAME.match(name):
            raise self.error(key, "a credential name (letters, digits, '_.@-', no '/')", name)
        return name

    def table(self, key: str) -> SectionReader:
        value = self._get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, "a table", value)
        return SectionReader(value, self._key(key), self._file, self.seen)

    def names(self) -> list[str]:
        """Return the keys present in this table."""
        return list(self._data)

    def take_all(self) -> dict[str, Any]:
        """Return the whole table as data, marking every key as read."""
        for key in self._data:
            self._get(key, None)
        return dict(self._data)

    def finish(self) -> None:
        """Raise ConfigError for any key in this table that nothing read."""
        unknown = sorted(set(self._data) - self._read)
        if unknown:
            names = ", ".join(self._key(k) for k in unknown)
            raise ConfigError(
                f"{self._file}: unknown key {names} (see config.example.toml for the valid keys)"
            )


def _proxy(reader: SectionReader) -> str:
    """Read a section's ``proxy``: "" (the environment's HTTP(S)_PROXY, ALL_PROXY, NO_PROXY) or an
    http:// proxy URL with its port (curl, and so git, would assume 1080 where Python's clients assume
    80). The error never repeats the value: it may hold a password."""
    value = reader.string("proxy", "").strip()
    if not value:
        return ""
    from relayd.vm.agent.proxy import ProxyError, parse_proxy

    expected = "an http:// proxy URL with its port, such as 'http://proxy.example:3128'"
    try:
        parse_proxy(value)
    except ProxyError as exc:
        raise reader.error("proxy", f"{expected} ({exc})") from None
    if not value.startswith("http://") or urlsplit(value).port is None:
        raise reader.error("proxy", expected)
    return value


def _catalogue(reader: SectionReader, state_default: Path) -> CatalogueConfig:
    url = reader.string("url", f"sqlite:///{state_default / 'catalogue.db'}")
    # The backend name by hand, as SQLAlchemy's make_url would give it: `relayctl status` reads the
    # config and must not pay for importing SQLAlchemy.
    if "://" not in url or url.split("://", 1)[0].split("+", 1)[0] not in ("sqlite", "postgresql"):
        raise reader.error(
            "url",
            "a SQLite or PostgreSQL SQLAlchemy URL such as 'sqlite:////var/lib/relayd/catalogue.db' or "
            "'postgresql+psycopg://relayd@db/relayd'",
            url,
        )
    config = CatalogueConfig(url=url, auto_upgrade=reader.boolean("auto_upgrade", False))
    reader.finish()
    return config


def _daemon(reader: SectionReader) -> DaemonConfig:
    config = DaemonConfig(
        state_dir=reader.required_path("state_dir", "/var/lib/relayd"),
        workers=reader.integer("workers", 8, minimum=1, maximum=256),
        lease=reader.duration("lease", "2m", minimum=5),
        shutdown_grace=reader.duration("shutdown_grace", "30s"),
        poll_jitter=reader.duration("poll_jitter", "30s"),
        idle_wait=reader.duration("idle_wait", "1s", minimum=0.05),
        log_level=reader.string("log_level", "info", choices=("debug", "info", "warning", "error")),
        watch_config=reader.boolean("watch_config", True),
    )
    reader.finish()
    return config


def _retry(reader: SectionReader) -> RetryConfig:
    config = RetryConfig(
        initial=reader.duration("initial", "5s", minimum=0.01),
        maximum=reader.duration("maximum", "1h", minimum=0.01),
        multiplier=reader.number("multiplier", 2.0, minimum=1.0),
        surface_after=reader.duration("surface_after", "1h", minimum=0.01),
    )
    if config.maximum < config.initial:
        raise reader.error("maximum", f"a duration ≥ retry.initial ({config.initial}s)", config.maximum)
    reader.finish()
    return config


def _staging(reader: SectionReader, state_dir: Path) -> StagingConfig:
    config = StagingConfig(
        dir=reader.required_path("dir", str(state_dir / "staging")),
        max_bytes=reader.size("max_bytes", "200 GB", minimum=1),
        min_free=reader.size("min_free", "20 GB"),
    )
    reader.finish()
    return config


def _hub(reader: SectionReader) -> HubConfig:
    endpoint = reader.string("endpoint", "https://huggingface.co").rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise reader.error("endpoint", "an http(s) URL such as 'https://huggingface.co'", endpoint)
    config = HubConfig(
        endpoint=endpoint,
        token=reader.secret("token", default_env="HF_TOKEN"),
        concurrency=reader.integer("concurrency", 4, minimum=1, maximum=64),
        large_concurrency=reader.integer("large_concurrency", 1, minimum=1, maximum=64),
        connections=reader.integer("connections", 16, minimum=1, maximum=64),
        piece_size=reader.size("piece_size", "64 MiB", minimum=64 * 1024),
        timeout=reader.duration("timeout", "60s", minimum=1),
        default_every=reader.duration("default_every", "1h", minimum=10),
        stall_timeout=reader.duration("stall_timeout", "60s", minimum=1),
        proxy=_proxy(reader),
    )
    reader.finish()
    return config


def _drive(reader: SectionReader) -> DriveConfig:
    root = reader.string("root", "/relayd")
    if not root.startswith("/"):
        raise reader.error("root", "an absolute drive path such as '/relayd'", root)
    config = DriveConfig(
        backend=reader.string("backend", "aligo", choices=("aligo",)),
        api_url=reader.string("api_url", "https://api.aliyundrive.com").rstrip("/"),
        refresh_token=reader.secret("refresh_token"),
        root=root.rstrip("/") or "/",
        drive=reader.string("drive", "resource", choices=("resource", "backup")),
        concurrency=reader.integer("concurrency", 3, minimum=1, maximum=20),
        referer=reader.string("referer", "https://www.aliyundrive.com/"),
        on_conflict=reader.string("on_conflict", "replace", choices=("replace", "keep_both", "block")),
        timeout=reader.duration("timeout", "60s", minimum=1),
        url_lifetime=reader.duration("url_lifetime", "4h", minimum=60),
        proxy=_proxy(reader),
    )
    reader.finish()
    return config


def _vm(reader: SectionReader) -> VmConfig:
    executor = reader.string("executor", "local", choices=("local", "ssh"))
    host = reader.string("host", "")
    if executor == "ssh" and not host:
        raise reader.error("host", "a host name when executor = 'ssh'", host)
    root = reader.string("root", "/var/lib/relayd/vm")
    if not root.startswith("/"):
        raise reader.error("root", "an absolute path on the VM", root)
    config = VmConfig(
        executor=executor,
        root=root,
        host=host,
        port=reader.integer("port", 22, minimum=1, maximum=65535),
        user=reader.string("user", ""),
        identity_file=reader.path("identity_file", ""),
        known_hosts_file=reader.path("known_hosts_file", ""),
        ssh_config_file=reader.path("ssh_config_file", ""),
        strict_host_key_checking=_host_key_checking(reader),
        ssh_options=reader.strings("ssh_options"),
        ssh_multiplex=reader.boolean("ssh_multiplex", True),
        python=reader.string("python", "python3"),
        path=reader.string("path", ""),
        # One file at a time with two connections: the drive allows 2 live download links per app
        # (3 per user) and answers 403 beyond; files × connections should stay within that.
        concurrency=reader.integer("concurrency", 1, minimum=1, maximum=16),
        connections=reader.integer("connections", 2, minimum=1, maximum=16),
        piece_size=reader.size("piece_size", "64 MiB", minimum=64 * 1024),
        from_staging=reader.boolean("from_staging", False),
        proxy=_proxy(reader),
        identity_credential=reader.credential("identity_credential") or None,
        known_hosts_credential=reader.credential("known_hosts_credential") or None,
    )
    for file_key, credential_key in (
        ("identity_file", "identity_credential"),
        ("known_hosts_file", "known_hosts_credential"),
    ):
        if getattr(config, file_key) is not None and getattr(config, credential_key):
            raise reader.error(credential_key, f"only one of {file_key}, {credential_key}")
    reader.finish()
    if config.concurrency * config.connections > 2:
        log.warning(
            "vm.concurrency × vm.connections = %d downloads from the drive at once; it allows 2 per app "
            "(3 per user) and refuses more (403 ExceedMaxConcurrency): relayd then drops connections and "
            "waits",
            config.concurrency * config.connections,
        )
    return config


def _host_key_checking(reader: SectionReader) -> str:
    """Read vm.strict_host_key_checking: true ("yes"), false ("no") or "accept-new"."""
    value = reader._get("strict_host_key_checking", True)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value in ("yes", "no", "accept-new"):
        return str(value)
    raise reader.error("strict_host_key_checking", 'true, false or "accept-new"', value)


def _modelscope(reader: SectionReader) -> ModelScopeConfig:
    remote = reader.string("remote", "https://www.modelscope.cn/{owner}/{name}.git")
    if "{owner}" not in remote or "{name}" not in remote:
        raise reader.error("remote", "a URL template containing {owner} and {name}", remote)
    if "@" in remote.split("//", 1)[-1].split("/", 1)[0]:
        raise reader.error("remote", "a URL without credentials (use token_env or token_file)", "<redacted>")
    config = ModelScopeConfig(
        remote=remote,
        token=reader.secret("token", default_env="MODELSCOPE_TOKEN"),
        branch=reader.string("branch", "master"),
        concurrency=reader.integer("concurrency", 2, minimum=1, maximum=16),
        force_push=reader.boolean("force_push", False),
        activity_timeout=reader.duration("activity_timeout", "1h", minimum=30),
        work_dir=reader.string("work_dir", ""),
        proxy=_proxy(reader),
        endpoint=reader.string("endpoint", ""),
    )
    if config.endpoint and (
        not config.endpoint.startswith(("http://", "https://")) or "@" in config.endpoint.split("//", 1)[1]
    ):
        raise reader.error("endpoint", "an http(s) URL without credentials, or ''", "<redacted>")
    if config.work_dir and not config.work_dir.startswith("/"):
        raise reader.error(
            "work_dir", "an absolute path on the VM (or '' for <vm.root>/.relayd-git)", config.work_dir
        )
    if not config.branch or config.branch.startswith(("-", "/")) or ".." in config.branch:
        raise reader.error("branch", "a branch name such as 'master'", config.branch)
    reader.finish()
    return config


def _local_copy(reader: SectionReader, state_dir: Path) -> LocalCopyConfig:
    config = LocalCopyConfig(
        source=reader.required_path("source", str(state_dir / "source")),
        dest=reader.required_path("dest", str(state_dir / "copies")),
        piece_size=reader.size("piece_size", "64 MiB", minimum=1),
        concurrency=reader.integer("concurrency", 2, minimum=1, maximum=64),
        max_rate=reader.size("max_rate", 0),
    )
    reader.finish()
    return config


def _metrics(reader: SectionReader) -> MetricsConfig:
    listen = reader.string("listen", "")
    if listen:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise reader.error("listen", "'' (off) or host:port such as '127.0.0.1:9108'", listen)
    config = MetricsConfig(listen=listen)
    reader.finish()
    return config


def is_loopback(host: str) -> bool:
    """Return whether *host* (an IP address, bracketed or not, or a name) is this machine's loopback:
    127.0.0.0/8, ::1 or "localhost"."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _web(reader: SectionReader) -> WebConfig:
    listen = reader.string("listen", "")
    token = reader.secret("token")
    if listen:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise reader.error("listen", "'' (off) or host:port such as '127.0.0.1:9109'", listen)
        if not is_loopback(host) and not token.configured:
            refused = reader.error("listen", "a loopback address (127.0.0.1, ::1 or localhost)", listen)
            raise ConfigError(
                f"{refused}, since no web.token_* is set: anyone who reaches that address could read and "
                "steer relayd. Set web.token_env, web.token_file or web.token_credential (and put a TLS "
                "proxy in front), or listen on 127.0.0.1 and reach the page through an SSH tunnel "
                "(README: the status page)"
            )
    config = WebConfig(
        listen=listen, token=token, read_without_token=reader.boolean("read_without_token", True)
    )
    reader.finish()
    return config


def _notify(reader: SectionReader) -> NotifyConfig:
    webhooks = reader.strings("webhooks")
    for url in webhooks:
        if not url.startswith(("http://", "https://")):
            raise reader.error("webhooks", "http(s) URLs", url)
    config = NotifyConfig(
        webhooks=webhooks,
        timeout=reader.duration("timeout", "10s", minimum=0.1),
        retries=reader.integer("retries", 5, minimum=0, maximum=100),
    )
    reader.finish()
    return config


def parse_config(data: Mapping[str, Any], path: Path, *, seen: set[str] | None = None) -> Config:
    """Validate the TOML *data* read from *path* into a Config. Raise ConfigError naming the key."""
    root = SectionReader(data, "", path, seen)
    daemon = _daemon(root.table("daemon"))
    hops_table = root.table("hops")
    plugin_sections: dict[str, Mapping[str, Any]] = {}
    for name in hops_table.names():
        # A plugin hop's section is validated by the plugin itself when the hop is built.
        plugin_sections[name] = hops_table.table(name).take_all()
    config = Config(
        path=path,
        catalogue=_catalogue(root.table("catalogue"), daemon.state_dir),
        daemon=daemon,
        retry=_retry(root.table("retry")),
        staging=_staging(root.table("staging"), daemon.state_dir),
        hub=_hub(root.table("hub")),
        drive=_drive(root.table("drive")),
        vm=_vm(root.table("vm")),
        modelscope=_modelscope(root.table("modelscope")),
        local_copy=_local_copy(root.table("local_copy"), daemon.state_dir),
        metrics=_metrics(root.table("metrics")),
        notify=_notify(root.table("notify")),
        web=_web(root.table("web")),
        plugin_sections=plugin_sections,
    )
    root.finish()
    return config


def load_config(path: Path | str) -> Config:
    """Read, validate and return the config at *path*. Raise ConfigError with the file and key.

    Warn (once, in the log) when the file holds an inline secret and others can read it.
    """
    path = Path(path).expanduser().resolve()
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: no such file; start one with `relayctl config example > {path}`, then edit it"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    config = parse_config(data, path)
    _warn_if_secrets_readable(config)
    return config


def _warn_if_secrets_readable(config: Config) -> None:
    inline = [ref.key for ref in config.secrets() if ref.value]
    if not inline:
        return
    mode = stat.S_IMODE(config.path.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "%s holds secrets (%s) but its mode is %o: others on this machine can read them; "
            "run `chmod 600 %s`, or move them out of it (token_file, token_credential)",
            config.path,
            ", ".join(inline),
            mode,
            config.path,
        )


def redacted(data: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of raw config *data* with every inline secret replaced by '***'."""
    secret_keys = {"token", "refresh_token"}
    result: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            result[key] = redacted(value)
        elif key in secret_keys and value:
            result[key] = "***"
        else:
            result[key] = value
    return result


def config_as_dict(config: Config) -> dict[str, Any]:
    """Return the effective config (defaults filled in) as plain data, secrets described not shown."""

    def plain(value: Any) -> Any:
        if isinstance(value, SecretRef):
            return value.describe()
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if hasattr(value, "__dataclass_fields__"):
            return {name: plain(getattr(value, name)) for name in value.__dataclass_fields__}
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return value

    result: dict[str, Any] = plain(config)
    result.pop("plugin_sections", None)
    result["path"] = str(config.path)
    return result
