"""The hop contract is closed: a hop imports neither the catalogue nor SQLAlchemy (ruff's banned-api rule
refuses it), and the core never names a built-in hop (what it needs to know, the hop declares)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from relayd.cli.status_view import BUILT_IN_SHORT_NAMES
from relayd.hops import BUILTIN, load_hop_class

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "relayd"

#: Where the core may still spell a built-in hop's name, how often, and why.
ALLOWED: dict[tuple[str, str], tuple[int, str]] = {
    ("config.py", "local_copy"): (1, "[local_copy] is also the name of that hop's config table"),
    ("config_model.py", "local_copy"): (1, "the same"),
    ("poll.py", "local_copy"): (1, "the local source reads the [local_copy] config table"),
    ("vm/agent/lfs_client.py", "download"): (2, "the git-LFS batch API's operation, not the hop"),
    ("demo.py", "download"): (3, "the demo compares each built-in hop's bytes with its fake server's count"),
    ("demo.py", "pan_upload"): (1, "the same"),
    ("demo.py", "vm_pull"): (1, "the same"),
    ("demo.py", "lfs_push"): (1, "the same"),
    ("demo.py", "local_copy"): (1, "the demo's local route"),
    ("demo_sites.py", "download"): (1, "the two-site demo splits the built-in route between its sites"),
    ("demo_sites.py", "pan_upload"): (1, "the same"),
    ("demo_sites.py", "vm_pull"): (2, "the same, and the hop running when it kills the vm daemon"),
    ("demo_sites.py", "lfs_push"): (1, "the same"),
    ("demo_sites.py", "ms_upload"): (1, "the same: the vm site pushes the mirror repo through it"),
    **{
        ("demo_mirror.py", name): (1, "the demo's second repo takes a route through ms_upload")
        for name in ("download", "pan_upload", "vm_pull", "ms_upload")
    },
    **{
        ("cli/status_view.py", name): (1, "status's table of their short names (its time budget)")
        for name in ("download", "pan_upload", "vm_pull", "lfs_push", "local_copy", "ms_upload")
    },
}
#: Not the core: the hops themselves (the fakes and their VM test kit are a package of their own).
NOT_CORE = ("hops/",)


def hop_names_spelled(path: Path) -> Counter[str]:
    """Return how often each built-in hop's name is a string constant in the module at *path*."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return Counter(
        node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in BUILTIN
    )


def test_the_core_names_no_built_in_hop() -> None:
    found: dict[tuple[str, str], int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(NOT_CORE):
            continue
        for name, count in hop_names_spelled(path).items():
            found[(relative, name)] = count
    unexpected = {where: count for where, count in found.items() if count > ALLOWED.get(where, (0, ""))[0]}
    assert not unexpected, (
        f"the core names built-in hops {unexpected}: use what the hop declares (relayd.hops.base.Hop)"
    )
    # An allowance no longer used goes, so that nothing can take its place unseen.
    assert {where: allowed for where, (allowed, _) in ALLOWED.items() if found.get(where) != allowed} == {}


def test_the_name_check_finds_a_hop_name(tmp_path: Path) -> None:
    """The check above is not blind: a module that tests for a hop by name is caught, a mention in
    prose is not."""
    probe = tmp_path / "probe.py"
    probe.write_text('"""Like download."""\nif hop == "download":\n    pass\n', encoding="utf-8")
    assert hop_names_spelled(probe) == Counter({"download": 1})


@pytest.mark.parametrize(
    "line",
    [
        "from relayd.catalogue.store import Store",
        "from relayd.catalogue import schema",
        "import sqlalchemy",
        "from sqlalchemy.orm import Session",
    ],
)
def test_ruff_refuses_a_hop_that_imports_the_catalogue(line: str) -> None:
    def lint(filename: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "ruff", "check", "--select", "TID251", "--stdin-filename", filename, "-"],
            input=f"{line}\n",
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        return result.stdout

    assert "TID251" in lint("relayd/hops/some_hop.py")
    assert "TID251" not in lint("relayd/catalogue/some_module.py")  # the core may


def test_status_knows_the_short_names_the_built_in_hops_declare() -> None:
    """status repeats them (it must not spend its time budget loading the hops): they must agree."""
    assert {name: load_hop_class(name).short() for name in BUILTIN} == BUILT_IN_SHORT_NAMES
