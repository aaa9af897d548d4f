"""The agent as it travels to the VM: every ``relayd/vm/agent/*.py`` zipped as package ``relayd_agent``,
and the bootstrap that caches the zip there by its sha256 and serves requests from it.

A module added to ``relayd/vm/agent/`` travels with it: the zip takes every ``*.py`` of the directory
(the agent is flat, stdlib only, Python 3.8).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

AGENT_DIR = Path(__file__).resolve().parent / "agent"
AGENT_PACKAGE = "relayd_agent"
# Python 3.8 compatible, no quotes of its own kind inside (it is shell-quoted for ssh). Makes what the
# agent creates private to the VM's user (umask 077), reads the agent zip from stdin unless the cached
# copy has the right sha256, then serves requests.
BOOTSTRAP = """\
import hashlib,io,os,sys,tempfile
os.umask(0o077)
h,n=sys.argv[1],int(sys.argv[2])
d=os.path.join(os.path.expanduser("~"),".cache","relayd")
p=os.path.join(d,"agent-%s.zip"%h)
i=sys.stdin.buffer
def same(f):
    try:
        with open(f,"rb") as x:
            return hashlib.sha256(x.read()).hexdigest()==h
    except OSError:
        return False
c=same(p)
sys.stdout.write("{\\"event\\":\\"agent\\",\\"cached\\":%s}\\n"%("true" if c else "false"))
sys.stdout.flush()
if not c:
    b=i.read(n)
    if len(b)!=n or hashlib.sha256(b).hexdigest()!=h:
        sys.exit(3)
    try:
        os.makedirs(d,mode=0o700,exist_ok=True)
        f,t=tempfile.mkstemp(dir=d,prefix=".agent-")
    except OSError:
        f,t=tempfile.mkstemp(prefix="relayd-agent-")
        p=t+".zip"
    with os.fdopen(f,"wb") as x:
        x.write(b)
    os.replace(t,p)
sys.path.insert(0,p)
import relayd_agent.__main__
from relayd_agent.core import serve
r=serve(io.TextIOWrapper(i,encoding="utf-8"))
sys.stdout.flush()
os._exit(r)
"""


@dataclass(frozen=True)
class AgentBundle:
    """The agent package zipped in memory, and its sha256 (the cache key on the VM)."""

    data: bytes
    sha256: str


@cache
def agent_bundle() -> AgentBundle:
    """Return the agent (every ``relayd/vm/agent/*.py``) as a deterministic zip of package
    ``relayd_agent``, so the same relayd always has the same cache key."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for source in sorted(AGENT_DIR.glob("*.py")):
            info = zipfile.ZipInfo(f"{AGENT_PACKAGE}/{source.name}", date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, source.read_bytes())
    data = buffer.getvalue()
    return AgentBundle(data, hashlib.sha256(data).hexdigest())


def bootstrap_argv(python: str, bundle: AgentBundle, marker: str) -> list[str]:
    # -I: isolated from PYTHON* variables, the user's site-packages and the working directory.
    return [python, "-I", "-c", BOOTSTRAP, bundle.sha256, str(len(bundle.data)), marker]
