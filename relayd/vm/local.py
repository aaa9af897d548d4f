"""The VM is this machine: the agent runs as a child in its own session and process group."""

from __future__ import annotations

import shutil

from relayd.errors import ErrorClass, HopError, NeedsPerson, Retryable
from relayd.vm.bundle import AgentBundle, bootstrap_argv
from relayd.vm.environment import child_environment
from relayd.vm.pool import Executor


class LocalExecutor(Executor):
    """The VM is this machine: the agent runs as a child in its own session and process group, with
    ``vm.python`` (found on ``vm.path`` when set, else on this process's PATH)."""

    kind = "local"

    def _command(self, bundle: AgentBundle) -> tuple[list[str], dict[str, str]]:
        env = child_environment()
        if self.config.path:
            env["PATH"] = self.config.path
        python = shutil.which(self.config.python, path=env.get("PATH")) or self.config.python
        return bootstrap_argv(python, bundle, self.marker), env

    def _start_failure(self, returncode: int | None, stderr: str) -> HopError:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {returncode}"
        return Retryable(f"the VM agent did not start: {last}", error_class=ErrorClass.AGENT)

    def _missing_program(self, program: str) -> HopError:
        return NeedsPerson(
            f"python ({program}) was not found on this machine (the local VM)",
            hint="install python3 ≥ 3.8 (apt-get install python3) or set vm.python to its path",
            error_class=ErrorClass.SETUP,
        )
