"""What is new upstream: resolve each repo's head, and when it moved, list the pinned tree, check it,
filter it with the repo's globs and record the snapshot.

An unchanged head costs one request to the source and no write to the catalogue. A listing that is
hostile or broken (paths escaping the destination, duplicates, absurd sizes) refuses the snapshot with
a clear reason; errors that need a person block the repo's poll with a hint. A transient failure (5xx,
timeout, refused connection, 429) is retried with the engine's backoff (``retry``), never sooner than a
Retry-After, and not only at the repo's next regular poll.
"""

from __future__ import annotations

import abc
import fnmatch
import hashlib
import importlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from relayd.catalogue.schema import POLL_BLOCKED, POLL_OK, POLL_WAITING, Repo
from relayd.catalogue.store import FileSpec, Store, utcnow
from relayd.config import Config, LocalCopyConfig, RetryConfig
from relayd.digest import sha256_file
from relayd.engine import backoff_delay
from relayd.errors import ErrorClass, NeedsPerson, Permanent, RelayError, Retryable
from relayd.names import refuse_git_paths

log = logging.getLogger(__name__)

# Larger than any file a model repo holds today (the Hub's own limits are far lower); anything above
# is treated as a broken listing rather than a reason to preallocate petabytes.
MAX_FILE_SIZE = 2 * 1000**4
MAX_PATH_LENGTH = 1024
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")

# Where each kind of source lives, and the config section it receives.
SOURCES: dict[str, tuple[str, str]] = {
    "hub": ("relayd.hub:HubSource", "hub"),
    "local": ("relayd.poll:LocalDirSource", "local_copy"),
}


class Source(abc.ABC):
    """Where a route's files come from. Raise NeedsPerson, Retryable or Permanent on failure."""

    @abc.abstractmethod
    def head(self, repo: Repo) -> str:
        """Return the 40-hex commit the repo's revision points at now."""

    @abc.abstractmethod
    def list_files(self, repo: Repo, commit: str) -> list[FileSpec]:
        """Return every file of the repo at *commit* (all pages)."""


def load_source(kind: str, config: Config) -> Source:
    """Build the source of *kind* with its config section."""
    target, section_name = SOURCES[kind]
    module_name, _, class_name = target.partition(":")
    source_class = getattr(importlib.import_module(module_name), class_name)
    source: Source = source_class(getattr(config, section_name))
    return source


def unsafe_path_reason(path: object) -> str | None:
    """Return why *path* from upstream must not be written anywhere, or None if it is safe."""
    if not isinstance(path, str):
        return "a path that is not text"
    if not path:
        return "an empty path"
    if "\0" in path:
        return "a NUL byte in the path"
    if "\\" in path:
        return "a backslash in the path"
    if path.startswith("/"):
        return "an absolute path"
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_LENGTH:
        return f"a path longer than {MAX_PATH_LENGTH} bytes"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "a path with '..', '.' or an empty segment"
    if any(ord(ch) < 32 for ch in path):
        return "a control character in the path"
    if parts[0] == ".git":
        return "a path inside .git"
    return None


def check_listing(files: Sequence[FileSpec]) -> None:
    """Raise Permanent naming the first hostile or broken entry of a listing."""
    seen: set[str] = set()
    lowered: set[str] = set()
    for spec in files:
        reason = unsafe_path_reason(spec.path)
        if reason:
            raise Permanent(f"upstream lists {spec.path!r}: {reason}", error_class=ErrorClass.HOSTILE)
        if spec.path in seen:
            raise Permanent(f"upstream lists {spec.path!r} twice", error_class=ErrorClass.HOSTILE)
        seen.add(spec.path)
        lowered.add(spec.path.lower())
        if isinstance(spec.size, bool) or not isinstance(spec.size, int) or spec.size < 0:
            raise Permanent(
                f"upstream gives {spec.path!r} the size {spec.size!r}", error_class=ErrorClass.HOSTILE
            )
        if spec.size > MAX_FILE_SIZE:
            raise Permanent(
                f"upstream gives {spec.path!r} an absurd size of {spec.size} bytes",
                error_class=ErrorClass.HOSTILE,
            )
        if spec.lfs and not (spec.sha256 and _SHA256.match(spec.sha256)):
            raise Permanent(
                f"upstream gives {spec.path!r} no valid sha256 (LFS oid)", error_class=ErrorClass.HOSTILE
            )
        if not spec.lfs and not (spec.git_blob_id and _SHA1.match(spec.git_blob_id)) and not spec.sha256:
            raise Permanent(
                f"upstream gives {spec.path!r} no valid git blob id", error_class=ErrorClass.HOSTILE
            )
    # A file and a folder of the same name cannot both be written.
    for path in seen:
        parent = path.rsplit("/", 1)[0] if "/" in path else None
        while parent:
            if parent in seen:
                raise Permanent(
                    f"upstream lists {parent!r} both as a file and as a folder",
                    error_class=ErrorClass.HOSTILE,
                )
            parent = parent.rsplit("/", 1)[0] if "/" in parent else None


