"""The hop in a process of its own, killed with SIGKILL at a piece: ``python -m
relayd_sandbox.conformance.child SPEC.json``.

SPEC names the config (as a dict), the hop, the harness hooks that register services, and where to
die: ``"first"`` right after the first record of durable pieces, ``"last"`` right after the record
that makes one transfer's pieces all durable (before its verify). The process kills itself, so the
moment is exact whatever the machine's load; nothing of its own runs after it (no ``finally``, no
cleanup), as with ``kill -9`` from outside. Exit status 3: the run ended without reaching the point.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from relayd_sandbox.conformance.running import Port, all_done, build, open_store, parse

NOT_REACHED = 3


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    root = Path(spec["root"])
    config = parse(spec["config"], root)
    store = open_store(config)
    store.reset_orphaned()  # as the daemon does at start

    def on_pieces(transfer_id: int) -> None:
        if spec["kill"] == "first" or all_done(store, transfer_id):
            os.kill(os.getpid(), signal.SIGKILL)

    built = build(
        config, spec["hop"], store, Port(store, on_pieces), spec["hooks"], hop_class=spec["hop_class"]
    )
    built.engine.run_until_idle(timeout=float(spec.get("timeout", 60)))
    built.engine.drain(5)
    return NOT_REACHED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
