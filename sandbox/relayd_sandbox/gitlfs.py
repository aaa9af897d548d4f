"""A real git smart-HTTP + Git LFS server on one loopback port, standing in for ModelScope.

``/<owner>/<name>.git/info/lfs/*`` is served by this module's own LFS implementation (batch API,
basic transfer, verify); every other ``/<owner>/<name>.git/*`` request goes through a CGI bridge to
``git http-backend``. Both legs require HTTP Basic ``oauth2:<token>``, as ModelScope does, so the
real git and git-lfs clients discover the LFS endpoint and authenticate exactly as in production.
``/models/<owner>/<name>.git`` (the newer SDK's URL form) reaches the same repository. ModelScope's
HTTP upload API (``/api/v1/repos/…``: pre-check, blob PUT, commit) is served on the same origin by
``ms_api``, committing into the same bare repositories.

Batch actions come in each shape the batch API allows (``action_auth``): by default they carry their
own ``Authorization: Bearer <token>`` header (an HMAC over operation, repo, oid, size and expiry, valid
``action_lifetime`` seconds) and object PUT/GET and verify accept only that token, never the user's
Basic credentials, so a client that ignores the action headers fails here; ``"basic"`` actions have no
header and take the user's Basic credentials on the same origin; ``"signed_url"`` actions point at a
separate storage origin (a second port, as object storage is another host) with the token in the
query and no header. Each action says when it expires with ``expires_in``, ``expires_at`` (RFC 3339),
both or neither (``action_expiry``); the ``verify`` action can be left out (``verify_action``); an
object the server holds comes back without actions or is left out of the answer (``omit_stored``).

Layout under *root*::

    repos/<owner>/<name>.git    bare repositories (http.receivepack enabled)
    lfs/<owner>/<name>/<oid>    LFS objects, written verified and atomically
    tmp/                        buffered request bodies for the CGI bridge
    home/                       HOME of the server's own git processes

Objects above ``max_object_size`` are refused (``size_limit_at``): in the batch answer, as a
per-object error with code 413, or at the PUT, as an nginx front answers a body over its
``client_max_body_size``: ``413 Request Entity Too Large`` with its HTML page, sent before the body is
read (ModelScope's answer to ~100 GB blobs, modelscope/modelscope#1591).

Knobs for fault-injection tests (all may be changed while serving): ``token``, ``auto_create_repos``,
``put_bytes_per_second``, ``get_bytes_per_second``, ``action_lifetime``, ``action_auth``,
``action_expiry``, ``verify_action``, ``omit_stored``, ``max_object_size``, ``size_limit_at``,
``max_batch_objects`` (a larger batch request is refused with HTTP 413, as the spec allows),
``redirect`` (every request to the main origin is answered with a redirect elsewhere), ``corrupt_puts``
(the next that many object PUTs have one byte inverted on the way in, so the server's own sha256 check
refuses them with 422), ``answer_padding`` (LFS JSON answers grow by that many bytes of whitespace, sent
chunked: a server that answers too much), ``before_git``, ``fail_next()``, and ``stop()``/``start()`` on
the same ports. Locking is not implemented: ``/info/lfs/locks/verify`` (and every other locks URL)
answers 404, which git-lfs tolerates with a warning; clients should set ``lfs.locksverify=false`` as
they must for ModelScope.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import subprocess
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from relayd_sandbox._http import RequestLog
from relayd_sandbox.gitlfs_http import GitLfsListener
from relayd_sandbox.gitlfs_store import ActionSigner, ObjectStore, lfs_pointer
from relayd_sandbox.ms_api import MsApiKnobs

logger = logging.getLogger(__name__)

__all__ = [
    "BatchRecord",
    "Endpoint",
    "GitLfsCounters",
    "GitLfsServer",
    "InjectedFailure",
    "lfs_pointer",
]

Endpoint = Literal["git", "batch", "upload", "download", "verify", "ms_batch", "ms_upload", "ms_commit"]
ActionAuth = Literal["header", "basic", "signed_url"]
ActionExpiry = Literal["expires_in", "expires_at", "both", "none"]
_ENDPOINTS: frozenset[str] = frozenset(
    {"git", "batch", "upload", "download", "verify", "ms_batch", "ms_upload", "ms_commit"}
)
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class InjectedFailure:
    """A canned error answer for the next request to one endpoint."""

    status: int
    message: str
    retry_after: float | None = None


@dataclass(frozen=True)
class BatchRecord:
    """One authenticated batch request as the server understood it."""

    owner: str
    name: str
    operation: str
    oids: tuple[str, ...]
    ref: str | None


@dataclass(frozen=True)
class GitLfsCounters:
    """A snapshot of what the server has done since start (or the last reset_counters())."""

    git_requests: int
    batch_requests: int
    puts: int
    """PUT requests that reached the body (authorized, not failed by injection)."""
    puts_stored: int
    """PUTs whose bytes verified and were stored."""
    put_bytes: int
    """Object bytes received by PUT, complete or not."""
    put_bytes_by_oid: Mapping[str, int]
    downloads: int
    verifies: int


@dataclass
class _Tally:
    git_requests: int = 0
    batch_requests: int = 0
    puts: int = 0
    puts_stored: int = 0
    put_bytes: int = 0
    put_bytes_by_oid: Counter[str] = field(default_factory=Counter)
    downloads: int = 0
    verifies: int = 0
    batches: list[BatchRecord] = field(default_factory=list)


class GitLfsServer:
    """A git smart-HTTP + LFS server for *root* on 127.0.0.1, guarded by Basic ``oauth2:<token>``.

    Start it with start() or a ``with`` block. The port is chosen at the first start (or given as
    *port*) and kept across stop()/start(), so clients can be pointed at a server that goes down and
    comes back. Plain attribute knobs are read on every request, so tests may flip them at any time.
    """

    def __init__(
        self,
        root: Path,
        token: str,
        *,
        port: int = 0,
        username: str = "oauth2",
        auto_create_repos: bool = False,
        put_bytes_per_second: float | None = None,
        get_bytes_per_second: float | None = None,
        action_lifetime: float = 3600.0,
        action_auth: ActionAuth = "header",
        action_expiry: ActionExpiry = "expires_in",
        verify_action: bool = True,
        omit_stored: bool = False,
        max_object_size: int | None = None,
        size_limit_at: Literal["batch", "upload"] = "batch",
        realm: str = "relayd sandbox git",
        git: str = "git",
    ) -> None:
        self.root = root
        self.token = token
        self.username = username
        self.auto_create_repos = auto_create_repos
        self.put_bytes_per_second = put_bytes_per_second
        self.get_bytes_per_second = get_bytes_per_second
        self.action_lifetime = action_lifetime
        self.action_auth: ActionAuth = action_auth
        self.action_expiry: ActionExpiry = action_expiry
        self.verify_action = verify_action
        self.omit_stored = omit_stored
        self.max_object_size = max_object_size
        self.size_limit_at: Literal["batch", "upload"] = size_limit_at
        # (status, base URL): answer every request to the main origin with a redirect to base + path.
        self.redirect: tuple[int, str] | None = None
        self.answer_padding = 0
        # More objects than this in one batch request are refused with HTTP 413 (the spec's "too many").
        self.max_batch_objects: int | None = None
        # The next this many object PUTs have one byte of their body inverted on the way in, as a
        # link that damages uploads would: the server's own sha256 check then refuses them (422).
        self.corrupt_puts = 0
        self.realm = realm
        self.git = git
        # Called as (owner, name, path, service) before each authorized git request is served, e.g.
        # to commit on the server between a client's fetch and its push (a non-fast-forward race).
        self.before_git: Callable[[str, str, str, str], None] | None = None
        # ModelScope's HTTP upload API on the same origin (relayd_sandbox.ms_api): its knobs and records.
        self.modelscope = MsApiKnobs()
        self.request_log = RequestLog()
        self.storage_log = RequestLog()
        self.store = ObjectStore(root / "lfs")
        self.signer = ActionSigner()
        self.repos_root = root / "repos"
        self.tmp_dir = root / "tmp"
        self._home = root / "home"
        for folder in (self.repos_root, self.store.root, self.tmp_dir, self._home):
            folder.mkdir(parents=True, exist_ok=True)
        exec_path = self._git_output(["--exec-path"]).strip()
        self.http_backend = Path(exec_path) / "git-http-backend"
        self._port = port
        self._storage_port = 0
        self._listener: GitLfsListener | None = None
        self._storage: GitLfsListener | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._tally = _Tally()
        self._failures: dict[str, deque[InjectedFailure]] = {name: deque() for name in _ENDPOINTS}
        self._repo_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start serving (again) on the server's port."""
        if self._listener is not None:
            raise RuntimeError("GitLfsServer is already running")
        listener = GitLfsListener(self, self._port)
        self._port = listener.port
        try:
            storage = GitLfsListener(self, self._storage_port, storage=True)
        except BaseException:
            listener.server_close()
            raise
        self._storage_port = storage.port
        listener.start()
        storage.start()
        self._listener, self._storage = listener, storage
        logger.info(
            "git+LFS sandbox serving %s (storage %s) from %s", self.base_url, self.storage_url, self.root
        )

    def stop(self, *, drop_connections: bool = True) -> None:
        """Stop listening. With *drop_connections*, also reset open connections, as a crash would;
        otherwise requests in progress run to completion."""
        listener, self._listener = self._listener, None
        storage, self._storage = self._storage, None
        if listener is None:
            return
        for each in (listener, storage):
            if each is not None:
                each.closing = True  # handlers close keep-alive connections after their current request
                each.stop()
                if drop_connections:
                    each.drop_connections()
        logger.info("git+LFS sandbox on port %d stopped", self._port)

    def restart(self, *, down_for: float = 0.0) -> None:
        """Stop (cutting connections), stay down *down_for* seconds, and start on the same port."""
        self.stop()
        time.sleep(down_for)
        self.start()

    @property
    def running(self) -> bool:
        return self._listener is not None

    def __enter__(self) -> GitLfsServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port; 0 until the first start() when none was given."""
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def storage_url(self) -> str:
        """The origin of ``signed_url`` action hrefs: another port of 127.0.0.1, standing for the object
        storage host a real LFS server hands out."""
        return f"http://127.0.0.1:{self._storage_port}"

    def remote_url(self, owner: str, name: str, *, models_prefix: bool = False) -> str:
        """Return the git remote URL of *owner*/*name*, never with credentials in it.

        The default is ModelScope's historic ``/<owner>/<name>.git``; *models_prefix* gives the newer
        SDK form ``/models/<owner>/<name>.git``. Both reach the same repository.
        """
        prefix = "/models" if models_prefix else ""
        return f"{self.base_url}{prefix}/{owner}/{name}.git"

    def lfs_url(self, owner: str, name: str, *, models_prefix: bool = False) -> str:
        """Return the LFS endpoint that git-lfs derives from remote_url()."""
        return f"{self.remote_url(owner, name, models_prefix=models_prefix)}/info/lfs"

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no request is being handled; return False on timeout.

        Useful after killing a client mid-upload: the server may still be draining its socket.
        """
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    # -- repositories ------------------------------------------------------------------------------

    def repo_path(self, owner: str, name: str) -> Path:
        """Return the bare repository path of *owner*/*name*. Raise ValueError on unsafe names."""
        for part in (owner, name):
            if not _SEGMENT.fullmatch(part) or ".." in part:
                raise ValueError(f"unsafe repository path segment {part!r}")
        return self.repos_root / owner / f"{name}.git"

    def has_repo(self, owner: str, name: str) -> bool:
        return (self.repo_path(owner, name) / "HEAD").is_file()

    def _existing_repo(self, owner: str, name: str) -> Path:
        if not self.has_repo(owner, name):
            raise FileNotFoundError(f"no repository {owner}/{name} under {self.repos_root}")
        return self.repo_path(owner, name)

    def new_repo(self, owner: str, name: str, *, default_branch: str = "master") -> Path:
        """Create the empty bare repository *owner*/*name* (pushes allowed) and return its path.

        Creating one that exists is a no-op, so concurrent on-demand creation is safe.
        """
        path = self.repo_path(owner, name)
        with self._repo_lock:
            if not self.has_repo(owner, name):
                path.parent.mkdir(parents=True, exist_ok=True)
                self._git_output(
                    ["init", "--quiet", "--bare", f"--initial-branch={default_branch}", str(path)]
                )
                self._git_output(["config", "http.receivepack", "true"], git_dir=path)
                logger.info("created repository %s/%s", owner, name)
        return path

    def branch_head(self, owner: str, name: str, branch: str | None = None) -> str | None:
        """Return the commit sha of *branch* (default: the branch HEAD names), or None if unborn.

        Raise FileNotFoundError when the repository does not exist.
        """
        repo = self._existing_repo(owner, name)
        ref = f"refs/heads/{branch}" if branch else self._head_ref(repo)
        result = self._git(
            ["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], git_dir=repo, check=False
        )
        return result.stdout.decode().strip() or None

    def show_file(self, owner: str, name: str, path: str, ref: str = "HEAD") -> bytes:
        """Return the committed bytes of *path* at *ref* (for an LFS file: its pointer)."""
        return self._git(["show", f"{ref}:{path}"], git_dir=self._existing_repo(owner, name)).stdout

    def commit_server_side(
        self,
        owner: str,
        name: str,
        files: Mapping[str, bytes | None],
        *,
        branch: str | None = None,
        message: str = "Commit made on the server",
    ) -> str:
        """Commit *files* ({path: bytes, or None to delete}) on *branch* directly in the bare repo and
        return the new commit's sha, so that a client's next push is a non-fast-forward.

        Uses plumbing with a private index; the ref moves with a compare-and-swap.
        """
        repo = self._existing_repo(owner, name)
        ref = f"refs/heads/{branch}" if branch else self._head_ref(repo)
        parent = self._git(
            ["rev-parse", "--verify", "--quiet", ref], git_dir=repo, check=False
        ).stdout.strip()
        index = self.tmp_dir / f"index-{threading.get_ident()}-{time.monotonic_ns()}"
        extra = {"GIT_INDEX_FILE": str(index)}
        try:
            if parent:
                self._git(["read-tree", parent.decode()], git_dir=repo, env=extra)
            entries = []  # update-index --index-info lines; mode 0 removes a path, even in a bare repo
            for path, data in files.items():
                if not path or any(c in path for c in "\t\n\0") or path.startswith("/"):
                    raise ValueError(f"unsupported path {path!r}")
                if data is None:
                    entries.append(f"0 {'0' * 40}\t{path}\n")
                else:
                    blob = self._git(
                        ["hash-object", "-w", "--stdin"], git_dir=repo, stdin=data
                    ).stdout.strip()
                    entries.append(f"100644 {blob.decode()}\t{path}\n")
            self._git(
                ["update-index", "--index-info"], git_dir=repo, env=extra, stdin="".join(entries).encode()
            )
            tree = self._git(["write-tree"], git_dir=repo, env=extra).stdout.decode().strip()
            parents = ["-p", parent.decode()] if parent else []
            commit = (
                self._git(["commit-tree", tree, *parents, "-m", message], git_dir=repo)
                .stdout.decode()
                .strip()
            )
            self._git(["update-ref", ref, commit, parent.decode() if parent else "0" * 40], git_dir=repo)
        finally:
            index.unlink(missing_ok=True)
        logger.info("server-side commit %s on %s/%s %s", commit[:12], owner, name, ref)
        return commit

    # -- LFS objects -------------------------------------------------------------------------------

    def objects(self, owner: str, name: str) -> dict[str, Path]:
        """Return {oid: path} of the LFS objects stored for *owner*/*name*."""
        return self.store.objects(owner, name)

    def read_object(self, owner: str, name: str, oid: str) -> bytes:
        """Return the bytes of stored object *oid*. Raise FileNotFoundError when it is not stored."""
        return self.store.path(owner, name, oid).read_bytes()

    def store_object(self, owner: str, name: str, data: bytes) -> str:
        """Store *data* as an LFS object of *owner*/*name* without a client, and return its oid."""
        return self.store.put_bytes(owner, name, data)

    def incoming(self, owner: str, name: str) -> list[Path]:
        """Return temporary files of unfinished uploads (empty once the server is idle)."""
        return self.store.incoming(owner, name)

    # -- fault injection and accounting ------------------------------------------------------------

    def fail_next(
        self,
        endpoint: Endpoint,
        status: int,
        *,
        count: int = 1,
        message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next *count* authorized requests to *endpoint* with *status* and *message*
        (e.g. 500, 429 with *retry_after*, 507 "quota exceeded") instead of serving them.

        *endpoint* is ``git`` (any git http-backend request), ``batch``, ``upload`` (PUT),
        ``download`` (GET) or ``verify``; or ModelScope's HTTP API: ``ms_batch`` (the pre-check),
        ``ms_upload`` (a blob PUT) or ``ms_commit``, answered with its envelope.
        """
        if endpoint not in _ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        failure = InjectedFailure(status, message or f"injected failure {status}", retry_after)
        with self._lock:
            self._failures[endpoint].extend([failure] * count)

    def clear_failures(self) -> None:
        """Forget failures queued by fail_next() that have not fired."""
        with self._lock:
            for queue in self._failures.values():
                queue.clear()

    def counters(self) -> GitLfsCounters:
        """Return a snapshot of the counters."""
        with self._lock:
            tally = self._tally
            return GitLfsCounters(
                git_requests=tally.git_requests,
                batch_requests=tally.batch_requests,
                puts=tally.puts,
                puts_stored=tally.puts_stored,
                put_bytes=tally.put_bytes,
                put_bytes_by_oid=dict(tally.put_bytes_by_oid),
                downloads=tally.downloads,
                verifies=tally.verifies,
            )

    def batches(self) -> list[BatchRecord]:
        """Return every authenticated batch request so far, oldest first."""
        with self._lock:
            return list(self._tally.batches)

    def reset_counters(self) -> None:
        """Zero the counters and clear the batch list and the request logs."""
        with self._lock:
            self._tally = _Tally()
        self.modelscope.reset()
        self.request_log.clear()
        self.storage_log.clear()

    # -- used by the request handler ---------------------------------------------------------------

    def credentials_ok(self, username: str, password: str) -> bool:
        """Return whether Basic *username*:*password* is the configured ``oauth2:<token>``."""
        return hmac.compare_digest(username.encode(), self.username.encode()) & hmac.compare_digest(
            password.encode(), self.token.encode()
        )

    def take_put_corruption(self) -> bool:
        """Return True (using up one of ``corrupt_puts``) if the PUT being received must be damaged."""
        with self._lock:
            if self.corrupt_puts <= 0:
                return False
            self.corrupt_puts -= 1
            return True

    def take_failure(self, endpoint: Endpoint) -> InjectedFailure | None:
        """Pop the next injected failure for *endpoint*, if one is queued."""
        with self._lock:
            queue = self._failures[endpoint]
            return queue.popleft() if queue else None

    def request_started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def request_finished(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def count(self, what: Literal["git", "batch", "put", "stored", "download", "verify"]) -> None:
        """Add one to the counter *what*."""
        with self._lock:
            tally = self._tally
            if what == "git":
                tally.git_requests += 1
            elif what == "batch":
                tally.batch_requests += 1
            elif what == "put":
                tally.puts += 1
            elif what == "stored":
                tally.puts_stored += 1
            elif what == "download":
                tally.downloads += 1
            else:
                tally.verifies += 1

    def count_put_bytes(self, oid: str, amount: int) -> None:
        with self._lock:
            self._tally.put_bytes += amount
            self._tally.put_bytes_by_oid[oid] += amount

    def record_batch(
        self, owner: str, name: str, operation: str, oids: tuple[str, ...], ref: str | None
    ) -> None:
        with self._lock:
            self._tally.batch_requests += 1
            self._tally.batches.append(BatchRecord(owner, name, operation, oids, ref))

    def git_env(self) -> dict[str, str]:
        """Return the environment for the server's own git processes, isolated from the user's."""
        return {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(self._home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "LC_ALL": "C",
            "GIT_AUTHOR_NAME": "relayd sandbox",
            "GIT_AUTHOR_EMAIL": "sandbox@relayd.invalid",
            "GIT_COMMITTER_NAME": "relayd sandbox",
            "GIT_COMMITTER_EMAIL": "sandbox@relayd.invalid",
        }

    # -- internals ---------------------------------------------------------------------------------

    def _head_ref(self, repo: Path) -> str:
        return self._git(["symbolic-ref", "HEAD"], git_dir=repo).stdout.decode().strip()

    def _git(
        self,
        args: list[str],
        *,
        git_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        full_env = self.git_env()
        if git_dir is not None:
            full_env["GIT_DIR"] = str(git_dir)
        full_env.update(env or {})
        result = subprocess.run(
            [self.git, *args], input=stdin, capture_output=True, env=full_env, cwd=self.root, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"git {args[0]} failed ({result.returncode}): {result.stderr.decode().strip()}"
            )
        return result

    def _git_output(self, args: list[str], *, git_dir: Path | None = None) -> str:
        return self._git(args, git_dir=git_dir).stdout.decode()
