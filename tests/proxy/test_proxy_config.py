"""The proxy keys (hub.proxy, drive.proxy, vm.proxy, modelscope.proxy): validated with errors that name
the key and never the password; shown by `relayctl config show` with the password hidden, as are the
webhooks (scheme and host only)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from relayd.cli import cli
from relayd.config import load_config
from relayd.errors import ConfigError

SECTIONS = ("hub", "drive", "vm", "modelscope")


def test_each_service_takes_its_own_proxy(make_config: Callable[..., Path], tmp_path: Path) -> None:
    config = load_config(
        make_config(
            tmp_path,
            hub={"proxy": "http://hub-proxy:3128"},
            drive={"proxy": "http://user:pw@drive-proxy:8080"},
            vm={"proxy": "http://vm-proxy:3128"},
        )
    )
    assert (config.hub.proxy, config.drive.proxy) == (
        "http://hub-proxy:3128",
        "http://user:pw@drive-proxy:8080",
    )
    assert (config.vm.proxy, config.modelscope.proxy) == ("http://vm-proxy:3128", "")


@pytest.mark.parametrize("section", SECTIONS)
@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("socks5://relayd:Hunter2pw@proxy.example:1080", "socks5:// proxy is not supported"),
        ("https://relayd:Hunter2pw@proxy.example:3128", "https:// proxy is not supported"),
        ("http://relayd:Hunter2pw@proxy.example", "with its port"),
        ("relayd:Hunter2pw@proxy.example:3128", "with its port, such as 'http://"),
        ("http://relayd:Hunter2pw@proxy.example:3128/x", "no path"),
    ],
)
def test_a_proxy_that_cannot_be_used_is_refused_naming_the_key(
    make_config: Callable[..., Path], tmp_path: Path, section: str, value: str, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(make_config(tmp_path, **{section: {"proxy": value}}))
    message = str(caught.value)
    assert f"{section}.proxy: expected an http:// proxy URL" in message and says in message
    assert "Hunter2pw" not in message


def test_config_show_hides_proxy_passwords_and_webhook_urls(
    make_config: Callable[..., Path], tmp_path: Path
) -> None:
    hook = "https://hooks.example.com/services/T000/B000/XyzSecretHookToken"
    config = make_config(
        tmp_path,
        hub={"proxy": "http://relayd:Hunter2pw@proxy.example:3128"},
        modelscope={"proxy": "http://proxy.example:3128"},
        notify={"webhooks": [hook]},
    )
    text = CliRunner().invoke(cli, ["-c", str(config), "config", "show"], catch_exceptions=False).output
    as_json = (
        CliRunner()
        .invoke(cli, ["-c", str(config), "config", "show", "--json"], catch_exceptions=False)
        .output
    )
    for output in (text, as_json):
        assert "Hunter2pw" not in output and "relayd:" not in output
        assert "XyzSecretHookToken" not in output and "/services/" not in output
    data = json.loads(as_json)
    assert data["hub"]["proxy"] == "http://***@proxy.example:3128"
    assert data["modelscope"]["proxy"] == "http://proxy.example:3128"
    assert data["notify"]["webhooks"] == ["https://hooks.example.com/…"]
    # Values that cannot be pasted back are comments; a proxy without credentials is a plain value.
    assert "# proxy: http://***@proxy.example:3128" in text
    assert "# webhooks: ['https://hooks.example.com/…']" in text
    assert 'proxy = "http://proxy.example:3128"' in text
