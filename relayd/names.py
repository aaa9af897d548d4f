"""Validation of the repo ids people type and upstream hands back.

A repo id becomes part of paths (staging, the drive, the VM) and URLs, so it is checked once, strictly,
before anything stores or uses it: ``NAME`` or ``OWNER/NAME``, each part of letters, digits, ``.``,
``_`` and ``-``, the rules Hugging Face itself applies (and ``--`` is refused because the HF cache uses
it as a separator).
"""

from __future__ import annotations

import re

from relayd.errors import UsageError

MAX_PART = 96
_PART = re.compile(r"[A-Za-z0-9._-]+")


def _part_problem(part: str) -> str | None:
    """Return what is wrong with one part of a repo id, or None when it is fine."""
    if not part:
        return "an empty part"
    if len(part) > MAX_PART:
        return f"a part longer than {MAX_PART} characters"
    if not _PART.fullmatch(part):
        bad = sorted({ch for ch in part if not _PART.fullmatch(ch)})
        shown = ", ".join(repr(ch) for ch in bad)
        return f"characters other than letters, digits, '.', '_' and '-' ({shown})"
    if ".." in part or "--" in part:
        return "'..' or '--' in a part"
    if part[0] in ".-" or part[-1] in ".-":
        return "a part that starts or ends with '.' or '-'"
    return None


def validate_repo_id(text: str) -> str:
    """Given a repo id as typed, return it unchanged if it is ``NAME`` or ``OWNER/NAME`` with valid parts.

    Raise UsageError saying what is wrong otherwise (nothing is trimmed or fixed up silently).
    """
    if not text:
        raise UsageError("invalid repo id '': expected NAME or OWNER/NAME")
    parts = text.split("/")
    if len(parts) > 2:
        raise UsageError(f"invalid repo id {text!r}: expected NAME or OWNER/NAME, not {len(parts)} parts")
    for part in parts:
        problem = _part_problem(part)
        if problem is not None:
            raise UsageError(f"invalid repo id {text!r}: it has {problem}")
    return text
