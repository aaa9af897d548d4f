"""relayd's configuration as frozen typed objects: one dataclass per section, ``Config`` for the whole
file, and ``SecretRef``, which says where a secret lives (inline, an environment variable, a file, or a
systemd credential) and resolves it at the moment it is used. Read and validated by relayd/config.py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relayd.errors import ConfigError


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
CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,254}$")


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
    #: The site this daemon runs on (docs/sites.md): daemons of one site share its networks.
    site: str = "default"
    #: The hops this daemon serves (claims, and polls for routes starting with one); None: every hop.
    hops: tuple[str, ...] | None = None
    #: Routes (hop names joined by commas) whose repos move every file through every hop, even what
    #: the destination already holds ("ask the end first" is off for them; ``--keep-copies`` per repo).
    keep_copies_routes: tuple[str, ...] = ()


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
    #: A PEM file of CAs to trust besides the system's (a private CA, a TLS-inspecting proxy's).
    ca_bundle: Path | None = None


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
    #: A PEM file of CAs to trust besides the system's (a private CA, a TLS-inspecting proxy's).
    ca_bundle: Path | None = None
    #: The Open Platform backend (``backend = "open"``): the registered app's client id and secret
    #: (no secret: a PKCE app), and the largest file it accepts (larger ones block before a byte).
    client_id: str = ""
    client_secret: SecretRef = field(default_factory=lambda: SecretRef("drive.client_secret"))
    max_file_size: int = 30 * 1000**3


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
    #: A PEM file of CAs to trust besides the system's (a private CA, a TLS-inspecting proxy's).
    ca_bundle: Path | None = None
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
        """Yield every secret reference of the config (the web token when [web] serves or names one; the
        drive's client secret when named: an Open Platform PKCE app has none, the web backend no use)."""
        yield self.hub.token
        yield self.drive.refresh_token
        if self.drive.client_secret.configured:
            yield self.drive.client_secret
        yield self.modelscope.token
        if self.web.listen or self.web.token.configured:
            yield self.web.token
