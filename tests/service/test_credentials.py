"""Secrets as systemd credentials: names are plain file names in $CREDENTIALS_DIRECTORY, and an
environment variable left in the config from the example does not hide a credential."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from relayd.cli import cli
from relayd.config import parse_config
from relayd.errors import ConfigError


def test_an_unset_environment_variable_falls_back_to_the_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "hf-token").write_text("hf_from_credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub = parse_config({"hub": {"token_env": "HF_TOKEN", "token_credential": "hf-token"}}, tmp_path / "c").hub
    assert hub.token.resolve() == "hf_from_credential"
    assert (
        hub.token.describe() == "from the environment variable HF_TOKEN, else the systemd credential hf-token"
    )
    monkeypatch.setenv("HF_TOKEN", "hf_from_environment")
    assert hub.token.resolve() == "hf_from_environment"


def test_a_credential_name_is_a_plain_file_name(tmp_path: Path) -> None:
    for name in ("../hf-token", "/etc/shadow", "a/b", ".hidden"):
        with pytest.raises(ConfigError, match="credential name"):
            parse_config({"hub": {"token_credential": name}}, tmp_path / "c")


def test_a_credential_outside_systemd_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    drive = parse_config({"drive": {"refresh_token_credential": "drive-refresh-token"}}, tmp_path / "c").drive
    with pytest.raises(ConfigError, match=r"needs \$CREDENTIALS_DIRECTORY"):
        drive.refresh_token.resolve()


def test_config_check_warns_about_an_empty_vm_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_config: Callable[..., Path]
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "vm-ssh-key").write_text("\n")  # relayd.service's default when the file is not installed
    (credentials / "vm-known-hosts").write_text("[vm]:22 ssh-ed25519 AAAA\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    vm = {"executor": "ssh", "host": "vm", "identity_credential": "vm-ssh-key"}
    config = make_config(tmp_path, vm={**vm, "known_hosts_credential": "vm-known-hosts"})
    result = CliRunner().invoke(cli, ["-c", str(config), "config", "check"])
    assert result.exit_code == 0, result.output
    assert (
        "warning: vm.identity_credential names the credential 'vm-ssh-key', which is empty" in result.output
    )
    assert "known_hosts_credential" not in result.output
