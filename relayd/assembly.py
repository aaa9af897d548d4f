"""Assembling a run's parts from its config: the hops, the store's rules from what the hops declare,
the sources their first hops read, and how the poller asks a route's end what it holds already."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from relayd.catalogue.schema import Repo
from relayd.catalogue.store import HopRules
from relayd.catalogue.store.claims import repo_info
from relayd.config import Config
from relayd.errors import ConfigError
from relayd.hops import hop_names, load_hop_class
from relayd.hops.base import Hop, HopContext
from relayd.poll import AskEnd, Source, load_source

log = logging.getLogger(__name__)


def build_hops(config: Config, ctx: HopContext) -> dict[str, Hop]:
    """Build every registered hop with its own config section (cheap: their clients are built by
    ``prepare_used`` or on first use); a hop that cannot load is skipped (its transfers wait) with a
    log line saying why."""
    hops: dict[str, Hop] = {}
    for name in hop_names():
        try:
            hop_class = load_hop_class(name)
            hops[name] = hop_class(config.section(hop_class.section_key()), ctx)
        except (ConfigError, ImportError) as exc:
            log.warning("hop %s is unavailable: %s", name, exc)
    return hops


def end_asker(config: Config, hops: dict[str, Hop]) -> AskEnd:
    """Return how the poller asks a repo's route's last hop which contents it holds already: not for a
    repo that keeps every copy (its ``keep_copies`` option, else ``daemon.keep_copies_routes``)."""

    def ask(repo: Repo, contents: Sequence[tuple[str, int]]) -> set[str]:
        keep = (repo.options or {}).get("keep_copies")
        if keep is None:
            keep = ",".join(repo.route) in config.daemon.keep_copies_routes
        end = hops.get(repo.route[-1]) if repo.route else None
        if keep or end is None:
            return set()
        return end.held(repo_info(repo), contents)

    return ask


def hop_rules(hops: dict[str, Hop]) -> HopRules:
    """Return the store's rules from what the built *hops* declare."""
    return HopRules(
        reads_staging=frozenset(name for name, hop in hops.items() if hop.reads_staging),
        finishes_snapshot=frozenset(name for name, hop in hops.items() if hop.finishes_snapshot),
        staging_unneeded_after={
            name: hop.staging_unneeded_after for name, hop in hops.items() if hop.staging_unneeded_after
        },
        writes_staging=frozenset(name for name, hop in hops.items() if hop.writes_staging),
        produces={name: hop.produces for name, hop in hops.items() if hop.produces},
        consumes={name: hop.consumes for name, hop in hops.items() if hop.consumes},
    )


def build_sources(config: Config, hops: dict[str, Hop]) -> tuple[dict[str, Source], dict[str, str]]:
    """Build the sources that the loaded first hops need; return them and hop → source kind."""
    source_for_hop = {name: hop.source for name, hop in hops.items() if hop.source}
    sources: dict[str, Source] = {}
    for kind in sorted(set(source_for_hop.values())):
        try:
            sources[kind] = load_source(kind, config)
        except (ImportError, ConfigError) as exc:
            log.warning("source %s is unavailable: %s", kind, exc)
    return sources, source_for_hop
