"""An installed relayd (from its wheel, without the checkout) has both commands and its migrations,
and can create and upgrade a catalogue."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("relayd-*.whl")
    return built


def install(wheel: Path, target: Path) -> None:
    """Install *wheel* alone into the directory *target* (put it on PYTHONPATH to use it)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )


def test_the_wheel_carries_the_migrations_and_both_commands(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        text = archive.read(entry_points).decode()
    assert "relayd/_migrations/env.py" in names
    assert any(n.startswith("relayd/_migrations/versions/") and n.endswith(".py") for n in names)
    assert "relayd = relayd.daemon:main" in text
    assert "relayctl = relayd.cli:main" in text
    assert "[relayd.hops.v2]" in text
    page = {f"relayd/web/static/{name}" for name in ("index.html", "app.js", "style.css", "icon.svg")}
    assert page <= names  # the status page is served from the package, not from the internet


def test_the_wheel_carries_no_fake_and_does_not_depend_on_the_sandbox(wheel: Path) -> None:
    """The fakes are their own distribution (sandbox/): the product's wheel holds none of them and
    does not pull them in, not even as an extra."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "relayd/daemon.py" in names  # the wheel is read right
    assert not [n for n in names if n.startswith(("relayd/sandbox/", "relayd_sandbox/"))]
    assert not [n for n in names if "testkit" in n]
    requirements = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requirements  # relayd's own dependencies are there
    assert not [line for line in requirements if "sandbox" in line.lower()]


def test_the_sandbox_is_a_distribution_of_its_own_with_its_pytest_plugin(tmp_path: Path) -> None:
    """sandbox/ builds the relayd-sandbox wheel: the fakes and their fixtures, nothing of relayd's, and
    relayd as a dependency."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path),
            str(ROOT / "sandbox"),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = tmp_path.glob("relayd_sandbox-*.whl")
    with zipfile.ZipFile(built) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {"relayd_sandbox/hub.py", "relayd_sandbox/drive.py", "relayd_sandbox/pytest_plugin.py"} <= names
    assert not [n for n in names if n.startswith("relayd/")]
    assert "Requires-Dist: relayd\n" in metadata
    assert "[pytest11]\nrelayd_sandbox = relayd_sandbox.pytest_plugin" in entry_points


def test_an_installed_relayd_creates_and_upgrades_its_catalogue(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    install(wheel, target)
    database = tmp_path / "catalogue.db"
    script = f"""
import relayd, sys
from pathlib import Path
assert Path(relayd.__file__).is_relative_to({str(target)!r}), relayd.__file__
from relayd.catalogue import migrate
from relayd.catalogue.db import make_engine
assert migrate.migrations_dir() == Path({str(target)!r}) / "relayd" / "_migrations", migrate.migrations_dir()
engine = make_engine("sqlite:///{database}")
migrate.ensure_schema(engine, auto_upgrade=False)
print(migrate.current_revision(engine), migrate.head_revision())
"""
    # Run outside the checkout, with the wheel's copy first on the path.
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    current, head = result.stdout.split()
    assert current == head
    assert database.exists()


def test_relayctl_from_the_wheel_upgrades_an_older_catalogue(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    install(wheel, target)
    database = tmp_path / "catalogue.db"
    config = tmp_path / "relayd.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[catalogue]\nurl = "sqlite:///{database}"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    older = (
        "from alembic import command; from relayd.catalogue import migrate; "
        "from relayd.catalogue.db import make_engine; "
        f"c = make_engine('sqlite:///{database}').connect(); "
        "command.upgrade(migrate.alembic_config(c), '0001'); c.commit()"
    )
    subprocess.run([sys.executable, "-c", older], cwd=tmp_path, env=env, check=True, capture_output=True)
    relayctl = [sys.executable, "-c", "from relayd.cli import main; main()", "-c", str(config)]
    refused = subprocess.run(
        [*relayctl, "status"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert refused.returncode == 1
    assert "db upgrade" in refused.stderr
    upgraded = subprocess.run(
        [*relayctl, "db", "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert upgraded.returncode == 0, upgraded.stderr
    assert list(tmp_path.glob("catalogue.db.backup-*")), "a backup was taken first"
    current = subprocess.run(
        [*relayctl, "db", "current"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert current.returncode == 0
    lines = dict(line.split(": ", 1) for line in current.stdout.splitlines())
    assert lines["current"] == lines["head"] != "0001"


def test_the_wheel_carries_the_licence_and_the_example_config(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        licence = next(n for n in names if n.endswith(".dist-info/licenses/COPYING"))
        assert archive.read(licence) == (ROOT / "COPYING").read_bytes()
        assert archive.read("relayd/config.example.toml") == (ROOT / "config.example.toml").read_bytes()
    assert "License-Expression: GPL-3.0-or-later" in metadata
    assert "License-File: COPYING" in metadata
    assert (ROOT / "COPYING").read_text().startswith("                    GNU GENERAL PUBLIC LICENSE\n")
    assert "Version 3, 29 June 2007" in (ROOT / "COPYING").read_text()


def test_relayctl_config_example_prints_the_documented_example(wheel: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from relayd.cli import cli

    example = (ROOT / "config.example.toml").read_text()
    assert CliRunner().invoke(cli, ["config", "example"]).output == example  # from the checkout
    target = tmp_path / "site"
    install(wheel, target)

    def relayctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from relayd.cli import main; main()", *args],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(target)},
            capture_output=True,
            text=True,
            check=False,
        )

    installed = relayctl("config", "example")
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout == example  # from the wheel's package data, no checkout in sight
    missing = relayctl("-c", str(tmp_path / "none.toml"), "status")
    assert missing.returncode == 2
    assert f"relayctl config example > {tmp_path / 'none.toml'}" in missing.stderr
