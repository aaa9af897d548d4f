"""The hop contract is closed: a hop imports neither the catalogue nor SQLAlchemy (ruff's banned-api rule
refuses it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relayd.cli.status_view import BUILT_IN_SHORT_NAMES
from relayd.hops import BUILTIN, load_hop_class

ROOT = Path(__file__).resolve().parents[2]


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
