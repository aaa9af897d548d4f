"""A hermetic git client for tests against the sandbox git + LFS server: a private HOME, no system
config, no prompts, and a credential helper that reads the token from ``$MS_TOKEN``, so it never
appears in a URL, in argv or in ``.git/config`` (the recipe relayd itself uses against ModelScope).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

CREDENTIAL_HELPER = '!f() { test "$1" = get && echo username=oauth2 && echo "password=$MS_TOKEN"; }; f'


@dataclass
class GitClient:
    """git as relayd runs it: its own environment, token only in $MS_TOKEN, config passed with -c."""

    env: dict[str, str]
    locksverify: bool = False
    timeout: float = 45

    def argv(self, *args: str) -> list[str]:
        config = ["-c", "credential.helper=", "-c", f"credential.helper={CREDENTIAL_HELPER}"]
        if not self.locksverify:
            config += ["-c", "lfs.locksverify=false"]
        return ["git", *config, *args]

    def run(
        self, *args: str, cwd: Path | None = None, check: bool = True, token: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run git with *args* (with *token* in $MS_TOKEN instead of the client's, if given) and return
        the result. Raise AssertionError if it fails and *check* is true."""
        env = dict(self.env)
        if token is not None:
            env["MS_TOKEN"] = token
        result = subprocess.run(
            self.argv(*args),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=self.timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def popen(self, *args: str, cwd: Path) -> subprocess.Popen[str]:
        """Start git in its own process group, so a test can kill it with all its children."""
        return subprocess.Popen(
            self.argv(*args),
            cwd=cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def clone(self, url: str, dest: Path) -> Path:
        """Clone *url* quietly into *dest* and return *dest*."""
        self.run("clone", "-q", url, str(dest))
        return dest

    def clone_tree(self, url: str, dest: Path) -> dict[str, str]:
        """Clone *url* into *dest* and pull its LFS files; return path → sha256 of its files."""
        self.clone(url, dest)
        self.run("lfs", "pull", cwd=dest)
        return {
            str(p.relative_to(dest)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in dest.rglob("*")
            if p.is_file() and ".git" not in p.relative_to(dest).parts
        }


def hermetic_git(home: Path, token: str, *, timeout: float = 45) -> GitClient:
    """Given a directory to create as the client's HOME and the server's token, return a GitClient
    with an identity, ``master`` as the default branch and git-lfs's global hooks installed there."""
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
        "MS_TOKEN": token,
    }
    for key, value in (
        ("user.name", "relayd test"),
        ("user.email", "test@relayd.invalid"),
        ("init.defaultBranch", "master"),
    ):
        subprocess.run(["git", "config", "--global", key, value], env=env, check=True)
    subprocess.run(["git", "lfs", "install", "--skip-repo"], env=env, check=True, capture_output=True)
    return GitClient(env, timeout=timeout)
