"""A fake Hugging Face Hub on 127.0.0.1, with its CDN on a second origin, for relayd's tests and demo.

It answers as the real Hub does (docs/real-services.md names the sources): repo info, the paginated
tree, refs, commits, paths-info and auth-check; ``/resolve`` answering 307 to the resolve-cache for
regular files and 302 to a CloudFront-signed, expiring URL on the CDN origin (the Xet bridge) for LFS
files; strict Range rules; the Hub's error table with ``X-Error-Code``; the rate limits, counted per
caller and announced on every answer (``relayd_sandbox.hub_limits``). Blobs stay on disk and are sent
with ``os.sendfile`` when nothing slows or breaks them, so a multi-GB file is served at loopback speed.
Failures are injected per test through ``FakeHub.faults`` and a few persistent settings.

Typical use::

    with FakeHub(tmp_path / "hub") as hub:
        hub.add_token("hf_alice", user="alice")
        make_model_repo(hub, "alice/tiny", shards=2, shard_size=8 << 20)
        HfApi(endpoint=hub.endpoint, token="hf_alice").model_info("alice/tiny")
"""

from __future__ import annotations

import abc
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import os
import re
import socket
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from relayd_sandbox._http import LoggedRequest, LoopbackServer, RequestLog
from relayd_sandbox.hub_faults import FaultKind, FaultRule, Faults, Refusal, Where
from relayd_sandbox.hub_limits import Bucket, Count, Plan, RateLimiter
from relayd_sandbox.hub_store import (
    DEFAULT_LFS_SUFFIXES,
    DEFAULT_LFS_THRESHOLD,
    Blob,
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

_TYPES: dict[str, RepoType] = {"models": "model", "datasets": "dataset", "spaces": "space"}
_SENDFILE_CHUNK = 16 * 1024 * 1024
_SLOW_CHUNK = 256 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_NOT_FOUND_PAGE = "Sorry, we can't find the page you are looking for."
_BRIDGE = "xet-bridge-us"
# What the Hub adds to every anonymous answer (topic; message), logged once by huggingface_hub.
_UNAUTHENTICATED = (
    "unauthenticated; Warning: You are sending unauthenticated requests to the HF Hub. "
    "Please set a HF_TOKEN to enable higher rate limits and faster downloads."
)
# CloudFront's refusals of a signed URL (its own XML, text/xml): AWS knowledge center,
# "troubleshoot signed URL or signed cookies".
_CLOUDFRONT_REFUSALS: dict[str, tuple[str, str]] = {
    "expired": ("AccessDenied", "Access denied"),
    "missing-key": ("MissingKey", "Missing Key-Pair-Id query parameter or cookie value"),
    "unknown-key": ("InvalidKey", "Unknown Key"),
}


def parse_range(value: str, total: int) -> tuple[int, int] | None:
    """Return the inclusive (first, last) byte span a single ``Range`` asks of *total* bytes, or None
    when it is malformed or unsatisfiable (the caller answers 416).

    Accepts ``bytes=a-b`` (b clamped to the end), ``bytes=a-`` and ``bytes=-n``; a list of ranges
    is refused, as relayd never needs one.
    """
    match = _RANGE.fullmatch(value.strip())
    if match is None or total <= 0:
        return None
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0:
            return None
        return max(0, total - int(last)), total - 1
    start = int(first)
    end = int(last) if last else total - 1
    if end < start or start >= total:
        return None
    return start, min(end, total - 1)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _xet_hash(sha256: str) -> str:
    return hashlib.sha256(b"xet:" + bytes.fromhex(sha256)).hexdigest()


def _object_id(repo: Repo) -> str:
    """Return the repo's 24-hex object id (``_id`` in its info, a segment of its Xet-bridge URLs)."""
    return hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24]


