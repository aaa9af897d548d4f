"""The route demo's last act: a second repo whose weights ModelScope already holds moves no shard.

"Ask the end first": when the mirror's snapshot is recorded, ms_upload's pre-check says ModelScope
holds every shard (a blob any ModelScope repo holds counts), so download, pan_upload and vm_pull skip
them and only the small files travel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from relayd.units import format_size

if TYPE_CHECKING:
    from relayd.demo import RouteDemo


def relay_mirror(demo: RouteDemo, say: Callable[[str], None]) -> bool:
    """Relay a second repo whose weights ModelScope already holds (a mirror of the first) through
    ms_upload: asked first, the destination holds every shard, so no hop moves a shard's byte; return
    whether that is so."""
    hops = ("download", "pan_upload", "vm_pull", "ms_upload")
    mirror, target = demo.sandbox.add_mirror()
    say(f"a second repo, {mirror}, with the same weights, to {target} through ModelScope's HTTP API")
    before = {hop: demo.bytes_moved(hop) for hop in hops}
    demo.relayctl("add", mirror, "--every", "10s", "--route", ",".join(hops), "--modelscope-repo", target)
    started = time.monotonic()
    document = demo.wait_for_snapshot(say, previous=None, repo=mirror)
    took = time.monotonic() - started
    moved = {hop: demo.bytes_moved(hop) - before[hop] for hop in hops}
    shards = sum(
        item["size"] for item in document.get("files") or [] if str(item["path"]).endswith(".safetensors")
    )
    avoided = document["bytes_avoided"]["snapshot"]
    said = {(item["hop"], item["reason"]): item["bytes"] for item in avoided}
    say(
        f"{mirror} done in {took:.0f}s; moved (small files only): "
        + ", ".join(f"{hop} {format_size(n)}" for hop, n in moved.items())
        + "; avoided: "
        + ", ".join(f"{hop} {format_size(n)} ({reason})" for (hop, reason), n in said.items())
    )
    covered = all(sum(n for (hop, _), n in said.items() if hop == each) >= shards for each in hops)
    small = all(n < shards for n in moved.values())
    if not (covered and small):
        say("THE SHARDS MOVED AGAIN, though the destination held them")
    return covered and small
