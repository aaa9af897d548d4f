"""Error classes are one enum, documented in one table: docs/errors.md and ``ErrorClass`` name the same
classes, the daemon spells none as a free string, and every class the VM agent sends (as a plain string,
it has no relayd to import) is one the daemon knows."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd.errors import ErrorClass, NeedsPerson, Retryable
from relayd.vm.agent import lfs_answers

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"
AGENT = ROOT / "relayd" / "vm" / "agent"
ROW = re.compile(r"^\| `([a-z_]+)` \|")


def documented() -> list[str]:
    return [
        match.group(1) for line in DOC.read_text(encoding="utf-8").splitlines() if (match := ROW.match(line))
    ]


def test_the_table_and_the_enum_name_the_same_classes() -> None:
    table = documented()
    assert len(table) == len(set(table)), "a class documented twice"
    assert set(table) == {member.value for member in ErrorClass}


def _named(target: ast.expr) -> str:
    if isinstance(target, ast.Name):
        return target.id
    return target.attr if isinstance(target, ast.Attribute) else ""


def error_class_strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Yield (line, value) of every string given as an error class in *tree*: ``error_class="…"``,
    ``….error_class = "…"`` (tuple assignments too), comparisons of an error class with a string, and
    the class of the VM agent's internal retries (``_Retry(message, "…")``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "error_class":
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                yield node.value.lineno, node.value.value
        elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                pairs = (
                    zip(target.elts, node.value.elts, strict=False)
                    if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
                    else [(target, node.value)]
                )
                for name, value in pairs:
                    named = _named(name).endswith("error_class")
                    if named and isinstance(value, ast.Constant) and isinstance(value.value, str):
                        yield value.lineno, value.value
        elif isinstance(node, ast.Compare) and _named(node.left).endswith("error_class"):
            for compared in node.comparators:
                items = compared.elts if isinstance(compared, ast.Tuple | ast.Set | ast.List) else [compared]
                strings = [
                    item for item in items if isinstance(item, ast.Constant) and isinstance(item.value, str)
                ]
                yield from ((item.lineno, item.value) for item in strings)
        elif (
            isinstance(node, ast.Call)
            and _named(node.func) == "_Retry"
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
        ):
            yield node.args[1].lineno, node.args[1].value


def test_the_daemon_names_error_classes_by_the_enum_only() -> None:
    free = [
        f"{path.relative_to(ROOT)}:{line}: {value!r}"
        for path in sorted((ROOT / "relayd").rglob("*.py"))
        if AGENT not in path.parents and "sandbox" not in path.parts
        for line, value in error_class_strings(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert free == [], "use relayd.errors.ErrorClass"


def test_every_class_the_vm_agent_sends_is_one_the_daemon_knows() -> None:
    sent = {
        value
        for path in AGENT.rglob("*.py")
        for _, value in error_class_strings(ast.parse(path.read_text(encoding="utf-8")))
    }
    assert {"io", "range", "rate_limit", "url_expired"} <= sent  # the scan finds all three spellings
    sent.add(lfs_answers.MISMATCH)
    assert sorted(sent - {member.value for member in ErrorClass}) == []


def test_the_scan_sees_free_strings() -> None:
    """The scan above is not blind: every spelling of a free error class is found."""
    code = (
        'raise Retryable("x", error_class="network")\n'
        'exc.error_class = "disk"\n'
        'kind, error_class = "retryable", "io"\n'
        'if exc.error_class in ("stall", "timeout"): pass\n'
        'raise _Retry("x", "range")\n'
        "raise Retryable('x', error_class=ErrorClass.NETWORK)\n"
    )
    assert [value for _, value in sorted(error_class_strings(ast.parse(code)))] == [
        "network",
        "disk",
        "io",
        "stall",
        "timeout",
        "range",
    ]


@pytest.mark.parametrize(
    ("named", "parsed"),
    [
        ("disk", ErrorClass.DISK),
        ("warp_core_breach", ErrorClass.ERROR),
        (None, ErrorClass.ERROR),
        (7, ErrorClass.ERROR),
    ],
)
def test_a_class_from_a_peer_is_parsed_and_an_unknown_one_is_the_generic_one(
    named: object, parsed: ErrorClass
) -> None:
    assert ErrorClass.parse(named) is parsed


def test_errors_hold_members_whatever_they_were_given() -> None:
    assert Retryable("reset").error_class is ErrorClass.NETWORK
    assert NeedsPerson("x", hint="y").error_class is ErrorClass.BLOCKED
    assert Retryable("x", error_class="server").error_class is ErrorClass.SERVER  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warp"):
        Retryable("x", error_class="warp")  # type: ignore[arg-type]