def _flag(values: list[str] | None) -> bool:
    return values is not None and len(values) > 0 and values[-1].lower() in ("1", "true", "yes")


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
        self.anonymous_repo_not_found_code = False
        self._clock = clock
        self._lock = threading.RLock()
        self._repos: dict[tuple[RepoType, str], Repo] = {}
        self._tokens: dict[str, tuple[str, Plan]] = {}
        self._served: dict[str, int] = defaultdict(int)
        self._sign_key = os.urandom(32)
        self._key_pair_id = _key_pair_id()
        self._last_expires = 0
        self._bound_ranges: dict[str, str] = {}
        self._next_date = datetime(2024, 1, 1, tzinfo=UTC)
        self._hub = _Server(self, _HubHandler, self.hub_log, port)
        self._cdn = _Server(self, _CdnHandler, self.cdn_log, cdn_port)

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
        """Return a CDN URL for *sha256* signed as CloudFront signs the Hub's Xet-bridge URLs (a custom
        policy: ``Expires``, ``Policy``, ``Signature``, ``Key-Pair-Id``), valid for *ttl* (default
        ``url_ttl``) seconds, rounded up to whole seconds. *bound_range* binds it to one Range.

        Every call gives a different URL, like the Hub's signed URLs on every HEAD: a URL signed within
        the same second as the last one expires a second later instead.
        """
        with self._lock:
            expires = max(
                math.ceil(self._clock() + (self.url_ttl if ttl is None else ttl)), self._last_expires + 1
            )
            self._last_expires = expires
            key, key_pair_id = self._sign_key, self._key_pair_id
        resource = f"{self.cdn_url}/{_BRIDGE}/{repo_key}/{sha256}"
        statement = {"Resource": f"{resource}*", "Condition": {"DateLessThan": {"AWS:EpochTime": expires}}}
        policy = json.dumps({"Statement": [statement]}, separators=(",", ":")).encode()
        signature = _cloudfront_b64(hmac.new(key, policy, hashlib.sha256).digest())
        name = filename or sha256
        query = {
            "X-Xet-Cas-Uid": "public",
            "response-content-disposition": f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";",
            "Expires": str(expires),
            "Policy": _cloudfront_b64(policy),
            "Signature": signature,
            "Key-Pair-Id": key_pair_id,
        }
        if bound_range is not None:
            with self._lock:
                self._bound_ranges[signature] = bound_range
        return f"{resource}?{urlencode(query)}"

    def rotate_signing_key(self) -> None:
        """Replace the signing key pair: every CDN URL handed out so far is refused ("Unknown Key")."""
        with self._lock:
            self._sign_key = os.urandom(32)
            self._key_pair_id = _key_pair_id()

    def check_url(self, path: str, query: Mapping[str, str]) -> Literal["ok", Refusal]:
        """Tell whether a CDN request for *path* with *query* is signed for it and unexpired, or how
        CloudFront refuses it."""
        with self._lock:
            key, key_pair_id = self._sign_key, self._key_pair_id
        given = query.get("Key-Pair-Id", "")
        if not given:
            return "missing-key"
        if given != key_pair_id:
            return "unknown-key"
        try:
            policy = _cloudfront_unb64(query.get("Policy", ""))
            expected = _cloudfront_b64(hmac.new(key, policy, hashlib.sha256).digest())
            statement = json.loads(policy)["Statement"][0]
            resource = str(statement["Resource"])
            expires = int(statement["Condition"]["DateLessThan"]["AWS:EpochTime"])
        except (ValueError, KeyError, TypeError, IndexError):
            return "expired"  # CloudFront answers a policy it cannot use with the same AccessDenied
        url = f"{self.cdn_url}{path}"
        covered = url.startswith(resource[:-1]) if resource.endswith("*") else url == resource
        signed = hmac.compare_digest(query.get("Signature", "").encode(), expected.encode())
        if not (signed and covered) or self._clock() >= expires:
            return "expired"
        return "ok"

    def bind_range(self, signature: str, requested: str) -> bool:
        """Bind the signed URL *signature* to *requested* (a Range value, "" for none) unless it is
        bound already; return whether *requested* is the range it is bound to."""
        with self._lock:
            return self._bound_ranges.setdefault(signature, requested) == requested

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


def _key_pair_id() -> str:
    """Return a CloudFront-like public key id (``K`` and 13 base32 characters)."""
    return "K" + base64.b32encode(os.urandom(10)).decode()[:13]


def _cloudfront_b64(data: bytes) -> str:
    """Base64 as CloudFront puts it in a URL: ``+``, ``=`` and ``/`` become ``-``, ``_`` and ``~``."""
    return base64.b64encode(data).decode().translate(str.maketrans("+=/", "-_~"))


def _cloudfront_unb64(text: str) -> bytes:
    return base64.b64decode(text.translate(str.maketrans("-_~", "+=/")).encode(), validate=True)


def _bucket_of(parts: list[str]) -> Bucket:
    """Return the rate-limit bucket a Hub path counts in: ``api``, ``resolvers`` (a ``/resolve/``
    segment, or the resolve-cache those redirect to) or ``pages`` (everything else: web pages)."""
    if parts[:2] == ["api", "resolve-cache"]:
        return "resolvers"
    if parts[:1] == ["api"]:
        return "api"
    return "resolvers" if "resolve" in parts[1:4] else "pages"


