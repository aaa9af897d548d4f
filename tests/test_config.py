"""Config validation: every error names the file and the key; the example documents every key."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import cast

import pytest

from relayd.config import load_config, parse_config, redacted
from relayd.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "relayd.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.drive.concurrency == 3
    assert config.hub.token.env == "HF_TOKEN"
    assert config.staging.max_bytes == 200 * 1000**3


def test_the_example_documents_every_key() -> None:
    import tomllib

    seen: set[str] = set()
    parse_config(tomllib.loads(EXAMPLE.read_text()), EXAMPLE, seen=seen)
    text = EXAMPLE.read_text()
    sections: dict[str, str] = {}
    for block in re.split(r"^\[", text, flags=re.M)[1:]:
        name, _, body = block.partition("]")
        sections[name] = body
    missing = []
    for key in sorted(seen):
        section, _, name = key.rpartition(".")
        if not section:
            continue  # a table itself
        body = sections.get(section, "")
        if not re.search(rf"^#? ?{re.escape(name)} = ", body, flags=re.M):
            missing.append(key)
    assert not missing, f"config.example.toml does not document: {missing}"
    # Each documented key is preceded by a comment somewhere in its section.
    for section, body in sections.items():
        assert "#" in body, f"section [{section}] has no comments"


def test_large_downloads_default_to_one_at_a_time(tmp_path: Path) -> None:
    from relayd.hops.base import HopContext
    from relayd.hops.download import BLOCK, DownloadHop

    hub = load_config(write(tmp_path, "")).hub
    assert (hub.concurrency, hub.large_concurrency) == (4, 1)
    hub = load_config(write(tmp_path, "[hub]\nconnections = 8\nlarge_concurrency = 2\n")).hub
    hop = DownloadHop(hub, cast(HopContext, None))
    assert hop.large_files == (8 * BLOCK, 2)  # a file that keeps every connection busy counts as large


def test_defaults_need_no_file_content(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.daemon.workers == 8
    assert config.catalogue.url.startswith("sqlite:///")


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("[hub]\nconections = 4\n", "hub.conections", "unknown key"),
        ("colour = 1\n", "colour", "unknown key"),
        ("[hub]\nconnections = 'many'\n", "hub.connections", "a whole number"),
        ("[hub]\nconnections = 0\n", "hub.connections", "≥ 1"),
        ("[hub]\npiece_size = '64 parsecs'\n", "hub.piece_size", "a size"),
        ("[daemon]\nlease = 'soon'\n", "daemon.lease", "a duration"),
        ("[vm]\nexecutor = 'docker'\n", "vm.executor", "one of 'local', 'ssh'"),
        ("[vm]\nexecutor = 'ssh'\n", "vm.host", "a host name"),
        ("[catalogue]\nurl = 'catalogue.db'\n", "catalogue.url", "SQLAlchemy URL"),
        ("[catalogue]\nurl = 'mysql://db/relayd'\n", "catalogue.url", "SQLite or PostgreSQL"),
        ("[hub]\ntoken = 'a'\ntoken_file = '/x'\n", "hub.token_file", "only one of"),
        (
            "[modelscope]\nremote = 'https://oauth2:tok@ms.example/{owner}/{name}.git'\n",
            "modelscope.remote",
            "without credentials",
        ),
        ("[notify]\nwebhooks = ['ftp://x']\n", "notify.webhooks", "http(s) URLs"),
        ("[retry]\ninitial = '10m'\nmaximum = '1m'\n", "retry.maximum", "retry.initial"),
        ("hub = 3\n", "hub", "a table"),
        ("[drive]\ndrive = 'both'\n", "drive.drive", "one of"),
    ],
)
def test_each_error_names_the_file_and_the_key(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert key in message
    assert expected in message


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[hub\n"))
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_secrets_from_env_file_and_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "ms-token"
    token_file.write_text("file-secret\n")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "drive").write_text("cred-secret")
    monkeypatch.setenv("MY_HF", "env-secret")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    config = load_config(
        write(
            tmp_path,
            f"[hub]\ntoken_env = 'MY_HF'\n[modelscope]\ntoken_file = '{token_file}'\n"
            "[drive]\nrefresh_token_credential = 'drive'\n",
        )
    )
    assert config.hub.token.resolve() == "env-secret"
    assert config.modelscope.token.resolve() == "file-secret"
    assert config.drive.refresh_token.resolve() == "cred-secret"
    assert "secret" not in repr(config.hub.token)


def test_readable_config_with_inline_secret_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "[hub]\ntoken = 'hf_inline_secret'\n", mode=0o644)
    with caplog.at_level(logging.WARNING):
        load_config(path)
    assert "chmod 600" in caplog.text
    assert "hf_inline_secret" not in caplog.text
    caplog.clear()
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        load_config(path)
    assert "chmod 600" not in caplog.text


def test_redacted_hides_inline_secrets() -> None:
    data = {"hub": {"token": "hf_x", "endpoint": "e"}, "drive": {"refresh_token": "r"}}
    assert redacted(data) == {"hub": {"token": "***", "endpoint": "e"}, "drive": {"refresh_token": "***"}}


def test_more_than_two_drive_downloads_at_once_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The drive allows 2 concurrent downloads per app (3 per user, Aliyun's 2024-04 notice)."""
    with caplog.at_level(logging.WARNING):
        load_config(write(tmp_path, "[vm]\nconnections = 2\n"))
    assert "ExceedMaxConcurrency" not in caplog.text
    with caplog.at_level(logging.WARNING):
        load_config(write(tmp_path, "[vm]\nconnections = 3\n"))
    assert "= 3 downloads from the drive at once" in caplog.text and "2 per app" in caplog.text
