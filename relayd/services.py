"""The shared services hops talk to (the Hub, the drive, the VM): built once per daemon on first use,
and each with the health checks `relayctl doctor` runs for the hops that use it.

A hop asks ``ctx.services.get("drive")`` instead of reading another hop's config section, and declares
the services it uses (``Hop.services``) so that doctor checks them for it. Each service's client and
its checks are imported only when asked for, so building the registry costs nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relayd.config import Config
    from relayd.drive import FactSink
    from relayd.health import Check, CheckScope

Checks = Callable[["CheckScope"], Sequence["Check"]]
#: The executor of this machine, for work on the files staged here (lfs_push on a route without the VM).
LOCAL_EXECUTOR = "local_executor"


class Services:
    """Shared clients built once, on first use, by name; and the checks of each.

    The daemon registers ``"hub"`` (``relayd.hub.HubClient``), ``"drive"``
    (``relayd.drive.make_drive(DriveConfig, state_dir, facts)``) and ``"vm"``
    (``relayd.vm.executor.make_executor(VmConfig)``) with ``build_services``.
    """

    def __init__(self, factories: dict[str, Callable[[], Any]] | None = None) -> None:
        self._factories = dict(factories or {})
        self._checks: dict[str, Checks] = {}
        self._built: dict[str, Any] = {}
        self._lock = threading.Lock()

    def register(self, name: str, factory: Callable[[], Any], *, checks: Checks | None = None) -> None:
        """Use *factory* (and *checks*) for *name* from now on. A client already built is retired
        (``retire()``, when it has one): whoever holds it may finish with it, but it keeps nothing idle."""
        with self._lock:
            self._factories[name] = factory
            if checks is not None:
                self._checks[name] = checks
            old = self._built.pop(name, None)
        retire = getattr(old, "retire", None)
        if callable(retire):
            retire()

    def get(self, name: str) -> Any:
        """Return the shared client *name*, building it on first use. Raise KeyError if unknown."""
        with self._lock:
            if name not in self._built:
                self._built[name] = self._factories[name]()
            return self._built[name]

    def checks(self, name: str, scope: CheckScope) -> list[Check]:
        """Return the health checks of the service *name* for *scope* (none for a service without)."""
        with self._lock:
            checks = self._checks.get(name)
        return list(checks(scope)) if checks is not None else []

    def close(self) -> None:
        """Close every client built so far (those with a close() method)."""
        with self._lock:
            built, self._built = self._built, {}
        for client in built.values():
            close = getattr(client, "close", None)
            if callable(close):
                close()


def build_services(
    config: Config, facts: FactSink | None = None, services: Services | None = None
) -> Services:
    """Register the shared clients hops may ask for, and their checks; each is built on first use, the
    drive publishing its facts to *facts*. Given *services* (a reload), replace its factories: new calls
    get clients built from the new config, while transfers already running finish with the clients
    they hold."""

    def hub() -> Any:
        from relayd.hub import HubClient

        return HubClient(config.hub)

    def drive() -> Any:
        from relayd.drive import make_drive

        return make_drive(config.drive, config.daemon.state_dir, facts)

    def vm() -> Any:
        from relayd.vm.executor import make_executor

        return make_executor(config.vm, state_dir=config.daemon.state_dir)

    def local() -> Any:
        from relayd.vm.executor import local_executor

        return local_executor(config.vm)

    def hub_checks(scope: CheckScope) -> Sequence[Check]:
        from relayd.hub_checks import hub_checks

        return hub_checks(config.hub, scope)

    def drive_checks(scope: CheckScope) -> Sequence[Check]:
        from relayd.drive.checks import drive_checks

        return drive_checks(config.drive, scope)

    def vm_checks(scope: CheckScope) -> Sequence[Check]:
        from relayd.vm.checks import vm_checks

        return vm_checks(config.vm, scope)

    services = services if services is not None else Services()
    services.register("hub", hub, checks=hub_checks)
    services.register("drive", drive, checks=drive_checks)
    services.register("vm", vm, checks=vm_checks)
    services.register(LOCAL_EXECUTOR, local)
    return services
