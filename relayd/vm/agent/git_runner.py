"""Hermetic git on the VM: a private config, the token only in a child's environment, one process group
per child.

A credential helper reads the token from the environment of git children and gives it only for the
remote's scheme, host and port (never in a URL, argv, ``.git/config``, an event or an error message);
git follows no redirect. Every git child runs in its own process group, killed as a group on cancel or
when the link dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
from typing import Any
from urllib.parse import urlsplit

from .core import AgentError, Cancelled, Context, track_child_group, untrack_child_group
from .lfs_answers import Scrubber, http_failure, tail
from .proxy import PROXY_VARIABLES

TOKEN_ENV = "RELAYD_MS_TOKEN"  # noqa: S105 - the name of the variable, not a secret
# The origin the token belongs to, as git and git-lfs name it to a credential helper.
PROTOCOL_ENV = "RELAYD_MS_PROTOCOL"
HOST_ENV = "RELAYD_MS_HOST"
# Answers only "get", and only for the remote's own scheme and host[:port] (git passes protocol=,
# host= and maybe path= lines on stdin), with the token read from the child's environment then.
CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || return 0; p=; h=; while IFS= read -r l; do case "$l" in '
    'protocol=*) p="${l#protocol=}";; host=*) h="${l#host=}";; esac; done; '
    'test -n "$p" && test "$p" = "$%s" && test "$h" = "$%s" && '
    'echo username=oauth2 && echo "password=$%s"; }; f' % (PROTOCOL_ENV, HOST_ENV, TOKEN_ENV)
)
KILL_GRACE = 5.0


class GitRunner:
    """Runs git for one scratch repository: private config, the token only in the environment, each
    child in its own process group (killed as a group on cancel)."""

    def __init__(
        self,
        git_dir: str,
        home: str,
        token: str,
        context: Context,
        *,
        remote: str,
        activity_timeout: float,
        concurrency: int = 2,
        proxy: str = "",
    ) -> None:
        self.git_dir = git_dir
        self.context = context
        self.scrub = Scrubber(token)
        os.makedirs(home, exist_ok=True)
        global_config = os.path.join(home, ".gitconfig")
        if not os.path.exists(global_config):
            with open(global_config, "w"):
                pass
        self.env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": home,
            "XDG_CONFIG_HOME": os.path.join(home, ".config"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": global_config,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "LC_ALL": "C",
            "GIT_DIR": git_dir,
            "GIT_AUTHOR_NAME": "relayd",
            "GIT_AUTHOR_EMAIL": "relayd@localhost",
            "GIT_COMMITTER_NAME": "relayd",
            "GIT_COMMITTER_EMAIL": "relayd@localhost",
            TOKEN_ENV: token,
            # The credential helper gives the token for this origin only (as git names it: the
            # remote's scheme, and its host with the port when the URL has one).
            PROTOCOL_ENV: urlsplit(remote).scheme,
            HOST_ENV: urlsplit(remote).netloc.rsplit("@", 1)[-1],
        }
        for name in (*PROXY_VARIABLES, "TMPDIR"):
            if os.environ.get(name):
                self.env[name] = os.environ[name]
        if proxy:
            # modelscope.proxy as git's http.proxy (which git-lfs reads too, and which overrides the
            # proxy variables), through the environment (git >= 2.31): its URL may hold a password,
            # which must not reach argv.
            self.env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.proxy", GIT_CONFIG_VALUE_0=proxy)
        self.config = [
            "credential.helper=",
            "credential.helper=" + CREDENTIAL_HELPER,
            "lfs.activitytimeout=%d" % max(30, int(activity_timeout)),
            "lfs.locksverify=false",
            # A redirect is an error, not an address to follow: git's default follows one on its first
            # request, to wherever it points. relayd says where it leads (see git_failure).
            "http.followRedirects=false",
            "lfs.concurrenttransfers=%d" % max(1, concurrency),
            "core.hooksPath=" + os.path.join(git_dir, "hooks"),
            "gc.auto=0",
            "advice.detachedHead=false",
        ]

    def argv(self, args: list[str]) -> list[str]:
        command = ["git"]
        for item in self.config:
            command += ["-c", item]
        return command + args

    def run(
        self,
        args: list[str],
        *,
        data: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> tuple[int, bytes, str]:
        """Run ``git <args>``; return (exit code, stdout, scrubbed stderr). Raise AgentError when
        *check* and it fails, Cancelled when the daemon cancels (the child's group is killed)."""
        full_env = dict(self.env)
        full_env.update(env or {})
        try:
            child = subprocess.Popen(
                self.argv(args),
                stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                cwd=self.git_dir if os.path.isdir(self.git_dir) else None,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise AgentError(
                "git is not installed on the VM",
                kind="blocked",
                error_class="setup",
                hint="install git and git-lfs on the VM (e.g. apt-get install git git-lfs)",
            ) from None
        track_child_group(child.pid)
        try:
            out, err = self._communicate(child, data)
        finally:
            untrack_child_group(child.pid)
        stderr = self.scrub(err.decode("utf-8", "replace"))
        if check and child.returncode != 0:
            raise AgentError(
                "git %s failed (%d): %s" % (args[0], child.returncode, tail(stderr)),
                kind="retryable",
                error_class="git",
            )
        return child.returncode, out, stderr

    def _communicate(self, child: subprocess.Popen[bytes], data: bytes | None) -> tuple[bytes, bytes]:
        while True:
            try:
                return child.communicate(data, timeout=0.2)
            except subprocess.TimeoutExpired:
                # communicate() keeps feeding the input it was first given; handing it again raises
                # "Cannot send input after starting communication" (a git slower than 0.2 s).
                data = None
                if self.context.cancelled:
                    kill_group(child)
                    raise Cancelled("cancelled by the daemon") from None

    def output(self, args: list[str], *, data: bytes | None = None, env: dict[str, str] | None = None) -> str:
        return self.run(args, data=data, env=env)[1].decode("utf-8", "replace").strip()


def kill_group(child: subprocess.Popen[bytes]) -> None:
    """Stop *child*'s whole process group: SIGTERM, then SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, KILL_GRACE)):
        with contextlib.suppress(OSError):
            os.killpg(child.pid, sig)
        try:
            child.communicate(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def scratch_dir(work_dir: str, remote: str) -> str:
    """Return the scratch bare repository for *remote* under *work_dir*."""
    parts = urlsplit(remote)
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", (parts.netloc.rsplit("@", 1)[-1] + parts.path).strip("/"))
    return os.path.join(work_dir, "repos", key.strip("._") or "repo")


def open_scratch(params: dict[str, Any], secrets: dict[str, str], context: Context) -> GitRunner:
    work_dir = str(params.get("work_dir") or "")
    if not work_dir.startswith("/"):
        raise AgentError(
            "work_dir must be an absolute path on the VM", kind="permanent", error_class="config"
        )
    remote = str(params.get("remote") or "")
    git_dir = scratch_dir(work_dir, remote)
    if shutil.which("git") is None:
        raise AgentError(
            "git is not installed on the VM",
            kind="blocked",
            error_class="setup",
            hint="install git and git-lfs on the VM (e.g. apt-get install git git-lfs)",
        )
    runner = GitRunner(
        git_dir,
        os.path.join(work_dir, "home"),
        secrets.get("token") or "",
        context,
        remote=remote,
        activity_timeout=float(params.get("activity_timeout") or 3600.0),
        concurrency=int(params.get("concurrency") or 2),
        proxy=secrets.get("proxy") or "",
    )
    os.makedirs(os.path.dirname(git_dir), exist_ok=True)
    with open(git_dir + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isfile(os.path.join(git_dir, "HEAD")):
            partial = git_dir + ".init-%d" % os.getpid()
            shutil.rmtree(partial, ignore_errors=True)
            runner.run(["init", "--quiet", "--bare", partial], env={"GIT_DIR": partial})
            os.rename(partial, git_dir)
        if not os.path.isfile(os.path.join(git_dir, "hooks", "pre-push")):
            code, _, err = runner.run(["lfs", "install", "--local"], check=False)
            if code != 0:
                raise AgentError(
                    "git-lfs is not usable on the VM: %s" % tail(err, 300),
                    kind="blocked",
                    error_class="setup",
                    hint="install git-lfs on the VM (e.g. apt-get install git-lfs)",
                )
    return runner


def git_failure(what: str, stderr: str, repo: str) -> AgentError:
    """Map a failed git network command's (scrubbed) stderr to an AgentError with a hint."""
    text = stderr.lower()
    detail = "%s failed: %s" % (what, tail(stderr))
    if "authentication failed" in text or "could not read username" in text or " 401" in text:
        return http_failure(401, tail(stderr, 300), what=what, repo=repo)
    if " 403" in text or "permission denied" in text or "access denied" in text:
        return http_failure(403, tail(stderr, 300), what=what, repo=repo)
    if "not found" in text or " 404" in text or "does not appear to be a git repository" in text:
        return http_failure(404, tail(stderr, 300), what=what, repo=repo)
    if " 413" in text:
        return http_failure(413, tail(stderr, 300), what=what, repo=repo)
    if "quota" in text or " 507" in text:
        return http_failure(507, tail(stderr, 300), what=what, repo=repo)
    redirect = re.search(r"returned error: (3\d\d)", text)
    if redirect:  # http.followRedirects=false: git says only the status
        return http_failure(int(redirect.group(1)), tail(stderr, 300), what=what, repo=repo)
    if "unable to find source for object" in text:
        return AgentError(detail, kind="retryable", error_class="integrity")
    return AgentError(detail, kind="retryable", error_class="network")
