"""The drive token's lifetime that relayctl status shows is the newest one, whatever the thread order."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from relayd.config import parse_config
from relayd.drive.aligo_backend import AligoDrive
from relayd_sandbox.drive import FakeDrive


def test_a_slow_stale_publish_never_overwrites_the_refreshed_state(
    tmp_path: Path, fake_drive: FakeDrive
) -> None:
    (tmp_path / "rt").write_text(fake_drive.issue_refresh_token())
    config = parse_config(
        {
            "drive": {"api_url": fake_drive.api_url, "refresh_token_file": str(tmp_path / "rt")},
            "daemon": {"state_dir": str(tmp_path / "state")},
        },
        tmp_path / "relayd.toml",
    )
    published: list[dict[str, Any]] = []

    def slow_store(_key: str, fact: dict[str, Any]) -> None:
        if fact["state"] != "valid":
            time.sleep(0.3)  # a busy catalogue: this write lands late
        published.append(fact)

    drive = AligoDrive(config.drive, tmp_path / "state", publish=slow_store)
    threads = [threading.Thread(target=drive.ensure_folder, args=(f"/relayd/t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert published[-1]["state"] == "valid", published
    drive.close()
