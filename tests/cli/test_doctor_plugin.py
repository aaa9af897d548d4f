"""relayctl doctor checks a plugin hop as it checks a built-in one: an installed package registers the hop
in the ``relayd.hops.v2`` entry-point group, and the checks its class declares (``Hop.checks``, given its
own ``[hops.NAME]`` section and the repos routed through it) come out as rows of the report and of
``--json``, their prerequisites honoured; a hop that declares none is said to check nothing."""

from __future__ import annotations

import importlib
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import relayd.hops
from relayd.catalogue import migrate
from relayd.catalogue.store import RepoSpec, Store
from relayd.cli import cli

PLUGIN = '''
from pathlib import Path

from relayd.hops.base import FAIL, OK, Check, Finding, Hop, Outcome


class ProbeHop(Hop):
    """Checks that its target folder is there; lists the repos it serves."""

    name = "probe"
    source = "local"
    produces = "probe"

    @classmethod
    def checks(cls, section, scope):
        target = Path(section["target"])

        def there():
            if target.is_dir():
                return [Finding("probe", "probe target", OK, f"{target} is there")]
            return [Finding("probe", "probe target", FAIL, f"{target} is missing", "create it")]

        def repos():
            return [Finding("probe", "probe repos", OK, ", ".join(repo.name for repo in scope.repos))]

        return [
            Check("probe", "probe target", there),
            Check("probe", "probe repos", repos, needs={"probe target": "the probe's target"}),
        ]

    def plan(self, job):
        return []

    def move(self, job, missing):
        pass

    def verify(self, job):
        return Outcome({})


class QuietHop(ProbeHop):
    name = "quiet"

    @classmethod
    def checks(cls, section, scope):
        return ()
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The hops ``probe`` and ``quiet``, installed as a distribution on sys.path registers them."""
    site = tmp_path / "site"
    (site / "relayd_probe_hop-1.0.dist-info").mkdir(parents=True)
    (site / "relayd_probe_hop-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: relayd-probe-hop\nVersion: 1.0\n"
    )
    (site / "relayd_probe_hop-1.0.dist-info" / "entry_points.txt").write_text(
        f"[{relayd.hops.ENTRY_POINT_GROUP}]\nprobe = probe_hop:ProbeHop\nquiet = probe_hop:QuietHop\n"
    )
    (site / "probe_hop.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    relayd.hops.registry.cache_clear()
    yield
    relayd.hops.registry.cache_clear()


@pytest.fixture
def config(tmp_path: Path, plugin: None, make_config: Any) -> Path:
    """A config with the probe's own section, and a catalogue whose repos route through the plugins."""
    path: Path = make_config(tmp_path, **{"hops.probe": {"target": str(tmp_path / "target")}})
    (tmp_path / "target").mkdir()
    store = Store(f"sqlite:///{tmp_path / 'catalogue.db'}")
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    store.add_repo(RepoSpec(name="org/probed", every=3600, route=("probe",)))
    store.add_repo(RepoSpec(name="org/quiet", every=3600, route=("quiet",)))
    store.close()
    return path


def doctor(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["-c", str(config), "doctor", *args], catch_exceptions=False)


def rows(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in document["checks"]}


def test_a_plugin_hops_checks_are_rows_of_the_report(config: Path) -> None:
    result = doctor(config, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["hops"] == ["probe", "quiet"]
    found = rows(document)
    assert found["probe target"] == {
        **found["probe target"],
        "group": "probe",
        "status": "ok",
        "detail": f"{config.parent / 'target'} is there",
    }
    assert found["probe repos"]["detail"] == "org/probed"  # the repos routed through it, only
    assert (found["hop quiet"]["status"], found["hop quiet"]["group"]) == ("skip", "config")
    assert found["hop quiet"]["detail"] == "the hop declares no checks (Hop.checks)"
    assert "hop probe" not in found
    groups = [item["group"] for item in document["checks"]]
    assert groups.index("probe") > groups.index("daemon")  # after relayd's own rows

    text = doctor(config)
    assert text.exit_code == 0, text.output
    assert any(
        line.split() == ["ok", "probe", "target", *found["probe target"]["detail"].split()]
        for line in text.stdout.splitlines()
    )


def test_a_failing_plugin_check_fails_doctor_and_skips_what_needs_it(config: Path) -> None:
    (config.parent / "target").rmdir()
    result = doctor(config, "--json")
    assert result.exit_code == 1, result.output
    found = rows(json.loads(result.stdout))
    assert (found["probe target"]["status"], found["probe target"]["hint"]) == ("fail", "create it")
    assert (found["probe repos"]["status"], found["probe repos"]["detail"]) == (
        "skip",
        "skipped: the probe's target failed",
    )
    lines = doctor(config).stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("FAIL    probe target"))
    assert lines[at + 1].split() == ["hint:", "create", "it"]
