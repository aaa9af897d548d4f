"""relayctl under click's CliRunner, over a config and a SQLite catalogue (the ``relayctl`` fixture of
tests/cli/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from relayd.catalogue import migrate
from relayd.catalogue.store import Store
from relayd.cli import cli


class Relayctl:
    """Runs relayctl against one config; opens the same catalogue for setup and checks."""

    def __init__(self, root: Path, config: Path) -> None:
        self.root = root
        self.config = config
        self.db = root / "catalogue.db"
        self.url = f"sqlite:///{self.db}"
        self._store: Store | None = None

    def __call__(self, *args: str, input: str | None = None) -> Result:
        """Run relayctl as into a pipe: $COLUMNS unset (pytest-xdist's workers set it), so nothing wraps."""
        return CliRunner().invoke(
            cli,
            ["-c", str(self.config), *args],
            input=input,
            env={"COLUMNS": None},
            catch_exceptions=False,
            prog_name="relayctl",
        )

    def heavy_imports_of(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run relayctl with *args* in a new Python process that then writes to stderr the sorted list of
        heavy modules it imported (SQLAlchemy, rich, huggingface_hub, aligo, Alembic, any hop). Return the
        finished process; raise CalledProcessError if it failed."""
        code = (
            "import sys\n"
            "from relayd.cli import cli\n"
            f"cli.main({['-c', str(self.config), *args]!r}, standalone_mode=False)\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('sqlalchemy', 'rich', 'huggingface_hub', 'aligo', 'alembic') or m.startswith('relayd.hops'))\n"
            "print(heavy, file=sys.stderr)\n"
        )
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.url)
            migrate.ensure_schema(self._store.engine, auto_upgrade=False)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