class _Server(LoopbackServer):
    """A LoopbackServer that knows its FakeHub and its open connections (to drop them on stop)."""

    def __init__(
        self, hub: FakeHub, handler_class: type[BaseHTTPRequestHandler], log: RequestLog, port: int
    ) -> None:
        super().__init__(handler_class, port)
        self.hub = hub
        self.log = log
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler, abc.ABC):
    """What both origins share: HTTP/1.1 keep-alive, the request log, faults and serving blobs."""

    protocol_version = "HTTP/1.1"

    _status = 0
    _logged = False
    _target = ""
    _query: dict[str, list[str]]
    _body = b""
    _sent: set[str]

    @property
    def hub(self) -> FakeHub:
        return self._server.hub

    @property
    def _server(self) -> _Server:
        server = self.server
        if not isinstance(server, _Server):
            raise TypeError("fake hub handlers run only under the fake hub's servers")
        return server

    def setup(self) -> None:
        super().setup()
        self._sent = set()  # also for answers the base class sends before _handle (send_error)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        message = format % args
        logger.debug("%s: %s", self.address_string(), message)

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_GET
    do_POST = do_GET
    do_PUT = do_GET
    do_DELETE = do_GET

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def end_headers(self) -> None:
        self._record()  # before the client can see the response, so tests never race the log
        super().end_headers()

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() in {name.lower() for name in self.hub.suppressed_headers}:
            return
        self._sent.add(keyword.lower())
        super().send_header(keyword, value)

    @abc.abstractmethod
    def _route(self, path: str) -> None:
        """Answer the request for the (still percent-encoded) *path*."""

    @abc.abstractmethod
    def _throttled(self, rule: FaultRule) -> None:
        """Answer 429 as this origin does, for an injected RATE_LIMIT fault."""

    def _handle(self) -> None:
        self._status = 0
        self._logged = False
        self._sent = set()
        length = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        self._query = parse_qs(split.query, keep_blank_values=True)
        self._target = unquote(self.path)
        try:
            self._route(split.path)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            logger.debug("client left during %s %s: %s", self.command, self.path, exc)
            self.close_connection = True
        except Exception:
            logger.exception("fake hub failed on %s %s", self.command, self.path)
            if self._status == 0:
                self._reply(500, b'{"error": "fake hub internal error"}')
            else:
                self.close_connection = True
        finally:
            self._record()

    def _record(self) -> None:
        """Add this request to its origin's log, once (status 0 if it got no status line)."""
        if not self._logged:
            self._logged = True
            entry = LoggedRequest(self.command, self.path, dict(self.headers.items()), self._status)
            self._server.log.add(entry)

    # -- replies ------------------------------------------------------------------------------------

    def _reply(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json; charset=utf-8",
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _reset_connection(self) -> None:
        """Drop the connection with a TCP RST, as a crashing proxy or a flaky link would."""
        self._record()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.wfile.close()
            self.connection.close()

    def _early_faults(self, where: Where) -> bool:
        """Apply the faults that replace a whole response; return True if one did."""
        faults = self.hub.faults
        if faults.take(FaultKind.RESET, where, self._target, accept=lambda rule: rule.after is None):
            self._reset_connection()
            return True
        limited = faults.take(FaultKind.RATE_LIMIT, where, self._target)
        if limited is not None:
            self._throttled(limited)
            return True
        failed = faults.take(FaultKind.SERVER_ERROR, where, self._target)
        if failed is not None:
            self._reply(
                failed.status,
                json.dumps({"error": "Internal Error - We're working hard to fix this"}).encode(),
            )
            return True
        return False

    def _serve_content(self, where: Where, blob: Blob, headers: Mapping[str, str]) -> None:
        """Answer with *blob*'s bytes under the strict Range rules, then any body fault."""
        faults = self.hub.faults
        total = blob.size
        requested = self.headers.get("Range")
        if requested is not None and faults.take(FaultKind.STALE_RANGE, where, self._target):
            self._reply_416(total, headers)
            return
        if requested is not None and faults.take(FaultKind.IGNORE_RANGE, where, self._target):
            requested = None
        if requested is not None:
            span = parse_range(requested, total)
            if span is None:
                self._reply_416(total, headers)
                return
            start, end = span
        else:
            start, end = 0, total - 1
        length = end - start + 1
        self.send_response(206 if requested is not None else 200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        if requested is not None:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return
        self._send_body(where, blob, start, length)

    def _reply_416(self, total: int, headers: Mapping[str, str]) -> None:
        self._reply(
            416,
            b"Requested Range Not Satisfiable",
            {**headers, "Content-Range": f"bytes */{total}"},
            content_type="text/plain; charset=utf-8",
        )

    def _send_body(self, where: Where, blob: Blob, start: int, length: int) -> None:
        faults = self.hub.faults
        target = self._target
        stop = start + length
        cut = faults.take(FaultKind.TRUNCATE, where, target)
        reset = faults.take(FaultKind.RESET, where, target, accept=lambda rule: rule.after is not None)
        flip = faults.take(
            FaultKind.FLIP, where, target, accept=lambda rule: rule.at is None or start <= rule.at < stop
        )
        stall = faults.take(FaultKind.STALL, where, target)
        limit = length
        for rule in (cut, reset):
            if rule is not None and rule.after is not None:
                limit = min(limit, rule.after)
        with blob.path.open("rb") as source:
            if (
                cut is None
                and reset is None
                and flip is None
                and stall is None
                and self.hub.bandwidth_cap is None
            ):
                self._sendfile(source, blob.sha256, start, length)
                return
            flip_at = None if flip is None else (flip.at if flip.at is not None else start)
            self._send_slowly(
                source=source, sha256=blob.sha256, start=start, limit=limit, flip_at=flip_at, stall=stall
            )
        if reset is not None and (cut is None or (reset.after or 0) <= (cut.after or 0)):
            self._reset_connection()
        elif limit < length:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_WR)

    def _sendfile(self, source: BinaryIO, sha256: str, offset: int, length: int) -> None:
        out = self.connection.fileno()
        while length > 0:
            chunk = min(length, _SENDFILE_CHUNK)
            self.hub._count(sha256, chunk)  # counted before the client can have it; undone below
            try:
                sent = os.sendfile(out, source.fileno(), offset, chunk)
            except OSError:
                self.hub._count(sha256, -chunk)
                raise
            self.hub._count(sha256, sent - chunk)
            if sent == 0:
                raise ConnectionError(f"blob {sha256} is shorter than announced")
            offset += sent
            length -= sent

    def _send_slowly(
        self,
        *,
        source: BinaryIO,
        sha256: str,
        start: int,
        limit: int,
        flip_at: int | None,
        stall: FaultRule | None,
    ) -> None:
        """Send *limit* bytes from *start*, chunk by chunk: paced to the bandwidth cap read before
        every chunk, one byte inverted at *flip_at*, and a stall after ``stall.after`` bytes."""
        if stall is not None and (stall.after or 0) > limit:
            stall = None  # this body ends before the stall point
        position = 0
        paced_since, paced_bytes, paced_cap = time.monotonic(), 0, self.hub.bandwidth_cap
        while position < limit or (stall is not None and position == limit):
            if stall is not None and position >= (stall.after or 0):
                stall.wait_released()
                stall = None
                paced_since, paced_bytes = time.monotonic(), 0
                continue
            cap = self.hub.bandwidth_cap
            if cap != paced_cap:
                paced_since, paced_bytes, paced_cap = time.monotonic(), 0, cap
            size = min(_SLOW_CHUNK, limit - position)
            if cap:
                size = min(size, max(4096, int(cap / 20)))
            if stall is not None:
                size = min(size, (stall.after or 0) - position)
            data = os.pread(source.fileno(), size, start + position)
            if not data:
                raise ConnectionError(f"blob {sha256} is shorter than announced")
            if flip_at is not None and start + position <= flip_at < start + position + len(data):
                changed = bytearray(data)
                changed[flip_at - start - position] ^= 0xFF
                data = bytes(changed)
            self.hub._count(sha256, len(data))
            try:
                self.wfile.write(data)
            except OSError:
                self.hub._count(sha256, -len(data))
                raise
            position += len(data)
            if cap:
                paced_bytes += len(data)
                ahead = paced_bytes / cap - (time.monotonic() - paced_since)
                if ahead > 0:
                    time.sleep(ahead)


class _HubHandler(_Handler):
    """The Hub origin: ``/api/…``, ``/[datasets/|spaces/]{id}/resolve/{rev}/{path}`` and the repo pages.

    Every request is counted in its rate-limit bucket first, and every answer carries what is left of
    that bucket (and, when anonymous, the Hub's warning); past the quota the answer is a 429.
    """

    _bucket: Bucket = "api"
    _anonymous = True
    _limit: Count | None = None

    def _route(self, path: str) -> None:
        parts = path.split("/")[1:]
        hub = self.hub
        self._bucket = _bucket_of(parts)
        token, valid = hub._token_from(self.headers.get("Authorization"))
        self._anonymous = token is None
        caller, plan = hub._caller(token if valid else None, self.client_address[0])
        self._limit = hub.rate_limits.count(caller, plan, self._bucket)
        if not self._limit.allowed:
            self._throttle(self._limit)
            return
        if self._early_faults("api" if self._bucket == "api" else "resolve"):
            return
        if not valid:
            self._error(401, None, _INVALID_CREDENTIALS)
            return
        if parts[:2] == ["api", "resolve-cache"] and len(parts) > 2 and parts[2] in _TYPES:
            self._resolve_cache(_TYPES[parts[2]], parts[3:], token)
        elif parts[:2] == ["api", "whoami-v2"]:
            self._whoami(token)
        elif parts[:1] == ["api"] and len(parts) > 2 and parts[1] in _TYPES:
            self._api(_TYPES[parts[1]], parts[2:], token)
        elif parts[:1] == ["api"]:
            self._error(404, None, _NOT_FOUND_PAGE)
        else:
            prefixed = parts[0] in ("datasets", "spaces")
            repo_type = _TYPES[parts[0]] if prefixed else "model"
            rest = parts[1:] if prefixed else parts
            if self._bucket == "resolvers":
                self._resolve(repo_type, rest, token)
            else:
                self._page(repo_type, rest, token)

    def end_headers(self) -> None:
        if self._limit is not None and "ratelimit" not in self._sent:
            for name, value in self._limit.headers().items():
                self.send_header(name, value)
        if self._anonymous:
            self.send_header("X-HF-Warning", _UNAUTHENTICATED)
        super().end_headers()

    def _throttle(self, count: Count) -> None:
        """Answer 429 as the Hub does when a caller's bucket is used up for this window."""
        if self._anonymous:
            message = (
                f"We had to rate limit your IP ({self.client_address[0]}). To continue using our service, "
                "create a HF account or login to your existing account, and make sure you pass a HF_TOKEN "
                "if you're using the API."
            )
        else:
            message = (
                f"We had to rate limit you, you hit the quota of {count.quota} {count.bucket} requests per "
                "5 minutes period. Upgrade to a PRO user or Team/Enterprise organization account "
                "(https://hf.co/pricing) to get higher limits. See https://huggingface.co/docs/hub/rate-limits"
            )
        self._error(429, None, message, {**count.headers(), "Retry-After": str(count.reset_in)})

    def _throttled(self, rule: FaultRule) -> None:
        self._throttle(Count(self._bucket, False, 0, rule.reset_in, rule.quota, rule.window))

    # -- replies ------------------------------------------------------------------------------------

    def _json(self, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        self._reply(200, json.dumps(payload).encode(), headers)

    def _error(
        self,
        status: int,
        code: str | None,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        as_json: bool = False,
    ) -> None:
        """Answer like the Hub: ``X-Error-Code`` (when the Hub has one), ``X-Error-Message``, and the
        message as the body: JSON ``{"error": …}`` from the API (and wherever *as_json*), plain text
        from the resolvers, a page for the pages; a 401 also names its scheme (``WWW-Authenticate``)."""
        extra = {**(headers or {}), "X-Error-Message": message}
        if code is not None:
            extra["X-Error-Code"] = code
        if status == 401:
            extra["WWW-Authenticate"] = 'Bearer realm="Authentication required", charset="UTF-8"'
        if self._bucket == "resolvers" and not as_json:
            self._reply(status, message.encode(), extra, "text/plain; charset=utf-8")
        elif self._bucket == "pages":
            page = f"<!DOCTYPE html><html><body><h1>{status}</h1><p>{message}</p></body></html>"
            self._reply(status, page.encode(), extra, "text/html; charset=utf-8")
        else:
            self._reply(status, json.dumps({"error": message}).encode(), extra)

    def _allowed(self, repo: Repo | None, token: str | None, *, content: bool) -> Repo | None:
        """Return *repo* if *token* may see it (and its files, when *content*); else send the error
        the Hub sends and return None. A private repo is never confirmed to exist."""
        hub = self.hub
        if repo is None or not hub._can_read(repo, token):
            if token is not None:
                self._error(404, "RepoNotFound", "Repository not found")
            else:  # the code is left out as the Hub leaves it out (a knob sends it)
                code = "RepoNotFound" if hub.anonymous_repo_not_found_code else None
                self._error(401, code, "Invalid username or password.")
            return None
        if repo.disabled:
            self._error(403, None, "Access to this resource is disabled.")
            return None
        if content and not hub._is_approved(repo, token):
            kind = f"{repo.repo_type} {repo.repo_id}"
            if token is None:
                message = (
                    f"Access to {kind} is restricted. You must have access to it and be authenticated "
                    "to access it. Please log in."
                )
                self._error(401, "GatedRepo", message)
            else:
                message = (
                    f"Access to {kind} is restricted and you are not in the authorized list. "
                    f"Visit {hub.endpoint}/{repo.repo_id} to ask for access."
                )
                self._error(403, "GatedRepo", message)
            return None
        return repo

    def _commit_at(self, repo: Repo, raw_revision: str) -> Commit | None:
        revision = unquote(raw_revision)
        with self.hub._lock:
            sha = repo.resolve(revision)
            commit = repo.commits[sha] if sha is not None else None
        if commit is None:  # JSON even from the resolvers, as captured from the Hub
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", as_json=True)
        return commit

    # -- /api/{type}s/{id}/… ------------------------------------------------------------------------

    def _api(self, repo_type: RepoType, parts: list[str], token: str | None) -> None:
        found, rest = self.hub._find_repo(repo_type, parts)
        auth_check = rest[:1] == ["auth-check"]
        repo = self._allowed(found, token, content=auth_check)
        if repo is None:
            return
        if not rest or (rest[0] == "revision" and len(rest) == 2):
            commit = self._commit_at(repo, rest[1] if rest else "main")
            if commit is not None:
                self._json(self._info(repo, commit, blobs=_flag(self._query.get("blobs"))))
        elif rest[0] == "tree" and len(rest) >= 2:
            commit = self._commit_at(repo, rest[1])
            if commit is not None:
                self._tree(repo, commit, "/".join(unquote(part) for part in rest[2:]).strip("/"))
        elif rest == ["refs"]:
            self._refs(repo)
        elif rest[0] == "commits" and len(rest) == 2:
            commit = self._commit_at(repo, rest[1])
            if commit is not None:
                self._commits(repo, commit)
        elif rest[0] == "paths-info" and len(rest) == 2 and self.command == "POST":
            commit = self._commit_at(repo, rest[1])
            if commit is not None:
                self._paths_info(repo, commit)
        elif auth_check:
            self._json({})
        elif rest[0] == "xet-read-token":
            self._error(501, None, "Xet is not available on this fake hub")
        else:
            self._error(404, None, "Sorry, we can't find the page you are looking for.")

    def _info(self, repo: Repo, commit: Commit, *, blobs: bool) -> dict[str, Any]:
        siblings = []
        for path in sorted(commit.files):
            entry = commit.files[path]
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(blobId=entry.blob_id, size=entry.size)
                if entry.lfs:
                    sibling["lfs"] = {
                        "sha256": entry.sha256,
                        "size": entry.size,
                        "pointerSize": entry.pointer_size,
                    }
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": _object_id(repo),
            "id": repo.repo_id,
            "author": repo.namespace or None,
            "sha": commit.sha,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "gated": repo.gated,
            "disabled": repo.disabled,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        if repo.repo_type == "model":
            info.update(modelId=repo.repo_id, downloads=0)
        elif repo.repo_type == "dataset":
            info.update(downloads=0)
        else:
            info.update(sdk="static")
        if blobs:
            info["usedStorage"] = sum(entry.size for entry in commit.files.values())
        return info

    def _entry(self, repo: Repo, commit: Commit, path: str, *, expand: bool) -> dict[str, Any]:
        """Return the tree entry of *path* (file or folder) at *commit*, as the tree API shows it."""
        entry = commit.files.get(path)
        item: dict[str, Any]
        if entry is None:
            item = {"type": "directory", "oid": commit.trees[path], "size": 0, "path": path}
        else:
            item = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": path}
            if entry.lfs:
                item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
                if self.hub._xet_advertised(entry.sha256):
                    item["xetHash"] = _xet_hash(entry.sha256)
        if expand:
            with self.hub._lock:
                last = repo.last_commit_touching(commit.sha, path)
            item["lastCommit"] = {"id": last.sha, "title": last.title, "date": _iso(last.date)}
            if entry is not None:
                item["securityFileStatus"] = {
                    "status": "safe",
                    "avScan": {"virusFound": False, "virusNames": None},
                    "pickleImportScan": None,
                }
        return item

    def _tree(self, repo: Repo, commit: Commit, folder: str) -> None:
        if folder and folder not in commit.trees:
            self._error(404, "EntryNotFound", f'{folder} does not exist on "{commit.sha}"')
            return
        recursive = _flag(self._query.get("recursive"))
        expand = _flag(self._query.get("expand"))
        prefix = f"{folder}/" if folder else ""
        paths = sorted(
            path
            for path in [*commit.files, *commit.folders()]
            if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])
        )
        first = 0
        cursor = self._query.get("cursor")
        if cursor:
            try:
                after = json.loads(base64.urlsafe_b64decode(cursor[-1].encode()))["file_name"]
            except (ValueError, KeyError, TypeError, binascii.Error):
                self._error(400, None, "Invalid cursor")
                return
            first = next((index for index, path in enumerate(paths) if path > after), len(paths))
        size = self.hub.tree_expand_page_size if expand else self.hub.tree_page_size
        page = paths[first : first + size]
        headers = {}
        if first + size < len(paths):
            token = base64.urlsafe_b64encode(json.dumps({"file_name": page[-1]}).encode()).decode()
            headers["Link"] = f'<{self._next_url({"cursor": token})}>; rel="next"'
        entries = [self._entry(repo, commit, path, expand=expand) for path in page]
        hook = self.hub.tree_hook
        if hook is not None:
            entries = hook(repo.repo_id, commit.sha, entries)
        self._json(entries, headers)

    def _next_url(self, changes: Mapping[str, str]) -> str:
        """Return the absolute URL of this request with *changes* to its query (the client follows
        ``Link`` verbatim, so it must be absolute)."""
        query = {name: values[-1] for name, values in self._query.items()}
        query.update(changes)
        return f"{self.hub.endpoint}{urlsplit(self.path).path}?{urlencode(query)}"

    def _refs(self, repo: Repo) -> None:
        with self.hub._lock:
            branches = sorted(repo.branches.items())
            tags = sorted(repo.tags.items())
            pulls = sorted(repo.pull_requests.items())
        refs: dict[str, Any] = {
            "branches": [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha} for name, sha in branches
            ],
            "converts": [],
            "tags": [{"name": name, "ref": f"refs/tags/{name}", "targetCommit": sha} for name, sha in tags],
        }
        if _flag(self._query.get("include_prs")):
            refs["pullRequests"] = [
                {"name": f"refs/pr/{number}", "ref": f"refs/pr/{number}", "targetCommit": sha}
                for number, sha in pulls
            ]
        self._json(refs)

    def _commits(self, repo: Repo, commit: Commit) -> None:
        with self.hub._lock:
            history = repo.history(commit.sha)
        try:
            page_number = int(self._query.get("p", ["0"])[-1])
        except ValueError:
            self._error(400, None, "Invalid page number")
            return
        size = self.hub.commits_page_size
        page = history[page_number * size : (page_number + 1) * size]
        headers = {"X-Total-Count": str(len(history))}
        if (page_number + 1) * size < len(history):
            headers["Link"] = f'<{self._next_url({"p": str(page_number + 1)})}>; rel="next"'
        items = [
            {
                "id": item.sha,
                "title": item.title,
                "message": item.message,
                "date": _iso(item.date),
                "authors": [{"user": item.author, "avatar": None}],
            }
            for item in page
        ]
        self._json(items, headers)

    def _paths_info(self, repo: Repo, commit: Commit) -> None:
        form = parse_qs(self._body.decode(errors="replace"), keep_blank_values=True)
        expand = _flag(form.get("expand"))
        seen: list[str] = []
        for raw in form.get("paths", []):
            path = raw.strip("/")
            if path not in seen and (path in commit.files or path in commit.trees) and path:
                seen.append(path)
        self._json([self._entry(repo, commit, path, expand=expand) for path in seen])

    def _whoami(self, token: str | None) -> None:
        user = self.hub._user(token)
        if user is None:
            self._error(401, None, "Invalid username or password.")
            return
        self._json(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "read"}},
            }
        )

    # -- /resolve and the resolve-cache -------------------------------------------------------------

    def _resolve(self, repo_type: RepoType, parts: list[str], token: str | None) -> None:
        found, rest = self.hub._find_repo(repo_type, parts)
        repo = self._allowed(found, token, content=True)
        if repo is None:
            return
        if len(rest) < 3 or rest[0] != "resolve":
            self._error(404, None, _NOT_FOUND_PAGE)
            return
        commit = self._commit_at(repo, rest[1])
        if commit is None:
            return
        path = "/".join(unquote(part) for part in rest[2:])
        entry = commit.files.get(path)
        headers = {"X-Repo-Commit": commit.sha}
        if entry is None:
            self._error(404, "EntryNotFound", "Entry not found", headers)
            return
        if not entry.lfs:
            headers["ETag"] = f'"{entry.blob_id}"'
            if not self.hub.regular_redirect:
                self._serve_file(entry, headers)
                return
            # The Hub names the path asked for as a query key, then the etag.
            asked = quote(urlsplit(self.path).path, safe="")
            location = (
                f"/api/resolve-cache/{repo_type}s/{repo.repo_id}/{commit.sha}/{quote(path)}"
                f"?{asked}=&etag=%22{entry.blob_id}%22"
            )
            headers["Location"] = location
            body = f"Temporary Redirect. Redirecting to {location}".encode()
            self._reply(307, body, headers, content_type="text/plain; charset=utf-8")
            return
        requested = self.headers.get("Range")
        bound = requested is not None and self.hub.faults.take(FaultKind.RANGE_BOUND, "resolve", self._target)
        location = self.hub.sign_url(
            entry.sha256,
            path.rsplit("/", 1)[-1],
            repo_key=_object_id(repo),
            bound_range=requested if bound else None,
        )
        headers.update(
            {
                "Location": location,
                "ETag": f'"{entry.sha256}"',
                "X-Linked-Etag": f'"{entry.sha256}"',
                "X-Linked-Size": str(entry.size),
                "Accept-Ranges": "bytes",
            }
        )
        if self.hub._xet_advertised(entry.sha256):
            xet_hash = _xet_hash(entry.sha256)
            headers["X-Xet-Hash"] = xet_hash
            token_url = f"{self.hub.endpoint}/api/{repo_type}s/{repo.repo_id}/xet-read-token/{commit.sha}"
            # The CDN origin stands in for cas-server.xethub.hf.co, another origin relayd never asks.
            reconstruction = f"{self.hub.cdn_url}/v1/reconstructions/{xet_hash}"
            headers["Link"] = (
                f'<{token_url}>; rel="xet-auth", <{reconstruction}>; rel="xet-reconstruction-info"'
            )
        self._reply(302, f"Found. Redirecting to {location}".encode(), headers, "text/plain; charset=utf-8")

    def _resolve_cache(self, repo_type: RepoType, parts: list[str], token: str | None) -> None:
        found, rest = self.hub._find_repo(repo_type, parts)
        repo = self._allowed(found, token, content=True)
        if repo is None:
            return
        if len(rest) < 2:
            self._error(404, None, _NOT_FOUND_PAGE)
            return
        commit = self._commit_at(repo, rest[0])
        if commit is None:
            return
        path = "/".join(unquote(part) for part in rest[1:])
        entry = commit.files.get(path)
        headers = {"X-Repo-Commit": commit.sha}
        if entry is None:
            self._error(404, "EntryNotFound", "Entry not found", headers)
            return
        headers["ETag"] = f'"{entry.sha256 if entry.lfs else entry.blob_id}"'
        self._serve_file(entry, headers)

    def _serve_file(self, entry: FileEntry, headers: Mapping[str, str]) -> None:
        blob = self.hub.store.get(entry.sha256)
        if blob is None:
            self._error(500, None, f"blob {entry.sha256} is missing from the fake hub's storage")
            return
        self._serve_content("resolve", blob, headers)

    # -- pages --------------------------------------------------------------------------------------

    def _page(self, repo_type: RepoType, parts: list[str], token: str | None) -> None:
        """A repo's web page (counted in the ``pages`` bucket), or the Hub's 404 page."""
        found, rest = self.hub._find_repo(repo_type, parts)
        if found is None or rest or not self.hub._can_read(found, token):
            self._error(404, None, _NOT_FOUND_PAGE)
            return
        page = f"<!DOCTYPE html><html><head><title>{found.repo_id}</title></head><body></body></html>"
        self._reply(200, page.encode(), content_type="text/html; charset=utf-8")


