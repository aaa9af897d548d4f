"""Fixtures shared by every test package. Keep each one small and generic. The fakes' own fixtures
(``fake_hub``, ``fake_drive``, ``gitlfs_server``, ``sandbox_sshd``) come from relayd-sandbox's pytest
plugin."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from relayd.catalogue import migrate
from relayd.catalogue.store import Store
from relayd_sandbox.sshd import SandboxSshd

# Fixtures of the helpers in tests/support, for every test package.
pytest_plugins = ["tests.support.drivebox", "tests.support.proxybox"]

ConfigFactory = Callable[..., Path]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))  # JSON string escapes are valid TOML


def write_config(root: Path, *, raw: str = "", mode: int = 0o600, **sections: Mapping[str, Any]) -> Path:
    """Write ``root/relayd.toml``: a minimal valid config whose catalogue, state, staging and local_copy
    directories live under *root*, with each keyword's keys merged over (or added as) that section.

    A section name may be dotted (``**{"hops.mine": {...}}``); *raw* TOML is appended as is (for
    malformed files). Return the path. The file is mode 0600 unless *mode* says otherwise.
    """
    merged: dict[str, dict[str, Any]] = {
        "daemon": {"state_dir": str(root / "state")},
        "catalogue": {"url": f"sqlite:///{root / 'catalogue.db'}"},
        "staging": {"dir": str(root / "staging"), "max_bytes": "10 GB", "min_free": "0"},
        "local_copy": {"source": str(root / "source"), "dest": str(root / "copies")},
    }
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    lines: list[str] = []
    for name, values in merged.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    path = root / "relayd.toml"
    path.write_text("\n".join(lines) + raw, encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.fixture
def make_config() -> ConfigFactory:
    """Return ``write_config(root, **sections)``: a config file pointing at a catalogue under *root*."""
    return write_config


@pytest.fixture(params=["sqlite", "postgresql"])
def either_catalogue(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new catalogue's URL on each database several daemons may share: a SQLite file, then a database
    on the throwaway PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalogue.db'}"
    postgres_url: str = request.getfixturevalue("postgres_url")
    return postgres_url


@pytest.fixture
def either_store(either_catalogue: str) -> Iterator[Store]:
    """A Store on ``either_catalogue``, its schema made."""
    store = Store(either_catalogue)
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    yield store
    store.close()


@pytest.fixture(scope="module")
def sshd(sandbox_sshd: SandboxSshd) -> SandboxSshd:
    """The sandbox plugin's OpenSSH server on 127.0.0.1, one per test module (skipped, or failed under
    CI, without sshd)."""
    return sandbox_sshd


@pytest.fixture
def wrong_known_hosts(sshd: SandboxSshd, tmp_path: Path) -> Path:
    """A known_hosts file that pins a freshly made ed25519 key, not the sandbox sshd's, to its address."""
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    key_type, key_data = Path(f"{other}.pub").read_text().split()[:2]
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {key_type} {key_data}\n")
    return wrong
