"""Health checks: what `relayctl doctor` asks of every hop a route uses and of every shared service.

A hop (``Hop.checks``) or a service (``Services.register(..., checks=...)``) answers a ``CheckScope``
(the deadline, the repos whose routes use it, what they still have to move) with ``Check``s. Each check
runs in its own thread with that deadline, as soon as the checks it ``needs`` are in, and reports
``Finding``s; relayd.cli.doctor runs them and lays the findings out. A check touches nothing: it reads
and asks, and never writes to the catalogue or shows a secret.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relayd.hops.records import RepoInfo
    from relayd.services import Services

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
STATUSES = (OK, WARN, FAIL, SKIP)


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked (``name``, unique in the report, under ``group``), how
    it went (``status``: ok, warn, fail or skip) and what to do about it (``hint``)."""

    group: str
    name: str
    status: str
    detail: str
    hint: str = ""


@dataclass(frozen=True)
class Check:
    """A check that may wait on the network: ``run`` returns its findings (the first named ``name``),
    in a thread of its own, given up after the deadline. It may raise: the error becomes a failed
    finding, with ``timeout_hint`` as the hint when the error has none.

    ``url`` and ``setting`` name where it goes (a network failure is then told in plain words, see
    relayd.neterrors). ``needs`` maps the findings it depends on to how a person names them: when one
    of them failed or was skipped, this check is skipped with that reason instead of failing again.
    ``after`` names findings it only waits for, whatever they say. ``also`` lists the (group, name) of
    the other findings it reports, skipped when it fails before reporting them; ``label`` names it in
    those reasons ("the VM").
    """

    group: str
    name: str
    run: Callable[[], list[Finding]]
    timeout_hint: str = ""
    url: str = ""
    setting: str = ""
    label: str = ""
    needs: Mapping[str, str] = field(default_factory=dict)
    also: tuple[tuple[str, str], ...] = ()
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckScope:
    """What a hop's or a service's checks are about: each check's deadline (seconds), the shared
    services (the VM executor …), relayd's state directory, the watched repos whose routes use it and
    those routes (the default route while no repo is watched), and the bytes of the current snapshots
    still to arrive at each kind of location (``Hop.produces``: "vm" …)."""

    timeout: float
    services: Services
    state_dir: Path
    repos: tuple[RepoInfo, ...] = ()
    routes: tuple[tuple[str, ...], ...] = ()
    due: Mapping[str, int] = field(default_factory=dict)


def failed(group: str, name: str, exc: BaseException, default_hint: str = "") -> Finding:
    """Return the failed finding *name* for *exc*: its message, and its hint or *default_hint*."""
    hint = str(getattr(exc, "hint", "") or default_hint)
    return Finding(group, name, FAIL, str(exc) or type(exc).__name__, hint)


def answered(group: str, name: str, url: str, status: int, hint: str) -> Finding:
    """Return whether a service answered: any answer but a server error or a proxy's refusal will do
    (the checks that follow ask the questions that matter)."""
    from relayd.neterrors import status_words

    if status >= 500 or status == 407:
        return Finding(group, name, FAIL, f"{url} answered {status_words(status)}", hint)
    return Finding(group, name, OK, f"{url} answers")
