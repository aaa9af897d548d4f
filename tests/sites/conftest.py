"""Fixtures of the sites tests: a catalogue URL on each database several daemons may share."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "postgresql"])
def either_catalogue(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new catalogue's URL: a SQLite file, then a database on the throwaway PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalogue.db'}"
    postgres_url: str = request.getfixturevalue("postgres_url")
    return postgres_url
