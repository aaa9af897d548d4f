"""The VM's health check (`relayctl doctor`): reachable through its executor, with python3 ≥ 3.8, git and
git-lfs, and room under ``vm.root`` for what the current snapshots still have to bring there."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relayd.health import FAIL, OK, Check, CheckScope, Finding
from relayd.units import format_size
from relayd.vm.pool import MIN_PYTHON, Executor, VmFacts

if TYPE_CHECKING:
    from relayd.config import VmConfig

GROUP = "vm"
#: The kind of location (``Hop.produces``) the VM's copies are.
VM = "vm"


def reach_hint(config: VmConfig) -> str:
    """Return how to find out why the VM does not answer."""
    if config.executor == "ssh":
        who = f"{config.user + '@' if config.user else ''}{config.host}"
        return f"check vm.host, vm.port and the network path (try `ssh -p {config.port} {who} true`)"
    return "check vm.python and vm.path"


def vm_checks(config: VmConfig, scope: CheckScope) -> list[Check]:
    """Return the VM's check, run through the shared VM executor (``scope.services``): it answers, with
    its tools, and the free space under vm.root against the bytes still due there."""

    def run() -> list[Finding]:
        executor: Executor = scope.services.get("vm")
        return vm_findings(executor, executor.facts(timeout=scope.timeout), scope.due.get(VM, 0))

    tools = (("vm", "vm python3"), ("vm", "vm git"), ("vm", "vm git-lfs"), ("disk", "vm disk"))
    return [Check(GROUP, "vm", run, reach_hint(config), label="the VM", also=tools)]


def tool_findings(facts: VmFacts, group: str, prefix: str, where: str, hint: str) -> list[Finding]:
    """Return the findings ``<prefix> git`` and ``<prefix> git-lfs``: each tool's version in *facts*, or
    that it is not installed *where*, with *hint* (``{package}`` is the package to install)."""
    found = []
    for name, version in (("git", facts.git), ("git-lfs", facts.git_lfs)):
        if version:
            found.append(Finding(group, f"{prefix} {name}", OK, version))
        else:
            missing = f"{name} is not installed {where}"
            found.append(Finding(group, f"{prefix} {name}", FAIL, missing, hint.format(package=name)))
    return found


def vm_findings(executor: Executor, facts: VmFacts, needed: int) -> list[Finding]:
    """Return what the VM's *facts* say: python3, git, git-lfs, and free space against *needed*."""
    where = executor.describe()
    rows = [Finding(GROUP, "vm", OK, f"{where} answers (agent ran as python {facts.python})")]
    version = tuple(int(part) for part in facts.python.split(".")[:2] if part.isdigit())
    if version < MIN_PYTHON:
        rows.append(
            Finding(
                GROUP,
                "vm python3",
                FAIL,
                f"python {facts.python or 'unknown'} on {where}; relayd's agent needs ≥ 3.8",
                "install python3 ≥ 3.8 on the VM (apt-get install python3) or set vm.python",
            )
        )
    else:
        rows.append(Finding(GROUP, "vm python3", OK, facts.python))
    rows += tool_findings(
        facts,
        GROUP,
        "vm",
        f"on {where}",
        "install {package} on the VM (apt-get install {package}), or fix vm.path",
    )
    space = f"{format_size(facts.free)} free under {facts.root}"
    if not facts.root_exists:
        space += " (not created yet)"
    if needed and facts.free < needed:
        rows.append(
            Finding(
                "disk",
                "vm disk",
                FAIL,
                f"{space}; the current snapshots need {format_size(needed)} more there",
                "free space under vm.root on the VM, or point vm.root at a larger disk",
            )
        )
    else:
        more = f"; the current snapshots need {format_size(needed)} more" if needed else ""
        rows.append(Finding("disk", "vm disk", OK, space + more))
    return rows
