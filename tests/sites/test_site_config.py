"""daemon.site and daemon.hops: what a daemon serves, and the combinations refused because they could
never make progress (`relayctl config check` and `relayd run` both refuse them, exit 2)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from relayd.cli import cli
from relayd.config import load_config
from relayd.errors import ConfigError
from relayd.sites import check_sites, serves, staging_holder


def test_a_daemon_serves_every_hop_at_the_default_site(
    tmp_path: Path, make_config: Callable[..., Path]
) -> None:
    config = load_config(make_config(tmp_path))
    assert config.daemon.site == "default"
    assert config.daemon.hops is None
    assert serves(config, "download") and serves(config, "some_plugin_hop")
    check_sites(config)


def test_named_hops_are_the_only_ones_served(tmp_path: Path, make_config: Callable[..., Path]) -> None:
    config = load_config(make_config(tmp_path, daemon={"site": "vm", "hops": ["vm_pull", "lfs_push"]}))
    assert config.daemon.hops == ("vm_pull", "lfs_push")
    assert serves(config, "vm_pull") and not serves(config, "download")
    check_sites(config)
    assert staging_holder(config).startswith("vm:")
    assert staging_holder(config).endswith(str(tmp_path / "staging"))


@pytest.mark.parametrize(
    ("daemon", "message"),
    [
        ({"hops": []}, "daemon.hops: expected at least one hop name"),
        ({"hops": ["download", "download"]}, "daemon.hops: expected each hop named once"),
        ({"hops": "download"}, "daemon.hops: expected a list of strings"),
        ({"site": "abroad/1"}, "daemon.site: expected a name of letters"),
        ({"site": ""}, "daemon.site: expected a name of letters"),
    ],
)
def test_malformed_site_keys_are_refused(
    tmp_path: Path, make_config: Callable[..., Path], daemon: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(make_config(tmp_path, daemon=daemon))


@pytest.mark.parametrize(
    ("hops", "message"),
    [
        (["downlaod"], "downlaod is not an installed hop"),
        (["pan_upload"], "pan_upload reads each file from the staging disk of the daemon that downloaded it"),
        (["pan_upload", "vm_pull"], "this daemon serves no hop that fills staging \\(download\\)"),
    ],
)
def test_hops_that_can_never_make_progress_are_refused(
    tmp_path: Path, make_config: Callable[..., Path], hops: list[str], message: str
) -> None:
    config = load_config(make_config(tmp_path, daemon={"hops": hops}))
    with pytest.raises(ConfigError, match=message):
        check_sites(config)


@pytest.mark.parametrize(
    "hops", [["download", "pan_upload"], ["vm_pull", "lfs_push"], ["download"], ["lfs_push"], ["local_copy"]]
)
def test_each_sites_share_of_the_route_is_accepted(
    tmp_path: Path, make_config: Callable[..., Path], hops: list[str]
) -> None:
    check_sites(load_config(make_config(tmp_path, daemon={"hops": hops})))


def test_config_check_refuses_what_can_never_progress(
    tmp_path: Path, make_config: Callable[..., Path]
) -> None:
    path = make_config(tmp_path, daemon={"hops": ["pan_upload"]})
    result = CliRunner().invoke(cli, ["-c", str(path), "config", "check"], prog_name="relayctl")
    assert result.exit_code == 2
    assert "daemon.hops: pan_upload reads each file from the staging disk" in result.output
    assert "add one to daemon.hops on this site" in result.output


def test_the_daemon_refuses_to_start_on_it(tmp_path: Path, make_config: Callable[..., Path]) -> None:
    path = make_config(tmp_path, daemon={"hops": ["nothing_like_this"]})
    result = subprocess.run(
        [sys.executable, "-m", "relayd", "run", "--once", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "nothing_like_this is not an installed hop" in result.stderr
    assert not (tmp_path / "catalogue.db").exists(), "refused before the catalogue was touched"
