"""Whether relayd's sandbox (the fakes the demo runs on, a distribution of its own) is installed, and
the exact command that installs it when it is not."""

from __future__ import annotations

import importlib
import shlex
import sys
from pathlib import Path

SANDBOX_PACKAGE = "relayd_sandbox"


def sandbox_install_command() -> str:
    """Return the command that installs the sandbox into this Python: from this checkout (editable, as
    ``scripts/dev setup`` does) when relayd runs from one, else from wherever the checkout is."""
    checkout = Path(__file__).resolve().parent.parent / "sandbox"
    python = shlex.quote(sys.executable)
    if (checkout / "pyproject.toml").is_file():
        return f"{python} -m pip install -e {shlex.quote(str(checkout))}"
    return f"{python} -m pip install /path/to/relayd-checkout/sandbox"


def sandbox_missing() -> str | None:
    """Return what to tell the person when the sandbox cannot be imported (with the command that
    installs it), or None when it can."""
    try:
        importlib.import_module(SANDBOX_PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name != SANDBOX_PACKAGE:
            raise  # the sandbox is there but something it needs is not: that is not ours to explain
        return (
            "the demo runs on relayd's sandbox (the fake Hub, drive, git + LFS server and sshd), which "
            f"is not installed. Install it with: {sandbox_install_command()}"
        )
    return None
