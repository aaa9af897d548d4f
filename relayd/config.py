"""relayd's configuration: one TOML file, validated into frozen typed objects.

Every key is read through a ``SectionReader`` that knows the key's path, so each error names the file,
the key and what was expected, and any key nobody asked for is reported as unknown. Secrets are never
stored here: a ``SecretRef`` says where a secret lives (inline, an environment variable, a file, or a
systemd credential) and is resolved at the moment it is used.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relayd.config_model import (
    HOP_SECTIONS,
    CatalogueConfig,
    Config,
    DaemonConfig,
    DriveConfig,
    HubConfig,
    LocalCopyConfig,
    MetricsConfig,
    ModelScopeConfig,
    NotifyConfig,
    RetryConfig,
    SecretRef,
    StagingConfig,
    VmConfig,
    WebConfig,
    credential_path,
)
from relayd.config_reader import SectionReader
from relayd.errors import ConfigError

log = logging.getLogger(__name__)

# The typed sections live in config_model.py and the key reader in config_reader.py; both are
# re-exported here, so `from relayd.config import X` stays the one way in.
__all__ = [
    "HOP_SECTIONS",
    "CatalogueConfig",
    "Config",
    "DaemonConfig",
    "DriveConfig",
    "HubConfig",
    "LocalCopyConfig",
    "MetricsConfig",
    "ModelScopeConfig",
    "NotifyConfig",
    "RetryConfig",
    "SecretRef",
    "SectionReader",
    "StagingConfig",
    "VmConfig",
    "WebConfig",
    "config_as_dict",
    "credential_path",
    "is_loopback",
    "load_config",
    "parse_config",
    "redacted",
]


def _ca_bundle(reader: SectionReader) -> Path | None:
    """Read a section's ``ca_bundle``: a PEM file of CA certificates trusted besides the system's.
    A file that is missing or holds no certificate is an error naming the key."""
    path = reader.path("ca_bundle", "")
    if path is None:
        return None
    from relayd.vm.agent.proxy import new_client_context

    try:
        new_client_context(str(path))
    except OSError as exc:  # ssl.SSLError included: no certificate in it
        reason = exc.strerror or getattr(exc, "reason", None) or str(exc)
        expected = f"a readable PEM file of CA certificates ({reason})"
        raise reader.error("ca_bundle", expected, str(path)) from None
    return path


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
        site=_site_name(reader),
        hops=_served_hops(reader),
        keep_copies_routes=tuple(
            ",".join(hop.strip() for hop in route.split(","))
            for route in reader.strings("keep_copies_routes")
        ),
    )
    reader.finish()
    return config


_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _site_name(reader: SectionReader) -> str:
    site = reader.string("site", "default")
    if not _SITE_NAME.match(site):
        raise reader.error("site", "a name of letters, digits, '_.-' (at most 64)", site)
    return site


def _served_hops(reader: SectionReader) -> tuple[str, ...] | None:
    """Read daemon.hops: unset serves every hop; a list names the hops, at least one, each once."""
    if "hops" not in reader.names():
        return None
    hops = reader.strings("hops")
    if not hops:
        raise reader.error("hops", "at least one hop name (leave the key out to serve every hop)", [])
    if len(set(hops)) != len(hops):
        raise reader.error("hops", "each hop named once", list(hops))
    return hops


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
        ca_bundle=_ca_bundle(reader),
    )
    reader.finish()
    return config


def _drive(reader: SectionReader) -> DriveConfig:
    root = reader.string("root", "/relayd")
    if not root.startswith("/"):
        raise reader.error("root", "an absolute drive path such as '/relayd'", root)
    backend = reader.string("backend", "aligo", choices=("aligo", "open"))
    is_open = backend == "open"
    config = DriveConfig(
        backend=backend,
        api_url=reader.string(
            "api_url", "https://openapi.alipan.com" if is_open else "https://api.aliyundrive.com"
        ).rstrip("/"),
        refresh_token=reader.secret("refresh_token"),
        root=root.rstrip("/") or "/",
        drive=reader.string("drive", "resource", choices=("resource", "backup")),
        concurrency=reader.integer("concurrency", 3, minimum=1, maximum=20),
        referer=reader.string("referer", "https://www.aliyundrive.com/"),
        on_conflict=reader.string("on_conflict", "replace", choices=("replace", "keep_both", "block")),
        timeout=reader.duration("timeout", "60s", minimum=1),
        # The Open Platform's links last 900 s unless the app applied for more (up to 4 h).
        url_lifetime=reader.duration("url_lifetime", "15m" if is_open else "4h", minimum=60),
        proxy=_proxy(reader),
        ca_bundle=_ca_bundle(reader),
        client_id=reader.string("client_id", ""),
        client_secret=reader.secret("client_secret"),
        max_file_size=reader.size("max_file_size", "30 GB", minimum=1),
    )
    if is_open and not config.client_id:
        raise reader.error("client_id", "the client id of your Open Platform app when backend = 'open'")
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
        ca_bundle=_ca_bundle(reader),
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