class _CdnHandler(_Handler):
    """The CDN origin, as the Hub's Xet bridge behind CloudFront answers it:
    ``/xet-bridge-us/{repo object id}/{sha256}?X-Xet-Cas-Uid=…&response-content-disposition=…&Expires=…
    &Policy=…&Signature=…&Key-Pair-Id=…``. CloudFront checks the signature first and refuses with its
    own XML (text/xml); what passes reaches the storage origin, whose errors are S3's
    (application/xml). No request is counted against the Hub's rate limits."""

    def _route(self, path: str) -> None:
        if self._early_faults("cdn"):
            return
        hub = self.hub
        query = {name: values[-1] for name, values in self._query.items()}
        verdict = hub.check_url(path, query)
        refused = hub.faults.take(FaultKind.EXPIRE, "cdn", self._target)
        if verdict != "ok" or refused is not None:
            self._cloudfront_refusal(refused.reason if refused is not None else verdict)
            return
        if hub.cdn_reject_authorization and self.headers.get("Authorization") is not None:
            self._origin_error(400, "InvalidArgument", "Only one auth mechanism allowed")
            return
        requested = self.headers.get("Range")
        if hub.faults.take(FaultKind.RANGE_BOUND, "cdn", self._target) and not hub.bind_range(
            query.get("Signature", ""), requested or ""
        ):
            self._reply(
                403, b"Auth failed: invalid range", {"X-Cache": "Error from cloudfront"}, "text/plain"
            )
            return
        parts = path.split("/")[1:]
        blob = hub.store.get(parts[2]) if len(parts) == 3 and parts[0] == _BRIDGE else None
        if blob is None:
            self._origin_error(404, "NoSuchKey", "The specified key does not exist.")
            return
        if blob.sha256 in hub.xet_only:
            # Reports give only the status (huggingface_hub#4330, xet-core#592); the body is a guess.
            self._reply(400, b"Bad Request", {"X-Cache": "Error from cloudfront"}, "text/plain")
            return
        headers = {
            "ETag": f'"{_xet_hash(blob.sha256)}"',
            "Content-Disposition": query.get("response-content-disposition") or "inline",
            "X-Cache": "Miss from cloudfront",
            "Via": "1.1 fake.cloudfront.net (CloudFront)",
        }
        self._serve_content("cdn", blob, headers)

    def _throttled(self, rule: FaultRule) -> None:
        self._reply(429, b"Too Many Requests", {"Retry-After": str(rule.reset_in)}, "text/plain")

    def _cloudfront_refusal(self, reason: str) -> None:
        code, message = _CLOUDFRONT_REFUSALS[reason]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        )
        headers = {"Server": "CloudFront", "X-Cache": "Error from cloudfront"}
        self._reply(403, body.encode(), headers, content_type="text/xml")

    def _origin_error(self, status: int, code: str, message: str) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        ).encode()
        self._reply(status, body, {"X-Cache": "Error from cloudfront"}, content_type="application/xml")


