"""relayctl config check/show, db current/upgrade, exit codes, and the installed console script."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from alembic import command
from click.testing import CliRunner

from relayd.catalogue import migrate
from relayd.catalogue.db import make_engine
from relayd.cli import cli

if TYPE_CHECKING:
    from tests.support.relayctl import Relayctl

TOKEN = "hf_inline_secret_value_1234567890"


def test_config_check_ok(relayctl: Relayctl) -> None:
    result = relayctl("config", "check")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"ok: {relayctl.config}"
    assert all(line.startswith("warning: ") for line in lines[1:])
    assert "warning: drive.refresh_token is not set; hops that need it will block" in lines
    assert not relayctl.db.exists()  # checking the config does not open the catalogue


def test_config_check_warns_about_a_readable_inline_secret(
    tmp_path: Path, make_config: Callable[..., Path]
) -> None:
    config = make_config(tmp_path, hub={"token": TOKEN}, mode=0o644)
    result = CliRunner().invoke(cli, ["-c", str(config), "config", "check"])
    assert result.exit_code == 0
    assert "chmod 600" in result.stdout
    assert TOKEN not in result.output


@pytest.mark.parametrize(
    ("sections", "raw", "names"),
    [
        ({"staging": {"max_bytes": "lots"}}, "", "staging.max_bytes"),
        ({"hub": {"concurrency": 0}}, "", "hub.concurrency"),
        ({"hub": {"colour": "blue"}}, "", "unknown key hub.colour"),
        ({}, "[daemon\n", "invalid TOML"),
    ],
)
def test_a_bad_config_is_exit_2_naming_file_and_key(
    tmp_path: Path,
    make_config: Callable[..., Path],
    sections: dict[str, dict[str, object]],
    raw: str,
    names: str,
) -> None:
    config = make_config(tmp_path, raw=raw, **sections)
    for args in (["config", "check"], ["status"], ["list"]):
        result = CliRunner().invoke(cli, ["-c", str(config), *args])
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith(f"relayctl: error: {config}")
        assert names in result.stderr
        assert "Traceback" not in result.output
    assert not (tmp_path / "catalogue.db").exists()


def test_config_check_reads_secret_files(tmp_path: Path, make_config: Callable[..., Path]) -> None:
    config = make_config(tmp_path, hub={"token_file": str(tmp_path / "missing-token")})
    result = CliRunner().invoke(cli, ["-c", str(config), "config", "check"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"relayctl: error: {config}: hub.token: cannot read")
    (tmp_path / "missing-token").write_text("hf_from_a_file_0123456789\n")
    result = CliRunner().invoke(cli, ["-c", str(config), "config", "check"])
    assert result.exit_code == 0
    assert "hub.token" not in result.stdout
    assert "hf_from_a_file" not in result.output


def test_the_config_path_comes_from_the_option_the_environment_or_etc(
    tmp_path: Path, make_config: Callable[..., Path]
) -> None:
    config = make_config(tmp_path)
    from_env = CliRunner().invoke(cli, ["config", "check"], env={"RELAYD_CONFIG": str(config)})
    assert from_env.stdout.startswith(f"ok: {config}")
    missing = CliRunner().invoke(cli, ["config", "check"], env={"RELAYD_CONFIG": None})
    assert missing.exit_code == 2
    assert "relayctl: error: /etc/relayd/relayd.toml: no such file" in missing.stderr
    other = CliRunner().invoke(
        cli, ["-c", str(tmp_path / "nope.toml"), "config", "check"], env={"RELAYD_CONFIG": str(config)}
    )
    assert other.exit_code == 2
    assert "nope.toml: no such file" in other.stderr


def test_config_show_never_prints_a_secret(tmp_path: Path, make_config: Callable[..., Path]) -> None:
    config = make_config(
        tmp_path,
        hub={"token": TOKEN},
        drive={"refresh_token_file": str(tmp_path / "refresh")},
        catalogue={"url": "postgresql://relay:db-password-42@db.example/relayd"},
    )
    assert os.stat(config).st_mode & 0o777 == 0o600
    text = CliRunner().invoke(cli, ["-c", str(config), "config", "show"])
    as_json = CliRunner().invoke(cli, ["-c", str(config), "config", "show", "--json"])
    for result in (text, as_json):
        assert result.exit_code == 0, result.output
        assert TOKEN not in result.output
        assert "db-password-42" not in result.output
    assert "# token: set in the config file" in text.stdout
    assert f"# refresh_token: from the file {tmp_path / 'refresh'}" in text.stdout
    assert "[staging]" in text.stdout
    assert 'url = "postgresql://relay:***@db.example/relayd"' in text.stdout
    data = json.loads(as_json.stdout)
    assert data["hub"]["token"] == "set in the config file"
    assert data["staging"]["max_bytes"] == 10_000_000_000
    assert data["path"] == str(config)


def test_db_current_does_not_create_a_catalogue(relayctl: Relayctl) -> None:
    result = relayctl("db", "current")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"current: none (no catalogue at {relayctl.db} yet)",
        f"head: {migrate.head_revision()}",
    ]
    assert not relayctl.db.exists()


def _old_catalogue(relayctl: Relayctl) -> None:
    """Leave a catalogue downgraded to Alembic's base: its tables gone, its version table empty."""
    relayctl.store  # noqa: B018 - creates the catalogue at head
    relayctl.close()
    engine = make_engine(relayctl.url)
    with engine.connect() as connection:
        command.downgrade(migrate.alembic_config(connection), "base")
        connection.commit()
    engine.dispose()


