"""The agent's pull (stdlib http.client on the VM) through a real forwarding proxy (tinyproxy), called
through the local executor as the vm_pull hop calls it: vm.proxy with credentials (absolute-form
requests), an https download host through a CONNECT tunnel, the VM's own proxy variables, NO_PROXY,
and a proxy setting the agent cannot use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from relayd.errors import NeedsPerson
from relayd.http_ranges import origin_of
from relayd.vm.executor import make_executor
from relayd_sandbox.drive import DOWNLOAD_PREFIX, FakeDrive
from relayd_sandbox.vm_testkit import FakeDriveLinks, pull_params, upload_to_fake_drive, vm_config
from tests.support.proxybox import Tinyproxy, TlsFront, make_certificate, via_proxy

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_proxy_variables")]

PIECE = 128 * 1024


def pull(
    tmp_path: Path,
    drive: FakeDrive,
    proxy: str,
    *,
    url_of: Any = None,
    agent_env: dict[str, str] | None = None,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> bytes:
    """Put a file of five pieces on the fake drive, pull it onto the VM through the local executor with
    vm.proxy *proxy* (the download URL mapped by *url_of*, if given), check it and return its bytes.
    *agent_env* is set (with *monkeypatch*) after the file is on the drive and before the executor
    starts the agent, which inherits it as a VM's agent has its login's variables."""
    data = os.urandom(5 * PIECE - 7)
    file_id = upload_to_fake_drive(drive, data, "f.bin")
    links = FakeDriveLinks(drive.api_url, drive.issue_access_token(), drive_id=drive.default_drive_id)
    url = links.download_url(file_id).url
    links.close()
    root = tmp_path / "vm"
    params = pull_params(root, data, piece=PIECE)
    for name, value in (agent_env or {}).items():
        assert monkeypatch is not None
        monkeypatch.setenv(name, value)
    executor = make_executor(vm_config(root=str(root)))
    try:
        result = executor.call(
            "pull", params, secrets={"url": url_of(url) if url_of else url, "proxy": proxy}
        )
    finally:
        executor.close()
    assert result["renamed"] and (root / "acme/tiny/f.bin").read_bytes() == data
    return data


def downloads(drive: FakeDrive) -> list[Any]:
    return [e for e in drive.requests.snapshot() if e.path.startswith(DOWNLOAD_PREFIX + "/")]


def test_vm_proxy_carries_every_ranged_get_in_absolute_form(
    tmp_path: Path, fake_drive: FakeDrive, locked_proxy: Tinyproxy
) -> None:
    pull(tmp_path, fake_drive, locked_proxy.url)

    gets = downloads(fake_drive)
    assert len(gets) == 5 and all(via_proxy(e.headers) and e.header("Range") for e in gets)
    assert len(locked_proxy.carried(f"{fake_drive.data_url}{DOWNLOAD_PREFIX}/", "GET")) == 5
    assert fake_drive.authorized_data_requests() == []


def test_an_https_download_host_is_reached_through_a_connect_tunnel(
    tmp_path: Path, fake_drive: FakeDrive, locked_proxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = make_certificate(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the agent's default context trusts it
    front = TlsFront(origin_of(fake_drive.data_url)[2], cert, key)
    try:
        pull(tmp_path, fake_drive, locked_proxy.url, url_of=front.https)
    finally:
        front.stop()

    tunnels = locked_proxy.carried(f"127.0.0.1:{front.port}", "CONNECT")
    assert 1 <= len(tunnels) <= 2 and len(tunnels) == front.connections  # one per connection
    assert len(downloads(fake_drive)) == 5
    assert not any(via_proxy(e.headers) for e in downloads(fake_drive))  # inside a tunnel


def test_the_vms_proxy_variables_carry_the_pull_when_vm_proxy_is_empty(
    tmp_path: Path, fake_drive: FakeDrive, locked_proxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    pull(tmp_path, fake_drive, "", agent_env={"ALL_PROXY": locked_proxy.url}, monkeypatch=monkeypatch)

    assert all(via_proxy(e.headers) for e in downloads(fake_drive))
    assert len(locked_proxy.carried(fake_drive.data_url, "GET")) == 5


def test_no_proxy_sends_the_pull_straight_even_past_vm_proxy(
    tmp_path: Path, fake_drive: FakeDrive, locked_proxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    pull(
        tmp_path,
        fake_drive,
        locked_proxy.url,
        agent_env={"no_proxy": "localhost,127.0.0.0/8"},
        monkeypatch=monkeypatch,
    )

    assert downloads(fake_drive) and not any(via_proxy(e.headers) for e in downloads(fake_drive))
    assert locked_proxy.requests() == []


def test_a_proxy_the_agent_cannot_use_blocks_with_a_hint(
    tmp_path: Path, fake_drive: FakeDrive, monkeypatch: pytest.MonkeyPatch
) -> None:
    socks = {"HTTP_PROXY": "socks5h://relayd:s0cks-pw@127.0.0.1:1080"}
    with pytest.raises(NeedsPerson) as caught:
        pull(tmp_path, fake_drive, "", agent_env=socks, monkeypatch=monkeypatch)
    assert "HTTP_PROXY" in str(caught.value) and "s0cks-pw" not in str(caught.value)
    assert "vm.proxy" in caught.value.hint
    assert downloads(fake_drive) == []
