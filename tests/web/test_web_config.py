"""[web]: off by default, loopback unless a token is set, and a token that cannot be used stops the start."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from relayd.config import load_config
from relayd.errors import ConfigError
from relayd.web.access import resolve_token

TOKEN = "a-web-token-of-32-characters-xx"


def test_off_by_default(tmp_path: Path, make_config: Callable[..., Path]) -> None:
    web = load_config(make_config(tmp_path)).web
    assert web.listen == ""
    assert not web.token.configured
    assert web.read_without_token is True


@pytest.mark.parametrize("listen", ["0.0.0.0:9109", "192.0.2.7:9109", "[::]:9109", "relay.example.com:9109"])
def test_a_non_loopback_address_without_a_token_is_refused(
    tmp_path: Path, make_config: Callable[..., Path], listen: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(make_config(tmp_path, web={"listen": listen}))
    message = str(refused.value)
    assert "web.listen" in message and listen in message
    assert "web.token_env" in message and "SSH tunnel" in message


@pytest.mark.parametrize("listen", ["127.0.0.1:9109", "localhost:9109", "[::1]:9109", "127.0.0.2:0"])
def test_a_loopback_address_needs_no_token(
    tmp_path: Path, make_config: Callable[..., Path], listen: str
) -> None:
    web = load_config(make_config(tmp_path, web={"listen": listen})).web
    assert web.listen == listen
    assert resolve_token(web) is None


@pytest.mark.parametrize("listen", ["9109", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000"])
def test_a_malformed_listen_address_is_refused(
    tmp_path: Path, make_config: Callable[..., Path], listen: str
) -> None:
    with pytest.raises(ConfigError, match=r"web.listen: expected '' \(off\) or host:port"):
        load_config(make_config(tmp_path, web={"listen": listen}))


def test_the_token_comes_from_the_usual_secret_sources(
    tmp_path: Path, make_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "web-token"
    token_file.write_text(TOKEN + "\n")
    web = load_config(
        make_config(tmp_path, web={"listen": "0.0.0.0:9109", "token_file": str(token_file)})
    ).web
    assert resolve_token(web) == TOKEN
    monkeypatch.setenv("MY_WEB_TOKEN", TOKEN)
    web = load_config(make_config(tmp_path, web={"listen": "0.0.0.0:9109", "token_env": "MY_WEB_TOKEN"})).web
    assert resolve_token(web) == TOKEN
    assert "web.token" in [
        ref.key for ref in load_config(make_config(tmp_path, web={"token": TOKEN})).secrets()
    ]


def test_an_unset_or_short_token_is_refused_when_the_server_starts(
    tmp_path: Path, make_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MY_WEB_TOKEN", raising=False)
    web = load_config(make_config(tmp_path, web={"listen": "0.0.0.0:9109", "token_env": "MY_WEB_TOKEN"})).web
    with pytest.raises(ConfigError, match="environment variable MY_WEB_TOKEN, which is empty or unset"):
        resolve_token(web)
    monkeypatch.setenv("MY_WEB_TOKEN", "short")
    with pytest.raises(ConfigError, match="has 5 characters; use at least 16"):
        resolve_token(web)


@pytest.mark.parametrize(
    ("web", "said"),
    [
        ({"listen": "0.0.0.0:9109"}, "web.listen: expected a loopback address"),
        (
            {"listen": "0.0.0.0:9109", "token_env": "RELAYD_TEST_UNSET_TOKEN"},
            "RELAYD_TEST_UNSET_TOKEN, which is empty",
        ),
    ],
)
def test_relayd_refuses_to_start_without_a_usable_token(
    tmp_path: Path, make_config: Callable[..., Path], web: dict[str, str], said: str
) -> None:
    config = make_config(tmp_path, web=web)
    started = subprocess.run(
        [sys.executable, "-m", "relayd", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={key: value for key, value in os.environ.items() if key != "RELAYD_TEST_UNSET_TOKEN"},
    )
    assert started.returncode == 2
    assert said in started.stderr
    assert not (tmp_path / "catalogue.db").exists()  # refused before anything ran
