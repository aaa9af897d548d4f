"""A fake Hugging Face Hub on 127.0.0.1, with its CDN on a second origin, for relayd's tests and demo.

It answers as the real Hub does (docs/real-services.md names the sources): repo info, the paginated
tree, refs, commits, paths-info and auth-check; ``/resolve`` answering 307 to the resolve-cache for
regular files and 302 to a CloudFront-signed, expiring URL on the CDN origin (the Xet bridge) for LFS
files; strict Range rules; the Hub's error table with ``X-Error-Code``; the rate limits, counted per
caller and announced on every answer (``relayd_sandbox.hub_limits``). Blobs stay on disk and are sent
with ``os.sendfile`` when nothing slows or breaks them, so a multi-GB file is served at loopback speed.
Failures are injected per test through ``FakeHub.faults`` and a few persistent settings.

``FakeHub`` holds the state and the knobs; the Hub's own origin answers in ``hub_api``, the CDN (and its
URL signing) in ``hub_cdn``, what both origins share in ``hub_http``; repos, commits and blobs are
``hub_store``, faults ``hub_faults``, rate limits ``hub_limits``, and a realistic model ``hub_models``.

Typical use::

    with FakeHub(tmp_path / "hub") as hub:
        hub.add_token("hf_alice", user="alice")
        make_model_repo(hub, "alice/tiny", shards=2, shard_size=8 << 20)
        HfApi(endpoint=hub.endpoint, token="hf_alice").model_info("alice/tiny")
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from relayd_sandbox._http import RequestLog
from relayd_sandbox.hub_api import HubHandler
from relayd_sandbox.hub_cdn import BRIDGE, CdnHandler, CloudFrontSigner
from relayd_sandbox.hub_faults import FaultKind, FaultRule, Faults
from relayd_sandbox.hub_http import OriginServer, parse_range
from relayd_sandbox.hub_limits import Plan, RateLimiter
from relayd_sandbox.hub_models import make_model_repo
from relayd_sandbox.hub_store import (
    DEFAULT_LFS_SUFFIXES,
    DEFAULT_LFS_THRESHOLD,
    BlobStore,
    Commit,
    FileEntry,
    Gated,
    Generated,
    Repo,
    RepoType,
    apply_changes,
    git_blob_sha1,
    git_commit_sha,
    git_trees,
    lfs_pointer,
    validate_repo_path,
    write_generated_file,
)

__all__ = [
    "Commit",
    "FakeHub",
    "FaultKind",
    "FaultRule",
    "Faults",
    "FileEntry",
    "Generated",
    "Repo",
    "make_model_repo",
    "parse_range",
    "write_generated_file",
]

logger = logging.getLogger(__name__)

Content = bytes | str | Path | Generated


class FakeHub:
    """A fake Hub origin and a fake CDN origin on two loopback ports, sharing one repo store.

    Given a storage directory (blobs are kept there, content-addressed), serve the repos created with
    create_repo() and commit(). Settings a test may change at any time: ``url_ttl`` (seconds a signed
    CDN URL lives), ``bandwidth_cap`` (bytes/s per connection for file bodies, None = unlimited),
    ``advertise_xet`` (send Xet headers and ``xetHash``), ``xet_only`` (sha256s the CDN refuses with
    400), ``suppressed_headers`` (names never sent, for header ablation),
    ``cdn_reject_authorization`` (the CDN answers 400 when ``Authorization`` arrives), ``tree_hook``
    (rewrites each page of tree entries before it is sent, to serve hostile or broken listings),
    ``rate_limits`` (quotas per plan and bucket, the window) and ``anonymous_repo_not_found_code``
    (also send ``X-Error-Code: RepoNotFound`` with the anonymous 401 for a missing or private repo).
    With *cdn_tls* (a server context, ``relayd_sandbox.tls.ThrowawayCA.server_context``) the CDN
    origin speaks HTTPS, as the real one does; the Hub's origin stays plain HTTP.
    """

    def __init__(
        self,
        storage: Path | str,
        *,
        port: int = 0,
        cdn_port: int = 0,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        lfs_suffixes: Iterable[str] = DEFAULT_LFS_SUFFIXES,
        tree_page_size: int = 1000,
        tree_expand_page_size: int = 50,
        commits_page_size: int = 50,
        url_ttl: float = 3600.0,
        regular_redirect: bool = True,
        clock: Callable[[], float] = time.time,
        cdn_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.store = BlobStore(Path(storage))
        self.faults = Faults()
        self.hub_log = RequestLog()
        self.cdn_log = RequestLog()
        self.lfs_threshold = lfs_threshold
        self.lfs_suffixes = tuple(suffix.lower() for suffix in lfs_suffixes)
        self.tree_page_size = tree_page_size
        self.tree_expand_page_size = tree_expand_page_size
        self.commits_page_size = commits_page_size
        self.url_ttl = url_ttl
        self.regular_redirect = regular_redirect
        self.bandwidth_cap: float | None = None
        self.advertise_xet = False
        self.xet_only: set[str] = set()
        self.suppressed_headers: set[str] = set()
        self.cdn_reject_authorization = False
        self.tree_hook: Callable[[str, str, list[dict[str, Any]]], list[dict[str, Any]]] | None = None
        self.rate_limits = RateLimiter(clock)
        self.cdn_signer = CloudFrontSigner(clock)
        self.anonymous_repo_not_found_code = False
        self._clock = clock
        self._lock = threading.RLock()
        self._repos: dict[tuple[RepoType, str], Repo] = {}
        self._tokens: dict[str, tuple[str, Plan]] = {}
        self._served: dict[str, int] = defaultdict(int)
        self._next_date = datetime(2024, 1, 1, tzinfo=UTC)
        self._hub = OriginServer(self, HubHandler, self.hub_log, port)
        self._cdn = OriginServer(self, CdnHandler, self.cdn_log, cdn_port, cdn_tls)

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """Base URL of the Hub origin, for ``HfApi(endpoint=…)`` or ``HF_ENDPOINT``."""
        return self._hub.base_url

    @property
    def cdn_url(self) -> str:
        """Base URL of the CDN origin (a different port, hence a different origin)."""
        return self._cdn.base_url

    def start(self) -> FakeHub:
        self._hub.start()
        self._cdn.start()
        logger.info("fake hub on %s, CDN on %s", self.endpoint, self.cdn_url)
        return self

    def stop(self) -> None:
        """Stop both servers, release stalled requests and drop open keep-alive connections."""
        self.faults.clear()
        for server in (self._hub, self._cdn):
            server.stop()
            server.drop_connections()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- tokens and access --------------------------------------------------------------------------

    def add_token(self, token: str, user: str = "user", plan: Plan = "free") -> None:
        """Accept *token* as ``user``'s, an account on *plan* (its rate-limit quotas); a user may read
        every repo of its own namespace."""
        with self._lock:
            self._tokens[token] = (user, plan)

    def revoke_token(self, token: str) -> None:
        """Make *token* invalid (401 "Invalid credentials in Authorization header")."""
        with self._lock:
            self._tokens.pop(token, None)

    def grant(self, repo_id: str, token: str, *, repo_type: RepoType = "model") -> None:
        """Let *token* read the private repo *repo_id*."""
        with self._lock:
            self._repo(repo_id, repo_type).readers.add(token)

    def approve(self, repo_id: str, token: str, *, repo_type: RepoType = "model") -> None:
        """Approve *token*'s access request to the gated repo *repo_id*."""
        with self._lock:
            self._repo(repo_id, repo_type).approved.add(token)

    # -- repos and commits --------------------------------------------------------------------------

    def create_repo(
        self,
        repo_id: str,
        *,
        repo_type: RepoType = "model",
        private: bool = False,
        gated: Gated = False,
        disabled: bool = False,
        files: Mapping[str, Content] | None = None,
        message: str = "Upload files",
    ) -> str:
        """Create *repo_id* with the Hub's "initial commit" (a ``.gitattributes``), then commit
        *files* on ``main`` if given; return the head sha."""
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise ValueError(f"{repo_type} {repo_id} already exists")
            self._repos[(repo_type, repo_id)] = Repo(
                repo_id, repo_type, private=private, gated=gated, disabled=disabled
            )
        head = self.commit(
            repo_id,
            {".gitattributes": self.gitattributes()},
            repo_type=repo_type,
            message="initial commit",
            author="system",
        )
        if files:
            head = self.commit(repo_id, files, repo_type=repo_type, message=message)
        return head

    def update_repo(
        self,
        repo_id: str,
        *,
        repo_type: RepoType = "model",
        private: bool | None = None,
        gated: Gated | None = None,
        disabled: bool | None = None,
    ) -> None:
        """Change the visibility, gate or disabled flag of an existing repo."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            if private is not None:
                repo.private = private
            if gated is not None:
                repo.gated = gated
            if disabled is not None:
                repo.disabled = disabled

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, Content] | None = None,
        *,
        delete: Iterable[str] = (),
        branch: str = "main",
        repo_type: RepoType = "model",
        message: str = "Upload files",
        description: str = "",
        author: str = "relayd-test",
        date: datetime | None = None,
        allow_unsafe_paths: bool = False,
    ) -> str:
        """Commit *files* (bytes, text, a file to copy, or Generated content) and the removal of
        *delete* (paths or folders) on top of *branch*, and return the new commit's sha.

        A missing branch starts from ``main``; ``refs/pr/N`` makes or moves a pull request ref.
        Paths are checked unless *allow_unsafe_paths* (to test how relayd treats hostile listings).
        """
        added: dict[str, FileEntry] = {}
        for path, content in (files or {}).items():
            if not allow_unsafe_paths:
                validate_repo_path(path)
            blob = self.store.add(content)
            lfs = self._is_lfs(path, blob.size)
            blob_id = (
                git_blob_sha1(lfs_pointer(blob.sha256, blob.size)) if lfs else self.store.git_blob_id(blob)
            )
            added[path] = FileEntry(path, blob.sha256, blob.size, lfs, blob_id)
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            pull = int(branch.removeprefix("refs/pr/")) if branch.startswith("refs/pr/") else None
            name = branch.removeprefix("refs/heads/")
            parent = repo.pull_requests.get(pull) if pull is not None else repo.branches.get(name)
            parent = parent or repo.branches.get("main")
            tree = apply_changes(repo.commits[parent].files if parent else {}, added, delete)
            trees = git_trees(tree)
            clash = set(tree) & set(trees)
            if clash:
                raise ValueError(f"paths are both files and folders: {sorted(clash)}")
            if date is None:
                date = self._next_date
                self._next_date += timedelta(minutes=1)
            sha = git_commit_sha(
                tree=trees[""], parent=parent, author=author, date=date, title=message, message=description
            )
            repo.commits[sha] = Commit(sha, parent, message, description, author, date, tree, trees)
            if pull is not None:
                repo.pull_requests[pull] = sha
            else:
                repo.branches[name] = sha
        logger.info("fake hub: %s %s is now at %s (%s)", repo_id, branch, sha[:12], message)
        return sha

    def rewrite_commit(
        self, repo_id: str, sha: str, files: Mapping[str, Content], *, repo_type: RepoType = "model"
    ) -> None:
        """Make the existing commit *sha* serve *files* (replaced or added) without changing its sha:
        a broken upstream whose tree changes under a pinned commit, for tests that must refuse it."""
        changed: dict[str, FileEntry] = {}
        for path, content in files.items():
            validate_repo_path(path)
            blob = self.store.add(content)
            lfs = self._is_lfs(path, blob.size)
            blob_id = (
                git_blob_sha1(lfs_pointer(blob.sha256, blob.size)) if lfs else self.store.git_blob_id(blob)
            )
            changed[path] = FileEntry(path, blob.sha256, blob.size, lfs, blob_id)
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            commit = repo.commits[sha]
            tree = {**commit.files, **changed}
            repo.commits[sha] = dataclasses.replace(commit, files=tree, trees=git_trees(tree))

    def create_branch(
        self, repo_id: str, branch: str, *, revision: str = "main", repo_type: RepoType = "model"
    ) -> str:
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            repo.branches[branch] = self._resolve(repo, revision)
            return repo.branches[branch]

    def create_tag(
        self, repo_id: str, tag: str, *, revision: str = "main", repo_type: RepoType = "model"
    ) -> str:
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            repo.tags[tag] = self._resolve(repo, revision)
            return repo.tags[tag]

    def delete_ref(self, repo_id: str, name: str, *, repo_type: RepoType = "model") -> None:
        """Delete the branch or tag *name*."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            repo.branches.pop(name, None)
            repo.tags.pop(name, None)

    def head(self, repo_id: str, revision: str = "main", *, repo_type: RepoType = "model") -> str:
        """Return the commit sha *revision* names now."""
        with self._lock:
            return self._resolve(self._repo(repo_id, repo_type), revision)

    def get_commit(self, repo_id: str, revision: str = "main", *, repo_type: RepoType = "model") -> Commit:
        """Return the commit *revision* names now (parent, title, date, files, git tree ids)."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            return repo.commits[self._resolve(repo, revision)]

    def files(
        self, repo_id: str, revision: str = "main", *, repo_type: RepoType = "model"
    ) -> dict[str, FileEntry]:
        """Return the files of *revision*, by path."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            return dict(repo.commits[self._resolve(repo, revision)].files)

    def file(
        self, repo_id: str, path: str, revision: str = "main", *, repo_type: RepoType = "model"
    ) -> FileEntry:
        return self.files(repo_id, revision, repo_type=repo_type)[path]

    def blob_path(self, sha256: str) -> Path:
        """Return where the content *sha256* lives on disk (to compare with what relayd fetched)."""
        return self.store.path_for(sha256)

    def gitattributes(self) -> str:
        """Return a ``.gitattributes`` that sends this hub's LFS suffixes to git-lfs."""
        return "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in self.lfs_suffixes)

    # -- CDN URLs -----------------------------------------------------------------------------------

    def sign_url(
        self,
        sha256: str,
        filename: str = "",
        ttl: float | None = None,
        *,
        repo_key: str = "0" * 24,
        bound_range: str | None = None,
    ) -> str:
        """Return a CDN URL for *sha256* signed as CloudFront signs the Hub's Xet-bridge URLs, valid for
        *ttl* (default ``url_ttl``) seconds, rounded up to whole seconds. *bound_range* binds it to one
        Range. Every call gives a different URL, like the Hub's signed URLs on every HEAD."""
        resource = f"{self.cdn_url}/{BRIDGE}/{repo_key}/{sha256}"
        lifetime = self.url_ttl if ttl is None else ttl
        return self.cdn_signer.sign(resource, filename or sha256, lifetime, bound_range=bound_range)

    def rotate_signing_key(self) -> None:
        """Replace the signing key pair: every CDN URL handed out so far is refused ("Unknown Key")."""
        self.cdn_signer.rotate()

    # -- counters -----------------------------------------------------------------------------------

    def bytes_served(self, sha256: str | None = None) -> int:
        """Return the body bytes handed to the kernel so far for *sha256* (CDN and resolve-cache), or
        for all blobs; a send that fails is not counted."""
        with self._lock:
            return self._served.get(sha256, 0) if sha256 is not None else sum(self._served.values())

    def reset_counters(self) -> None:
        with self._lock:
            self._served.clear()
        self.hub_log.clear()
        self.cdn_log.clear()

    # -- internals used by the handlers ---------------------------------------------------------------

    def _count(self, sha256: str, sent: int) -> None:
        with self._lock:
            self._served[sha256] += sent

    def _is_lfs(self, path: str, size: int) -> bool:
        if path == ".gitattributes":
            return False
        return size > self.lfs_threshold or path.lower().endswith(self.lfs_suffixes)

    def _repo(self, repo_id: str, repo_type: RepoType) -> Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise KeyError(f"no {repo_type} repo {repo_id!r} on the fake hub") from None

    @staticmethod
    def _resolve(repo: Repo, revision: str) -> str:
        sha = repo.resolve(revision)
        if sha is None:
            raise KeyError(f"{repo.repo_id} has no revision {revision!r}")
        return sha

    def _find_repo(self, repo_type: RepoType, parts: list[str]) -> tuple[Repo | None, list[str]]:
        """Split raw path *parts* into a known repo (one or two segments of id) and the rest."""
        with self._lock:
            if len(parts) >= 2:
                repo = self._repos.get((repo_type, f"{unquote(parts[0])}/{unquote(parts[1])}"))
                if repo is not None:
                    return repo, parts[2:]
            if parts:
                repo = self._repos.get((repo_type, unquote(parts[0])))
                if repo is not None:
                    return repo, parts[1:]
        return None, []

    def _user(self, token: str | None) -> str | None:
        with self._lock:
            known = self._tokens.get(token) if token is not None else None
        return known[0] if known is not None else None

    def _caller(self, token: str | None, address: str) -> tuple[str, Plan]:
        """Return who a request is counted for (its token, else its IP address) and the plan's quotas."""
        with self._lock:
            known = self._tokens.get(token) if token is not None else None
        if token is None or known is None:
            return f"ip:{address}", "anonymous"
        return f"token:{token}", known[1]

    def _token_from(self, authorization: str | None) -> tuple[str | None, bool]:
        """Return (bearer token or None when anonymous, whether the token is valid)."""
        if authorization is None:
            return None, True
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        return token, scheme.lower() == "bearer" and self._user(token) is not None

    def _can_read(self, repo: Repo, token: str | None) -> bool:
        if not repo.private:
            return True
        return token is not None and (self._user(token) == repo.namespace or token in repo.readers)

    def _is_approved(self, repo: Repo, token: str | None) -> bool:
        if not repo.gated:
            return True
        return token is not None and (self._user(token) == repo.namespace or token in repo.approved)

    def _xet_advertised(self, sha256: str) -> bool:
        return self.advertise_xet or sha256 in self.xet_only
