"""ca_bundle (hub, drive, vm): CAs trusted besides the system's, as a private CA or a TLS-inspecting
proxy needs. Validated at load with errors naming the key; the drive's part uploads and the VM's pulls
reach a data host that speaks HTTPS with the sandbox's throwaway CA only when told to trust it, and an
untrusted certificate on the VM blocks the pull in plain words. (The download hop: tests/hops/
test_download_tls.py.)"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from relayd.config import load_config
from relayd.errors import ConfigError, ErrorClass, NeedsPerson
from relayd.vm.agent.proxy import client_context
from relayd.vm.executor import make_executor
from relayd_sandbox.drive import DOWNLOAD_PREFIX, UPLOAD_PREFIX, FakeDrive
from relayd_sandbox.tls import ThrowawayCA
from relayd_sandbox.vm_testkit import FakeDriveLinks, pull_params, upload_to_fake_drive, vm_config
from tests.support.drivebox import DriveBox

SERVICES = ("hub", "drive", "vm")
PIECE = 128 * 1024


def test_each_service_takes_its_own_ca_bundle(
    make_config: Callable[..., Path], tmp_path: Path, sandbox_ca: ThrowawayCA
) -> None:
    config = load_config(
        make_config(
            tmp_path, hub={"ca_bundle": str(sandbox_ca.ca_cert)}, vm={"ca_bundle": str(sandbox_ca.ca_cert)}
        )
    )
    assert (config.hub.ca_bundle, config.drive.ca_bundle, config.vm.ca_bundle) == (
        sandbox_ca.ca_cert,
        None,
        sandbox_ca.ca_cert,
    )


@pytest.mark.parametrize("section", SERVICES)
def test_a_ca_bundle_that_is_missing_or_holds_no_certificate_is_refused_naming_the_key(
    make_config: Callable[..., Path], tmp_path: Path, section: str
) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    for path, says in ((tmp_path / "missing.pem", "No such file"), (not_pem, "")):
        with pytest.raises(ConfigError) as caught:
            load_config(make_config(tmp_path, **{section: {"ca_bundle": str(path)}}))
        message = str(caught.value)
        assert f"{section}.ca_bundle: expected a readable PEM file of CA certificates" in message
        assert says in message


def test_one_context_per_bundle_is_shared_and_a_replaced_bundle_is_read_again(
    tmp_path: Path, sandbox_ca: ThrowawayCA
) -> None:
    bundle = tmp_path / "extra-ca.pem"
    bundle.write_bytes(sandbox_ca.ca_cert.read_bytes())
    first = client_context(str(bundle))
    assert client_context(str(bundle)) is first
    bundle.write_bytes(sandbox_ca.ca_cert.read_bytes())
    os.utime(bundle, ns=(bundle.stat().st_atime_ns, bundle.stat().st_mtime_ns + 1_000_000_000))
    assert client_context(str(bundle)) is not first


# -- the drive's part uploads -----------------------------------------------------------------------


@pytest.mark.parametrize("fake_drive", ["tls"], indirect=True)
def test_part_uploads_reach_an_https_data_host_trusted_through_drive_ca_bundle(
    box: DriveBox, fake: FakeDrive, tmp_path: Path, sandbox_ca: ThrowawayCA
) -> None:
    assert fake.data_url.startswith("https://")
    box.upload_new_file("/relayd/tls", ca_bundle=sandbox_ca.ca_cert)

    puts = [e for e in fake.requests.snapshot() if e.path.startswith(UPLOAD_PREFIX + "/")]
    assert len(puts) == 4 and {e.status for e in puts} == {200}
    assert fake.authorized_data_requests() == []


@pytest.mark.parametrize("fake_drive", ["tls"], indirect=True)
def test_part_uploads_to_an_untrusted_https_data_host_block_naming_drive_ca_bundle(
    box: DriveBox, fake: FakeDrive, tmp_path: Path
) -> None:
    with pytest.raises(NeedsPerson) as caught:
        box.upload_new_file("/relayd/tls")

    assert caught.value.error_class == ErrorClass.TLS
    assert "not trusted" in str(caught.value) and "drive.ca_bundle" in caught.value.hint
    assert not [e for e in fake.requests.snapshot() if e.path.startswith(UPLOAD_PREFIX + "/")]


# -- the VM's pulls ---------------------------------------------------------------------------------


def _pull(tmp_path: Path, drive: FakeDrive, ca_pem: str | None) -> bytes:
    data = os.urandom(3 * PIECE - 7)
    file_id = upload_to_fake_drive(drive, data, "f.bin")
    links = FakeDriveLinks(drive.api_url, drive.issue_access_token(), drive_id=drive.default_drive_id)
    url = links.download_url(file_id).url
    links.close()
    root = tmp_path / "vm"
    params = pull_params(root, data, piece=PIECE)
    if ca_pem is not None:
        params["ca_pem"] = ca_pem
    executor = make_executor(vm_config(root=str(root)))
    try:
        result = executor.call("pull", params, secrets={"url": url, "proxy": ""})
    finally:
        executor.close()
    assert result["renamed"] and (root / "acme/tiny/f.bin").read_bytes() == data
    return data


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("no_proxy_variables")
@pytest.mark.parametrize("fake_drive", ["tls"], indirect=True)
def test_the_vm_pulls_from_an_https_data_host_trusting_the_ca_it_is_sent(
    tmp_path: Path, fake_drive: FakeDrive, sandbox_ca: ThrowawayCA
) -> None:
    assert fake_drive.data_url.startswith("https://")
    _pull(tmp_path, fake_drive, sandbox_ca.ca_cert.read_text())

    gets = [e for e in fake_drive.requests.snapshot() if e.path.startswith(DOWNLOAD_PREFIX + "/")]
    assert len(gets) == 3 and {e.status for e in gets} == {206}


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("no_proxy_variables")
@pytest.mark.parametrize("fake_drive", ["tls"], indirect=True)
def test_an_untrusted_data_host_blocks_the_pull_naming_vm_ca_bundle(
    tmp_path: Path, fake_drive: FakeDrive
) -> None:
    with pytest.raises(NeedsPerson) as caught:
        _pull(tmp_path, fake_drive, None)

    assert caught.value.error_class == ErrorClass.TLS
    assert "not trusted" in str(caught.value) and "vm.ca_bundle" in caught.value.hint
