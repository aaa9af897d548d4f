"""Validation of the repo ids people type and upstream hands back, and of the paths git can hold.

A repo id becomes part of paths (staging, the drive, the VM) and URLs, so it is checked once, strictly,
before anything stores or uses it: ``NAME`` or ``OWNER/NAME``, each part of letters, digits, ``.``,
``_`` and ``-``, the rules Hugging Face itself applies (and ``--`` is refused because the HF cache uses
it as a separator). A snapshot path git cannot hold is refused before anything moves (git_path_problem).
"""

from __future__ import annotations

import glob
import re
import shlex
from collections.abc import Iterable

from relayd.errors import ErrorClass, Permanent, UsageError

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


# -- paths git cannot hold --------------------------------------------------------------------------
#
# The rules of git's verify_path() (read-cache.c) as git 2.39 applies them by default, checked against
# the real git by tests/lfs/test_git_paths.py. A path git refuses is left out of the index without an
# error ("Ignoring path ..." from `update-index --index-info`, exit 0), so it must be refused before a
# byte of its snapshot moves. core.protectNTFS is on by default everywhere (since git 2.24.1);
# core.protectHFS is the default on macOS, where such a commit could not be checked out.

# Code points HFS+ ignores in names, so ".g\u200cit" is ".git" there (git's utf8.c next_hfs_char()).
_HFS_IGNORED = frozenset(
    [0x200C, 0x200D, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF]
)
_NTFS_DOTGIT = re.compile(r"(?:\.git|git~1)[. ]*", re.IGNORECASE)


def git_path_problem(path: str) -> str | None:
    """Given a file's path in a snapshot, return why git refuses it, or None when git can hold it.

    Covers an empty path or segment (a leading, doubled or trailing ``/``), ``.`` and ``..``, ``.git`` as
    any segment in any letter case, the names NTFS reads as ``.git`` (``.git.``, ``.git `` with trailing
    dots or spaces, the short name ``git~1``; with ``\\`` also a separator), and the names HFS+ reads as
    ``.git`` (``.git`` with ignorable zero-width characters in it).
    """
    if not path:
        return "an empty path"
    segments = path.split("/")
    if "" in segments:
        return "an empty segment (a leading, doubled or trailing '/')"
    for segment in segments:
        if segment in (".", ".."):
            return f"a {segment!r} segment"
        if segment.lower() == ".git":
            return "a '.git' segment (git never stores its own folder in a tree)"
        if any(_NTFS_DOTGIT.fullmatch(part) for part in segment.split("\\")):
            return f"the segment {segment!r}, which Windows (NTFS) reads as '.git' (core.protectNTFS)"
        visible = "".join(ch for ch in segment if ord(ch) not in _HFS_IGNORED)
        if visible.isascii() and visible.lower() == ".git":
            return f"the segment {segment!r}, which macOS (HFS+) reads as '.git' (core.protectHFS)"
    return None


def refuse_git_paths(repo: str, paths: Iterable[str]) -> None:
    """Given a repo's name and the paths its snapshot would relay, raise Permanent naming the first path
    git cannot hold (see git_path_problem), with a hint on how to leave it out."""
    for path in paths:
        problem = git_path_problem(path)
        if problem is not None:
            example = shlex.quote(glob.escape(path))
            raise Permanent(
                f"upstream lists {path!r}, which git cannot hold: {problem}",
                hint="this snapshot cannot be relayed as is (git, and so ModelScope, would leave the file "
                "out): exclude the path with the repo's globs, e.g. "
                f"`relayctl add {repo} --replace --exclude {example}` (repeating the repo's other "
                "options), or have it renamed upstream",
                error_class=ErrorClass.PATH,
            )
