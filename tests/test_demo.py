"""`relayd demo` runs end to end at small sizes and verifies its own table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_demo_relays_verifies_and_moves_only_the_changed_shard(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "relayd",
            "demo",
            "--shards",
            "2",
            "--shard-size",
            "2MiB",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "everything verified" in output
    assert "second revision moved 2.0 MiB (one shard is 2.0 MiB)" in output
    assert "✘" not in output
    # The daemon was stopped and the sandbox left where asked.
    assert (tmp_path / "relayd.toml").exists()
