"""`relayd demo`: a whole relay on the local sandbox (placeholder until the full route lands)."""

from __future__ import annotations


def demo_main(args: list[str]) -> int:
    """Run the demo with command-line *args*; return the exit code."""
    raise NotImplementedError
