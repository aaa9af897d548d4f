"""The drive adapter (real aligo on requests, whose trust_env aligo turns off) through a real forwarding
proxy (tinyproxy): drive.proxy with credentials for the API and the part uploads, the environment's
variables when none is configured, and NO_PROXY. The access token still never reaches a data host."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayd_sandbox.drive import UPLOAD_PREFIX, FakeDrive
from tests.support.drivebox import DriveBox
from tests.support.proxybox import Tinyproxy, via_proxy

pytestmark = pytest.mark.usefixtures("no_proxy_variables")


def test_drive_proxy_carries_the_api_calls_and_the_part_uploads(
    box: DriveBox, fake: FakeDrive, locked_proxy: Tinyproxy, tmp_path: Path
) -> None:
    box.upload_new_file("/relayd/proxied", proxy=locked_proxy.url)

    seen = fake.requests.snapshot()
    assert seen and all(via_proxy(entry.headers) for entry in seen)
    # The token refresh and the file calls (aligo, redirected to the fake's API) and each part's PUT.
    assert locked_proxy.carried(f"{fake.api_url}/v2/account/token", "POST")
    assert locked_proxy.carried(f"{fake.api_url}/adrive/v2/file/createWithFolders", "POST")
    assert len(locked_proxy.carried(f"{fake.data_url}{UPLOAD_PREFIX}/", "PUT")) == 4
    assert fake.authorized_data_requests() == []


def test_the_environment_variables_carry_the_drive_when_no_proxy_is_configured(
    box: DriveBox,
    fake: FakeDrive,
    tinyproxy: Tinyproxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", tinyproxy.url)  # read as requests reads it (curl: http_proxy only)
    box.upload_new_file("/relayd/proxied")

    assert all(via_proxy(entry.headers) for entry in fake.requests.snapshot())
    assert tinyproxy.carried(fake.api_url) and tinyproxy.carried(fake.data_url, "PUT")


def test_no_proxy_sends_the_drive_straight_even_past_drive_proxy(
    box: DriveBox,
    fake: FakeDrive,
    tinyproxy: Tinyproxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    box.upload_new_file("/relayd/proxied", proxy=tinyproxy.url)

    assert fake.requests.snapshot() and not any(via_proxy(e.headers) for e in fake.requests.snapshot())
    assert tinyproxy.requests() == []