def _safetensors_header(name: str, size: int) -> bytes:
    """Return the prefix of a valid safetensors file of *size* bytes holding one U8 tensor *name*."""
    header = b""
    for _ in range(3):
        count = size - 8 - len(header)
        text = json.dumps(
            {
                "__metadata__": {"format": "pt"},
                name: {"dtype": "U8", "shape": [count], "data_offsets": [0, count]},
            },
            separators=(",", ":"),
        ).encode()
        header = text + b" " * (-len(text) % 8)
    return struct.pack("<Q", len(header)) + header


def _tokenizer_json(size: int) -> bytes:
    """Return a valid tokenizer.json-like document of exactly *size* bytes (or its minimum)."""
    vocab: dict[str, int] = {}
    head = b'{"version":"1.0","model":{"type":"BPE","vocab":'
    length = len(head) + 4
    while length < size - 32:
        token = f"tok{len(vocab)}"
        length += len(token) + len(str(len(vocab))) + 4
        vocab[token] = len(vocab)
    body = head + json.dumps(vocab, separators=(",", ":")).encode() + b"}}"
    return body[:-1] + b" " * max(0, size - len(body)) + b"}"


def make_model_repo(
    hub: FakeHub,
    repo_id: str,
    *,
    shards: int = 2,
    shard_size: int = 4 * 1024 * 1024,
    tokenizer_size: int = 64 * 1024,
    seed: int = 0,
    repo_type: RepoType = "model",
    private: bool = False,
    gated: Gated = False,
) -> str:
    """Create a realistic small model repo on *hub* and return its head sha.

    It holds ``model-0000i-of-0000N.safetensors`` shards of *shard_size* bytes (valid safetensors
    files of generated content, LFS), their index, ``config.json``, ``generation_config.json``,
    ``tokenizer.json`` (LFS once over the hub's threshold), ``README.md`` and ``.gitattributes``.
    """
    files: dict[str, Content] = {}
    weight_map: dict[str, str] = {}
    for index in range(1, shards + 1):
        name = f"model-{index:05d}-of-{shards:05d}.safetensors"
        tensor = f"model.layers.{index - 1}.weight"
        prefix = _safetensors_header(tensor, shard_size) if shard_size >= 256 else b""
        files[name] = Generated(shard_size, seed=seed * 1000 + index, prefix=prefix)
        weight_map[tensor] = name
    index_doc = {"metadata": {"total_size": shards * shard_size}, "weight_map": weight_map}
    files["model.safetensors.index.json"] = json.dumps(index_doc, indent=2)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": shards,
        "torch_dtype": "bfloat16",
        "vocab_size": 32000,
    }
    files["config.json"] = json.dumps(config, indent=2) + "\n"
    files["generation_config.json"] = json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2) + "\n"
    files["tokenizer.json"] = _tokenizer_json(tokenizer_size)
    files["README.md"] = (
        f"---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n\n# {repo_id}\n\nA test model.\n"
    )
    return hub.create_repo(
        repo_id, repo_type=repo_type, private=private, gated=gated, files=files, message="Add model"
    )
