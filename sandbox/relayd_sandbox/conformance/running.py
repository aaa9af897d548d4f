"""Building a hop the way the daemon does, and the port its jobs report through, with the suite's
tripwires on it. Used in the test process and in the child the suite kills (``child.py``)."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relayd.assembly import hop_rules
from relayd.catalogue import migrate
from relayd.catalogue.store import Store, new_owner_id
from relayd.config import Config, parse_config
from relayd.engine import Engine, EngineSettings
from relayd.hops import load_hop_class
from relayd.hops.base import Hop, HopContext, PieceSpec
from relayd.services import Services, build_services
from relayd.staging import Staging

#: Called with a transfer id after the store recorded pieces of it durable.
PieceHook = Callable[[int], None]
#: Called with a transfer id and the handles just saved for it.
SaveHook = Callable[[int, dict[str, Any]], None]


def load(target: str) -> Any:
    """Return the object a ``"module:Name"`` target names."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class Port:
    """The hop's port to the catalogue (``relayd.hops.base.StorePort``): the real store, with hooks
    after each record of durable pieces and each save of handles, and a log of the handles saved."""

    def __init__(
        self, store: Store, on_pieces: PieceHook | None = None, on_save: SaveHook | None = None
    ) -> None:
        self.store = store
        self.on_pieces = on_pieces
        self.on_save = on_save
        self.saved: list[tuple[int, dict[str, Any]]] = []
        self.mismatched: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
        self._lock = threading.Lock()

    def record_plan(self, transfer_id: int, pieces: Sequence[PieceSpec], bytes_total: int) -> None:
        self.store.record_plan(transfer_id, pieces, bytes_total)

    def piece_started(self, transfer_id: int, index: int, *, moved: int = 0) -> None:
        self.store.piece_started(transfer_id, index, moved=moved)

    def piece_done(
        self,
        transfer_id: int,
        indices: Sequence[int],
        *,
        moved: int = 0,
        by_piece: Mapping[int, int] | None = None,
        sent_before: Sequence[int] = (),
        rate: float | None = None,
    ) -> None:
        self.store.piece_done(
            transfer_id, indices, moved=moved, by_piece=by_piece, sent_before=sent_before, rate=rate
        )
        if self.on_pieces is not None:
            self.on_pieces(transfer_id)

    def reset_pieces(self, transfer_id: int, indices: Sequence[int] | None = None) -> None:
        self.store.reset_pieces(transfer_id, indices)

    def progress(
        self,
        transfer_id: int,
        *,
        moved: int,
        rate: float | None,
        bytes_done: int | None = None,
        by_piece: Mapping[int, int] | None = None,
    ) -> None:
        self.store.progress(transfer_id, moved=moved, rate=rate, bytes_done=bytes_done, by_piece=by_piece)

    def save_handles(self, transfer_id: int, handles: dict[str, Any]) -> None:
        """Save, then read back what a restarted hop would be handed (``mismatched`` when it differs)."""
        self.store.save_handles(transfer_id, handles)
        stored = self.store.load_job(transfer_id).handles
        with self._lock:
            self.saved.append((transfer_id, dict(handles)))
            if stored != handles:
                self.mismatched.append((transfer_id, dict(handles), dict(stored)))
        if self.on_save is not None:
            self.on_save(transfer_id, handles)

    def fetch_again(self, transfer_id: int, reason: str) -> None:
        self.store.fetch_again(transfer_id, reason)

    def publish(self, key: str, value: dict[str, Any]) -> None:
        self.store.publish(key, value)


def all_done(store: Store, transfer_id: int) -> bool:
    """Return whether every planned piece of the transfer is recorded durable."""
    pieces = store.load_job(transfer_id).pieces
    return bool(pieces) and all(piece.done for piece in pieces)


@dataclass
class Built:
    """One start of the hop: its context (with a fresh cancel event), the hop and an engine for it."""

    config: Config
    ctx: HopContext
    hop: Hop
    engine: Engine


def parse(data: Mapping[str, Any], root: Path) -> Config:
    return parse_config(dict(data), root / "relayd.toml")


def open_store(config: Config) -> Store:
    store = Store(config.catalogue.url)
    migrate.ensure_schema(store.engine, auto_upgrade=False)
    return store


def build(
    config: Config,
    hop_name: str,
    store: Store,
    port: Port,
    hooks: Sequence[str],
    *,
    hop_class: str | None = None,
    lease: float = 30.0,
) -> Built:
    """Build *hop_name* from *config* as the daemon does (its own section, the shared services), with
    each hook's ``register_services`` applied, and an engine that runs it alone. *hop_class*
    (``"module:Class"``) builds that class instead of the one registered as *hop_name*."""
    services = build_services(config, store, Services())
    for target in hooks:
        load(target).register_services(config, services)
    staging = Staging(config.staging)
    ctx = HopContext(port, staging, config.daemon.state_dir, threading.Event(), new_owner_id(), services)
    cls: type[Hop] = load(hop_class) if hop_class else load_hop_class(hop_name)
    hop = cls(config.section(cls.section_key()), ctx)
    store.rules = hop_rules({hop_name: hop})
    settings = EngineSettings(
        workers=4,
        lease=lease,
        idle_wait=0.05,
        retry=config.retry,
        limits={hop_name: config.concurrency_for(hop_name)},
    )
    return Built(config, ctx, hop, Engine(store, staging, {hop_name: hop}, ctx, settings))
