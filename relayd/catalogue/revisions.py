"""Where the catalogue's migrations are, and their head read straight from the files.

Standard library only: relayctl's fast paths use it without paying for Alembic's import.
"""

from __future__ import annotations

import re
from pathlib import Path

from relayd.errors import CatalogueError

_REVISION = re.compile(r"^revision\s*(?::[^=]+)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN = re.compile(r"^down_revision\s*(?::[^=]+)?=\s*(None|['\"]([^'\"]+)['\"])\s*$", re.MULTILINE)


def migrations_dir() -> Path:
    """Return the Alembic script directory: inside the installed package, else the checkout's."""
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir / "_migrations", package_dir.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise CatalogueError(f"the catalogue migrations are missing (looked in {package_dir / '_migrations'})")


def fast_head_revision() -> str | None:
    """Return the migration head read straight from the revision files, or None if unsure.

    Alembic's own answer (``migrate.head_revision``) costs its import, several times longer than
    `relayctl status` may take. This reads each file's ``revision`` and ``down_revision`` lines and gives
    up (None: ask Alembic) on anything unusual, such as merges or a file it cannot parse, so it can only
    ever confirm a catalogue that Alembic would also call current.
    """
    try:
        versions = migrations_dir() / "versions"
    except CatalogueError:
        return None
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in versions.glob("*.py"):
        text = script.read_text(encoding="utf-8")
        revision, down = _REVISION.search(text), _DOWN.search(text)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        if down.group(2):
            parents.add(down.group(2))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None
