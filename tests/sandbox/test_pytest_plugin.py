"""relayd-sandbox's pytest plugin: a test suite outside relayd (a third-party hop's) gets the fakes as
fixtures by installing the package, and the package's README documents every one of them."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import relayd_sandbox

README = Path(relayd_sandbox.__file__).resolve().parent.parent / "README.md"

THIRD_PARTY_TEST = """
import requests


def test_the_fakes_answer(fake_hub, fake_drive, gitlfs_server, tmp_path):
    fake_hub.add_token("hf_x", user="someone")
    fake_hub.create_repo("someone/model", files={"a.txt": b"a"})
    info = requests.get(f"{fake_hub.endpoint}/api/models/someone/model", headers={
        "Authorization": "Bearer hf_x"}, timeout=10)
    assert info.status_code == 200 and info.json()["id"] == "someone/model"
    answer = requests.post(f"{fake_drive.api_url}/v2/account/token", json={
        "grant_type": "refresh_token", "refresh_token": fake_drive.issue_refresh_token()}, timeout=10)
    assert answer.status_code == 200 and answer.json()["access_token"]
    refused = requests.get(f"{gitlfs_server.base_url}/o/n.git/info/refs?service=git-upload-pack",
        timeout=10)
    assert refused.status_code == 401
    for root in (fake_hub.store.root, fake_drive.root, gitlfs_server.root):
        assert not root.is_relative_to(tmp_path)
"""


def run_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run pytest in *folder*, outside relayd's tests (no conftest of ours is in reach)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_pytest_loads_the_plugin_from_the_installed_distribution() -> None:
    found = [ep for ep in metadata.entry_points(group="pytest11") if ep.name == "relayd_sandbox"]
    assert [ep.value for ep in found] == ["relayd_sandbox.pytest_plugin"]
    assert found[0].dist is not None and found[0].dist.name == "relayd-sandbox"


def test_a_suite_outside_relayd_gets_the_fakes_as_fixtures(tmp_path: Path) -> None:
    (tmp_path / "test_third_party.py").write_text(THIRD_PARTY_TEST)
    result = run_pytest(tmp_path, "test_third_party.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_the_readme_documents_every_fixture(tmp_path: Path) -> None:
    listing = run_pytest(tmp_path, "--fixtures").stdout
    section = listing.split("fixtures defined from relayd_sandbox.pytest_plugin", 1)[1].split("\n---", 1)[0]
    fixtures = re.findall(r"^(\w+)(?: \[\w+ scope\])? -- ", section, re.M)
    assert fixtures == ["fake_hub", "fake_drive", "gitlfs_server", "sandbox_sshd", "sandbox_ca"]
    readme = README.read_text()
    for name in fixtures:
        assert f"| `{name}` |" in readme, name