def matches(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Return True if *path* passes the include globs (all when empty) and no exclude glob."""
    if include and not any(fnmatch.fnmatchcase(path, pattern) for pattern in include):
        return False
    return not any(fnmatch.fnmatchcase(path, pattern) for pattern in exclude)


@dataclass(frozen=True)
class PollResult:
    repo: str
    head: str | None
    changed: bool
    snapshot_id: int | None = None
    new_files: int = 0
    error: str | None = None


#: Given a repo and (sha256, size) pairs, return the sha256s its route's last hop holds already.
AskEnd = Callable[[Repo, Sequence[tuple[str, int]]], set[str]]


class Poller:
    """Polls repos through their sources and records what changed."""

    def __init__(
        self,
        store: Store,
        sources: dict[str, Source],
        source_for_route: dict[str, str],
        retry: RetryConfig | None = None,
        ask_end: AskEnd | None = None,
    ) -> None:
        self.store = store
        # Asks a repo's route's last hop which contents its destination holds ("ask the end first").
        self.ask_end = ask_end
        self.sources = sources
        # The source kind of each first hop (e.g. download → hub, local_copy → local).
        self.source_for_route = source_for_route
        # How failed polls are retried (the config's [retry]; its defaults when not given).
        self.retry = retry or RetryConfig(initial=5.0, maximum=3600.0, multiplier=2.0)

    def poll(self, repo: Repo) -> PollResult:
        """Poll one repo; never raise for upstream trouble, record it instead."""
        kind = self.source_for_route.get(repo.route[0]) if repo.route else None
        source = self.sources.get(kind or "")
        if source is None:
            return self._failed(
                repo, Permanent(f"no source can feed a route starting with {repo.route[0]!r}")
            )
        refusal: Permanent | None = None
        listing: list[FileSpec] = []
        try:
            head = source.head(repo)
            if not _COMMIT.match(head):
                raise Permanent(f"the source answered {head!r} as the head, not a 40-hex commit")
            if head == repo.head_commit:
                if repo.poll_state != POLL_OK or repo.next_poll_at is not None:
                    self.store.record_poll_state(repo.id, state=POLL_OK)
                return PollResult(repo.name, head, changed=False)
            try:
                listing = source.list_files(repo, head)
            except Permanent as exc:
                if exc.error_class is not ErrorClass.HOSTILE:
                    raise
                # The source found the listing hostile or inconsistent: refuse the snapshot, so the
                # same head is not listed again.
                refusal = exc
        except (NeedsPerson, Retryable, Permanent) as exc:
            return self._failed(repo, exc)
        try:
            if refusal is not None:
                raise refusal
            check_listing(listing)
            refuse_git_paths(
                repo.name, (s.path for s in listing if matches(s.path, repo.include, repo.exclude))
            )
        except Permanent as exc:
            log.error("%s: refusing snapshot %s: %s", repo.name, head[:12], exc)
            self.store.refuse_snapshot(repo.id, head, str(exc), exc.hint)
            return PollResult(repo.name, head, changed=True, error=str(exc))
        wanted = [spec for spec in listing if matches(spec.path, repo.include, repo.exclude)]
        result = self.store.record_snapshot(repo.id, head, wanted, held=self._held(repo, wanted))
        if result.created:
            log.info(
                "%s: new snapshot %s: %d files (%d new, %d unchanged, %d removed)",
                repo.name,
                head[:12],
                len(wanted),
                result.new_files,
                result.linked_files,
                result.removed_files,
            )
        return PollResult(
            repo.name, head, changed=True, snapshot_id=result.snapshot_id, new_files=result.new_files
        )

    def _held(self, repo: Repo, wanted: list[FileSpec]) -> set[str]:
        """Return the sha256s of *wanted*'s LFS files that the route's end already holds (asked before
        anything moves); none when the repo keeps every copy or the end cannot be asked."""
        contents = sorted({(s.sha256, s.size) for s in wanted if s.lfs and s.sha256})
        if self.ask_end is None or not contents or len(repo.route) < 2:
            return set()
        try:
            held = self.ask_end(repo, contents)
        except RelayError as exc:
            log.warning(
                "%s: could not ask %s what it holds; moving every file: %s", repo.name, repo.route[-1], exc
            )
            return set()
        if held:
            size = sum(n for oid, n in contents if oid in held)
            log.info(
                "%s: %s holds %d of %d LFS files (%d bytes) already",
                repo.name,
                repo.route[-1],
                len(held),
                len(contents),
                size,
            )
        return held

    def _failed(self, repo: Repo, exc: NeedsPerson | Retryable | Permanent) -> PollResult:
        if isinstance(exc, Retryable):
            # Retried with the same backoff as a transfer, counted over this streak of failed polls.
            attempts = repo.poll_attempts + 1
            delay = backoff_delay(attempts, self.retry, exc.retry_after)
            log.warning(
                "%s: poll failed (attempt %d), retrying in %.0fs: %s", repo.name, attempts, delay, exc
            )
            self.store.record_poll_state(
                repo.id,
                state=POLL_WAITING,
                error=str(exc),
                error_class=exc.error_class,
                next_poll_at=utcnow() + timedelta(seconds=delay),
            )
        else:
            log.error("%s: poll blocked: %s (%s)", repo.name, exc, exc.hint)
            if (POLL_BLOCKED, str(exc), exc.hint) != (repo.poll_state, repo.poll_error, repo.poll_hint):
                self.store.record_poll_state(
                    repo.id, state=POLL_BLOCKED, error=str(exc), error_class=exc.error_class, hint=exc.hint
                )
        return PollResult(repo.name, None, changed=False, error=str(exc))


class LocalDirSource(Source):
    """Files of ``<source>/<owner>/<name>/`` on this machine, for the local_copy route and the demo.

    The head is a digest of the listing (paths, sizes, modification times), so a changed file is a new
    snapshot; sha256 is computed for each file that changed since the last listing.
    """

    def __init__(self, section: LocalCopyConfig) -> None:
        self.root = section.source
        self._cache: dict[tuple[str, int, int, int], str] = {}
        self._listings: dict[str, list[FileSpec]] = {}

    def _repo_dir(self, repo: Repo) -> Path:
        return self.root / repo.name

    def _scan(self, repo: Repo) -> list[tuple[str, os.stat_result]]:
        base = self._repo_dir(repo)
        if not base.is_dir():
            raise NeedsPerson(
                f"{base} does not exist",
                hint=f"create {base} with the files to relay",
                error_class=ErrorClass.NOT_FOUND,
            )
        entries = []
        for directory, dirs, files in os.walk(base):
            dirs.sort()
            for name in sorted(files):
                full = Path(directory) / name
                if full.is_symlink():
                    continue
                entries.append((full.relative_to(base).as_posix(), full.stat()))
        return entries

    def head(self, repo: Repo) -> str:
        digest = hashlib.sha1(usedforsecurity=False)
        for path, info in self._scan(repo):
            digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def list_files(self, repo: Repo, commit: str) -> list[FileSpec]:
        if commit != self.head(repo):
            raise Retryable("the directory changed while it was being listed", error_class=ErrorClass.CHANGED)
        specs = []
        for path, info in self._scan(repo):
            key = (f"{repo.name}/{path}", info.st_size, info.st_mtime_ns, info.st_ino)
            sha256 = self._cache.get(key)
            if sha256 is None:
                sha256 = sha256_file(self._repo_dir(repo) / path)
                self._cache[key] = sha256
            specs.append(FileSpec(path=path, size=info.st_size, lfs=True, sha256=sha256))
        return specs


def describe(result: PollResult) -> dict[str, Any]:
    """Return a PollResult as plain data (for logs and `--once` summaries)."""
    return {
        "repo": result.repo,
        "head": result.head,
        "changed": result.changed,
        "new_files": result.new_files,
        "error": result.error,
    }
