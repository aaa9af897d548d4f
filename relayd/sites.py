"""Sites: several daemons, each serving some hops, sharing one catalogue (docs/sites.md).

A daemon names its site (``daemon.site``) and the hops it serves (``daemon.hops``, default every
hop). It claims only those hops' transfers, polls only the repos whose route starts with one of them,
and publishes a heartbeat of its own (the ``workers`` table, read by
``relayd.catalogue.queries.workers``), which ``relayctl workers`` lists and ``relayctl status`` reads to
say which hop no running daemon serves.

A staged copy lives on one machine's staging disk: its *staging holder* (site, host and staging
directory) is recorded with it, and a transfer that reads it is claimed only by a daemon of that holder.
"""

from __future__ import annotations

import os
import socket
import weakref
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from relayd.errors import ConfigError

if TYPE_CHECKING:
    from relayd.catalogue.store import WorkerBeat
    from relayd.config import Config
    from relayd.hops.base import Hop


def staging_holder(config: Config) -> str:
    """Return who holds what this daemon stages: its site, host and staging directory."""
    return f"{config.daemon.site}:{socket.gethostname()}:{config.staging.dir}"


def serves(config: Config, hop: str) -> bool:
    """Return whether this daemon serves *hop* (``daemon.hops``; unset: every hop)."""
    return config.daemon.hops is None or hop in config.daemon.hops


def served_hops(config: Config, hops: Mapping[str, Hop]) -> dict[str, Hop]:
    """Return the built *hops* this daemon serves: the only ones its engine claims."""
    return {name: hop for name, hop in hops.items() if serves(config, name)}


#: The built hops whose ``prepare`` has run: once each (a reload builds new hops, prepared anew).
_prepared: weakref.WeakSet[Hop] = weakref.WeakSet()


def prepare_used(config: Config, served: Mapping[str, Hop], routes: Iterable[Sequence[str]]) -> None:
    """Have the *served* hops this daemon uses build their clients now (``Hop.prepare``, once per
    hop), so that a broken config shows at start: every hop of ``daemon.hops`` when it is set, else
    each hop some route of *routes* names (at start, then as repos are added). The others build theirs
    on first use: a download-only run never imports the drive's client."""
    used = (
        set(config.daemon.hops)
        if config.daemon.hops is not None
        else {hop for route in routes for hop in route}
    )
    for name in sorted(used & served.keys()):
        hop = served[name]
        if hop not in _prepared:
            _prepared.add(hop)
            hop.prepare()


def worker_beat(config: Config, owner: str, started_at: datetime, state: str = "running") -> WorkerBeat:
    """Return this daemon's heartbeat (its lease *owner* id names it): site, host, pid, hops, version."""
    from relayd import __version__
    from relayd.catalogue.store import WorkerBeat

    return WorkerBeat(
        id=owner,
        site=config.daemon.site,
        host=socket.gethostname(),
        pid=os.getpid(),
        hops=config.daemon.hops,
        version=__version__,
        started_at=started_at,
        state=state,
    )


def check_served_hops(config: Config, classes: Mapping[str, type[Hop]]) -> None:
    """Given the installed hop classes by name, raise ConfigError when ``daemon.hops`` can never make
    progress: a hop that is not installed, or one that reads each file only from this machine's
    staging without a served hop that fills it (a staged copy is read only where it was staged)."""
    hops = config.daemon.hops
    if hops is None:
        return
    where = f"{config.path}: daemon.hops"
    unknown = [name for name in hops if name not in classes]
    if unknown:
        raise ConfigError(
            f"{where}: {', '.join(unknown)} is not an installed hop (installed: {', '.join(sorted(classes))})"
        )
    fillers = [name for name in hops if classes[name].writes_staging]
    if fillers:
        return
    writers = sorted(name for name, hop in classes.items() if hop.writes_staging)
    for name in hops:
        hop = classes[name]
        if hop.source is None and hop.consumes == frozenset({"staging"}):
            raise ConfigError(
                f"{where}: {name} reads each file from the staging disk of the daemon that downloaded it, "
                f"and this daemon serves no hop that fills staging ({', '.join(writers) or 'none installed'})"
                f": add one to daemon.hops on this site, or serve {name} where the downloads are staged"
            )


def check_sites(config: Config) -> None:
    """Raise ConfigError when daemon.hops can never make progress, judged against the installed hops
    (a hop whose plugin cannot be imported counts as not installed)."""
    from relayd.hops import hop_names, load_hop_class

    if config.daemon.hops is None:
        return
    classes: dict[str, type[Hop]] = {}
    for name in hop_names():
        try:
            classes[name] = load_hop_class(name)
        except ImportError:
            continue
    check_served_hops(config, classes)
