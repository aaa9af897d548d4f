"""The environment a child relayd starts for the VM (the local agent, ssh) inherits: an allow-list."""

from __future__ import annotations

import os

from relayd.vm.agent.proxy import PROXY_VARIABLES

#: The environment a child (the local agent, ssh) inherits: what finding programs, the locale, the time
#: zone, temporary files, proxies, custom CAs and an SSH agent need. Nothing else, so no token variable
#: (HF_TOKEN, MODELSCOPE_TOKEN, …) of the daemon's environment reaches the VM or a process there;
#: secrets travel only in request lines.
CHILD_ENV = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "SSH_AUTH_SOCK",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        *PROXY_VARIABLES,
    }
)


def child_environment() -> dict[str, str]:
    """Return the allow-listed part of this process's environment (CHILD_ENV and LC_*)."""
    return {name: value for name, value in os.environ.items() if name in CHILD_ENV or name.startswith("LC_")}
