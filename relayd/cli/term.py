"""Text for a terminal: how wide it is, whether to colour, and lines that wrap to fit instead of being cut.

A line is built from cells (runs of text that stay together, each run with a role that picks its colour)
and packed into as many lines as the width needs, so nothing is ever cut. Colour follows
https://no-color.org: only on a terminal, never when ``NO_COLOR`` is set. Output to a pipe or a file is
not wrapped (unless ``$COLUMNS`` asks), so a grep finds a message whole.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import click

#: A run of text and its role: "" (plain), "ok", "warn", "bad", "dim", "head" or "bar".
Span = tuple[str, str]
#: Runs that stay together on one line.
Cell = list[Span]

STYLES: dict[str, dict[str, Any]] = {
    "ok": {"fg": "green"},
    "warn": {"fg": "yellow"},
    "bad": {"fg": "red", "bold": True},
    "dim": {"dim": True},
    "head": {"bold": True},
    "bar": {"fg": "cyan"},
}
MIN_WIDTH = 30


def output_width() -> int | None:
    """Return the columns output must fit: ``$COLUMNS`` when set, else the terminal's width when stdout is
    one; None for a pipe or a file."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return max(int(columns), MIN_WIDTH)
    if sys.stdout.isatty():
        return max(shutil.get_terminal_size().columns, MIN_WIDTH)
    return None


def use_colour() -> bool:
    """Return whether to colour: stdout is a terminal and ``NO_COLOR`` is not set (to anything)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def can_draw() -> bool:
    """Return whether stdout's encoding has the block and check characters of bars and marks."""
    try:
        "█░✓".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def length(cell: Sequence[Span]) -> int:
    return sum(len(text) for text, _ in cell)


def render(spans: Sequence[Span], colour: bool) -> str:
    """Return the runs as one string, styled when *colour*."""
    return "".join(
        click.style(text, **STYLES[role]) if colour and role in STYLES and text else text
        for text, role in spans
    )


def bar(fraction: float, width: int, role: str = "bar") -> Cell:
    """Return a progress bar of *width* characters, *fraction* (0 to 1) of it full."""
    full = min(width, max(0, round(fraction * width)))
    if can_draw():
        return [("█" * full, role), ("░" * (width - full), "dim")]
    return [
        ("[", ""),
        ("#" * max(0, full - 2), role),
        ("-" * max(0, width - 2 - max(0, full - 2)), "dim"),
        ("]", ""),
    ]


def pack(
    cells: Sequence[Cell],
    width: int | None,
    indent: str = "",
    continuation: str = "    ",
    sep: str = "  ",
    seps: Sequence[str] | None = None,
) -> list[list[Span]]:
    """Return *cells* laid out in lines of at most *width* characters (one line when None): a cell goes
    on the current line after *sep* (or its own in *seps*) if it fits, else on a new line that starts
    with *continuation*. A cell longer than a whole line is broken between its words, and a word longer
    than a line between its characters."""
    lines: list[list[Span]] = [[(indent, "")]]
    used, empty = len(indent), True

    def place(cell: Cell, gap: str) -> None:
        nonlocal used, empty
        size = length(cell)
        if width is not None and not empty and used + len(gap) + size > width:
            lines.append([(continuation, "")])
            used, empty, gap = len(continuation), True, ""
        if width is None or used + len(gap) + size <= width:
            lines[-1] += [(gap, ""), *cell]
            used, empty = used + len(gap) + size, False
            return
        for text, role in cell:  # a word longer than a line
            for piece in _pieces(text, width - used, width - len(continuation)):
                if used + len(piece) > width:
                    lines.append([(continuation, "")])
                    used = len(continuation)
                lines[-1].append((piece, role))
                used += len(piece)
        empty = False

    for index, cell in enumerate(cells):
        if not length(cell):
            continue
        gap = "" if empty else seps[index] if seps is not None else sep
        if width is None or length(cell) <= width - len(continuation):
            place(cell, gap)
            continue
        words = [[(word, role)] for text, role in cell for word in text.split(" ") if word]
        for number, word in enumerate(words):
            place(word, gap if number == 0 else " ")
    return lines


def _pieces(text: str, first: int, rest: int) -> list[str]:
    """Return *text* cut into a first piece of at most *first* characters, then pieces of *rest*."""
    head = text[: max(first, 0)]
    tail = text[len(head) :]
    step = max(rest, 1)
    return ([head] if head else []) + [tail[i : i + step] for i in range(0, len(tail), step)]


def wrap(text: str, width: int | None, indent: str, continuation: str | None = None) -> list[str]:
    """Return *text* after *indent*, wrapped at *width* (not at all when None), later lines indented by
    *continuation* (the indent's width of spaces by default)."""
    if width is None:
        return [indent + text]
    follow = " " * len(indent) if continuation is None else continuation
    return textwrap.wrap(
        text,
        width=width,
        initial_indent=indent,
        subsequent_indent=follow,
        break_on_hyphens=False,
        drop_whitespace=True,
    ) or [indent.rstrip()]