def test_an_old_schema_is_a_runtime_error_until_db_upgrade(relayctl: Relayctl) -> None:
    relayctl("add", "org/model", "--route", "local_copy")
    connection = sqlite3.connect(relayctl.db)
    connection.execute("UPDATE alembic_version SET version_num = '0000'")
    connection.commit()
    connection.close()
    for args in (["status"], ["status", "--json"], ["list"], ["pause", "org/model"]):
        result = relayctl(*args)
        assert result.exit_code == 1, args
        assert result.stdout == ""
        assert "relayctl: error: the catalogue's schema is 0000" in result.stderr
        assert "db upgrade" in result.stderr
    current = relayctl("db", "current")
    assert current.stdout.splitlines()[0] == "current: 0000"


def test_db_upgrade_backs_up_first(relayctl: Relayctl) -> None:
    _old_catalogue(relayctl)
    assert relayctl("status").exit_code == 1
    result = relayctl("db", "upgrade")
    assert result.exit_code == 0, result.output
    backup_line, upgraded = result.stdout.splitlines()
    assert backup_line.startswith(f"backup: {relayctl.db}.backup-")
    assert Path(backup_line.removeprefix("backup: ")).is_file()
    assert upgraded == f"upgraded: none -> {migrate.head_revision()}"
    assert relayctl("status").exit_code == 0
    assert relayctl("db", "upgrade").stdout == f"already at {migrate.head_revision()}; nothing to do\n"


def test_a_database_error_is_exit_1_without_a_traceback(relayctl: Relayctl) -> None:
    relayctl.db.write_bytes(b"this is not a database, just some bytes " * 100)
    for args in (["status"], ["list"]):
        result = relayctl(*args)
        assert result.exit_code == 1, args
        assert result.stderr.startswith("relayctl: error: ")
        assert "not a database" in result.stderr
        assert "Traceback" not in result.output


def test_help_documents_the_exit_codes(relayctl: Relayctl) -> None:
    result = relayctl("--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "Exit status: 0 success; 1 runtime error" in text
    assert "2 usage or config error" in text


def test_the_console_script(tmp_path: Path, make_config: Callable[..., Path]) -> None:
    """The installed `relayctl` entry point, as a person or a script runs it."""
    relayctl = Path(sys.executable).parent / "relayctl"
    config = make_config(tmp_path)
    env = {**os.environ, "RELAYD_CONFIG": str(config)}
    added = subprocess.run(
        [str(relayctl), "add", "org/model", "--route", "local_copy"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("added org/model:")
    status = subprocess.run(
        [str(relayctl), "status", "--json"], capture_output=True, text=True, env=env, check=False
    )
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert (data["format"], data["kind"]) == (1, "summary")
    assert [repo["name"] for repo in data["repos"]] == ["org/model"]
    unknown = subprocess.run(
        [str(relayctl), "status", "org/none"], capture_output=True, text=True, env=env, check=False
    )
    assert unknown.returncode == 2
    assert unknown.stderr == "relayctl: error: no repo named 'org/none' (see `relayctl list`)\n"
