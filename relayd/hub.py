"""The Hugging Face Hub as relayd sees it: head commits, pinned listings, per-file metadata, and the
Hub's errors translated into what should happen next (wait, retry, or ask a person).

huggingface_hub describes files; it never moves their bytes (reference/hf-hub.md §5: no resume across
process death, size-only checks). The endpoint and the token are always passed explicitly, so neither an
``HF_ENDPOINT`` nor a token cached in ``~/.cache/huggingface`` is picked up by accident.

Head check: one ``HEAD /{repo}/resolve/{revision}/.gitattributes`` without following redirects, read from
``X-Repo-Commit``. It is the cheapest request the Hub answers with the commit a revision names (the
resolver quota is far larger than the API quota), it carries no file list (``model_info`` lists every
file), and it fails with the gate error when the token may not read the files. A repo without a
``.gitattributes`` falls back to ``repo_info(revision=…).sha``.

Rate limits: every answer of the Hub (through huggingface_hub's shared HTTP client, whose response hook
relayd adds, or relayd's own ranged GETs) says what is left of its bucket; ``relayd.hub_limits`` keeps
it, and each call first spends from it, so a nearly used-up bucket defers the call until the window
resets instead of running into a 429.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

# Read once by huggingface_hub at import: relayd moves bytes itself over plain HTTP Range, and a
# daemon has no terminal for progress bars.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

import httpx2
from huggingface_hub import HfApi, get_hf_file_metadata, get_session, hf_hub_url, hf_raise_for_status
from huggingface_hub.errors import (
    DisabledRepoError,
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils._http import parse_ratelimit_headers  # public in huggingface_hub.utils

from relayd import __version__
from relayd.catalogue.schema import Repo
from relayd.catalogue.store import FileSpec
from relayd.config import HubConfig
from relayd.errors import ConfigError, ErrorClass, HopError, NeedsPerson, Permanent, Retryable
from relayd.http_ranges import origin_of, retry_after_seconds
from relayd.hub_limits import BucketState, RateBudget, budget_for
from relayd.hub_session import route_hub_session
from relayd.poll import Source
from relayd.units import format_duration

log = logging.getLogger(__name__)
# huggingface_hub's HTTP client logs every request at INFO; keep its warnings only, unless configured.
if logging.getLogger("httpx2").level == logging.NOTSET:
    logging.getLogger("httpx2").setLevel(logging.WARNING)

REPO_TYPES = ("model", "dataset")
HEAD_PROBE = ".gitattributes"
# Listings remembered per (type, repo, commit) to notice a tree that changes under a pinned commit.
_LISTINGS_KEPT = 512
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_PROXY_REFUSED = re.compile(r"\b407\b")  # httpx's ProxyError for a CONNECT answered 407
# A 401 on these (other than for invalid credentials) means "missing, or private": the Hub does not say
# which and sends no X-Error-Code when anonymous. huggingface_hub maps it only for https:// URLs.
_REPO_URL = re.compile(r"^https?://[^/]+/(api/(models|datasets|spaces)/.|.+/resolve/)")
_HOOK_LOCK = threading.Lock()
_ANONYMOUS_WARNED: set[str] = set()


def note_rate_limits(url: str, authorization: str | None, headers: Mapping[str, str]) -> None:
    """Keep what an answer to *url* says of its rate-limit bucket, if it says anything."""
    info = parse_ratelimit_headers(headers)
    if info is not None:
        budget_for(url, authorization).observe(
            info.resource_type, info.remaining, info.reset_in_seconds, info.limit, info.window_seconds
        )


def _note_answer(response: httpx2.Response) -> None:
    """huggingface_hub's response hook: note the rate limits of every answer, redirects included."""
    note_rate_limits(
        str(response.request.url), response.request.headers.get("authorization"), response.headers
    )


def watched_session() -> httpx2.Client:
    """Return huggingface_hub's shared HTTP client, noting the rate limits of every answer it gets (the
    hook is added to whatever client huggingface_hub's client factory built)."""
    session = get_session()
    with _HOOK_LOCK:
        hooks = session.event_hooks["response"]
        if _note_answer not in hooks:
            hooks.append(_note_answer)
    return session


@dataclass(frozen=True)
class FileMetadata:
    """What the Hub says about one file at a pinned commit: where to fetch it now (a signed location
    that expires), the commit it resolved at, its etag (sha256 for LFS, git blob id otherwise), its size,
    and whether the Hub advertises it through Xet."""

    location: str
    commit: str | None
    etag: str | None
    size: int | None
    xet: bool


def repo_page(endpoint: str, repo_id: str, repo_type: str) -> str:
    """Return the web page of a repo (where a person accepts a gated repo's licence)."""
    prefix = {"dataset": "datasets/", "space": "spaces/"}.get(repo_type, "")
    return f"{endpoint}/{prefix}{repo_id}"


class HubClient:
    """One Hub endpoint and the token relayd was configured with (resolved when used, never logged)."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.endpoint = config.endpoint.rstrip("/")
        self.origin = origin_of(self.endpoint)
        route_hub_session(config.proxy, config.ca_bundle)

    # -- credentials -------------------------------------------------------------------------------

    def token(self) -> str | None:
        """Return the configured token, or None to go anonymous (never an implicit one). Raise
        NeedsPerson when the configured file or credential cannot be read."""
        try:
            return self.config.token.resolve()
        except ConfigError as exc:
            raise NeedsPerson(
                f"the Hub token cannot be read: {exc}",
                hint="fix hub.token_file or hub.token_credential (or the service's credentials)",
                error_class=ErrorClass.CONFIG,
            ) from exc

    def authorization_for(self, url: str) -> dict[str, str]:
        """Return the Authorization header for *url*: only when it is on the Hub endpoint's origin."""
        token = self.token()
        if token and origin_of(url) == self.origin:
            return {"Authorization": f"Bearer {token}"}
        return {}

    def _api(self) -> HfApi:
        watched_session()
        return HfApi(endpoint=self.endpoint, token=self.token() or False)

    # -- rate limits -------------------------------------------------------------------------------

    def budget(self) -> RateBudget:
        """Return what the Hub last said is left of this caller's rate limits."""
        token = self.token()
        return budget_for(self.endpoint, f"Bearer {token}" if token else None)

    def spend(self, bucket: str, calls: int = 1) -> None:
        """Count *calls* about to be made in *bucket*; raise Retryable to defer them when the bucket is
        nearly used up."""
        self.budget().spend(bucket, calls)

    def spend_for(self, url: str) -> None:
        """Count a request relayd's own client is about to send to *url*: one resolver call when it is
        on the Hub (the resolve-cache of a regular file), nothing for the CDN."""
        if origin_of(url) == self.origin:
            self.spend("resolvers")

    def note_answer(self, url: str, headers: Mapping[str, str]) -> None:
        """Note the rate limits of an answer relayd's own client got from *url* (on this Hub only)."""
        if origin_of(url) == self.origin:
            token = self.token()
            note_rate_limits(url, f"Bearer {token}" if token else None, headers)

    def rate_limits(self) -> list[BucketState]:
        """Return what is left of each rate-limit bucket in its current window, as last announced."""
        return self.budget().state()

    def warn_if_anonymous(self) -> None:
        """Log once per endpoint (so once per process) that relayd polls without a token."""
        if self.token():
            return
        with _HOOK_LOCK:
            if self.endpoint in _ANONYMOUS_WARNED:
                return
            _ANONYMOUS_WARNED.add(self.endpoint)
        log.warning(
            "polling %s without a token: the Hub gives anonymous callers its smallest rate limits "
            "(500 API and 3,000 file-resolve calls per 5 minutes, shared by everyone behind this IP "
            "address) and relayd slows down to stay inside them; set hub.token_env, hub.token_file or "
            "hub.token for an account's larger ones",
            self.endpoint,
        )

    # -- calls -------------------------------------------------------------------------------------

    def head_commit(self, repo_id: str, repo_type: str, revision: str) -> str:
        """Return the commit *revision* names now, with one request. Raise a relayd HopError."""
        url = hf_hub_url(repo_id, HEAD_PROBE, repo_type=repo_type, revision=revision, endpoint=self.endpoint)
        headers = {"User-Agent": f"relayd/{__version__}", **self.authorization_for(url)}
        self.spend("resolvers")
        try:
            response = watched_session().head(
                url, headers=headers, follow_redirects=False, timeout=self.config.timeout
            )
            hf_raise_for_status(response)
            commit = response.headers.get("X-Repo-Commit")
            if commit:
                return commit.strip().lower()
            raise FileMetadataError("no X-Repo-Commit header")
        except RemoteEntryNotFoundError:
            log.debug("%s has no %s at %s; asking repo_info", repo_id, HEAD_PROBE, revision)
        except Exception as exc:
            raise self.translate(exc, repo_id=repo_id, repo_type=repo_type, revision=revision) from exc
        self.spend("api")
        try:
            info = self._api().repo_info(
                repo_id, repo_type=repo_type, revision=revision, timeout=self.config.timeout
            )
        except Exception as exc:
            raise self.translate(exc, repo_id=repo_id, repo_type=repo_type, revision=revision) from exc
        if not info.sha:
            raise Permanent(
                f"{self.endpoint} named no commit for {repo_id}@{revision}", error_class=ErrorClass.UPSTREAM
            )
        return info.sha.lower()

    def list_tree(self, repo_id: str, repo_type: str, commit: str) -> list[FileSpec]:
        """Return every file of the repo at the 40-hex *commit* (all pages). Raise a relayd HopError."""
        self.spend("api")
        try:
            entries = list(
                self._api().list_repo_tree(repo_id, recursive=True, revision=commit, repo_type=repo_type)
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, HfHubHTTPError):
                raise self.translate(exc, repo_id=repo_id, repo_type=repo_type, revision=commit) from exc
            raise Permanent(
                f"the tree listing of {repo_id}@{commit[:12]} is malformed ({type(exc).__name__}: {exc})",
                error_class=ErrorClass.HOSTILE,
            ) from exc
        except Exception as exc:
            raise self.translate(exc, repo_id=repo_id, repo_type=repo_type, revision=commit) from exc
        return [spec for spec in (file_spec(entry) for entry in entries) if spec is not None]

    def file_metadata(
        self, repo_id: str, repo_type: str, commit: str, path: str, *, calls: int = 1
    ) -> FileMetadata:
        """Return the metadata of *path* at *commit*, including a fresh signed location. *calls* is what
        it costs in resolver calls: 2 for a regular file (its ``/resolve`` redirects to the resolve-cache)."""
        url = hf_hub_url(repo_id, path, repo_type=repo_type, revision=commit, endpoint=self.endpoint)
        self.spend("resolvers", calls)
        watched_session()
        try:
            meta = get_hf_file_metadata(
                url,
                token=self.token() or False,
                timeout=self.config.timeout,
                endpoint=self.endpoint,
                retry_on_errors=False,
            )
        except Exception as exc:
            raise self.translate(
                exc, repo_id=repo_id, repo_type=repo_type, revision=commit, path=path
            ) from exc
        return FileMetadata(
            location=urljoin(url, meta.location),
            commit=meta.commit_hash.lower() if meta.commit_hash else None,
            etag=meta.etag,
            size=meta.size,
            xet=meta.xet_file_data is not None,
        )

    def whoami(self) -> str:
        """Return the name of the account the token belongs to. Raise a relayd HopError."""
        self.spend("api")
        try:
            info = self._api().whoami()
        except Exception as exc:
            raise self.translate(exc, repo_id="the token check", repo_type="model", revision="") from exc
        return str(info.get("name", "?"))

    def check_access(self, repo_id: str, repo_type: str) -> None:
        """Check that the configured token (or none) may read *repo_id*'s files, with huggingface_hub's
        ``auth_check``. Raise a relayd HopError (NeedsPerson with the licence URL for a gated repo)."""
        self.spend("api")
        try:
            self._api().auth_check(repo_id, repo_type=repo_type)
        except Exception as exc:
            raise self.translate(exc, repo_id=repo_id, repo_type=repo_type, revision="") from exc

    # -- errors ------------------------------------------------------------------------------------

    def translate(
        self,
        exc: BaseException,
        *,
        repo_id: str,
        repo_type: str,
        revision: str,
        path: str | None = None,
    ) -> HopError:
        """Return the relayd error for a failed Hub call: what happened and what to do about it."""
        if isinstance(exc, HopError):
            return exc
        token_ref = self.config.token
        where = f"{repo_id}@{revision[:12] if len(revision) == 40 else revision}" if revision else repo_id
        token_keys = "hub.token_env, hub.token_file or hub.token"  # noqa: S105 - names of settings
        if isinstance(exc, GatedRepoError):
            try:
                anonymous = not self.token()
            except NeedsPerson:
                anonymous = True
            who = "anonymously (no token is set)" if anonymous else "with the configured token"
            return NeedsPerson(
                f"{repo_id} is gated and cannot be read {who}",
                hint=(
                    f"accept the licence at {repo_page(self.endpoint, repo_id, repo_type)}, then set the "
                    f"token ({token_keys}; now {token_ref.describe()}) to one of the account that accepted it"
                ),
                error_class=ErrorClass.GATED,
            )
        if isinstance(exc, DisabledRepoError):
            return NeedsPerson(
                f"{repo_id} is disabled on {self.endpoint}",
                hint="the repo's owner or the Hub disabled it; remove it (`relayctl remove`) or wait",
                error_class=ErrorClass.NOT_FOUND,
            )
        if isinstance(exc, RevisionNotFoundError):
            return NeedsPerson(
                f"{repo_id} has no revision {revision!r}",
                hint="check the branch, tag or commit name of the repo (`relayctl add … --revision`)",
                error_class=ErrorClass.NOT_FOUND,
            )
        if isinstance(exc, RemoteEntryNotFoundError):
            return Permanent(
                f"{path or 'a file'} is listed in the tree of {where} but the Hub does not serve it there: "
                "the tree changed under a pinned commit",
                hint="check the repo on the Hub; `relayctl retry` once it is consistent",
                error_class=ErrorClass.CHANGED,
            )
        if isinstance(exc, RepositoryNotFoundError) or _missing_or_private(exc):
            return NeedsPerson(
                f"{self._kind(repo_type)} {repo_id} was not found on {self.endpoint}",
                hint=(
                    f"check the name and the type (model or dataset); if it is private, set a token that can "
                    f"read it ({token_keys}; now {token_ref.describe()})"
                ),
                error_class=ErrorClass.NOT_FOUND,
            )
        if isinstance(exc, FileMetadataError):
            return NeedsPerson(
                f"{self.endpoint} did not answer like a Hugging Face Hub ({exc})",
                hint="check hub.endpoint (a mirror must pass X-Repo-Commit and ETag through)",
                error_class=ErrorClass.UPSTREAM,
            )
        if isinstance(exc, OfflineModeIsEnabled):
            return NeedsPerson(
                "HF_HUB_OFFLINE is set in relayd's environment",
                hint="unset HF_HUB_OFFLINE for the relayd service",
                error_class=ErrorClass.CONFIG,
            )
        if isinstance(exc, HfHubHTTPError):
            return self._http_error(exc, where)
        if isinstance(exc, httpx2.ProxyError) and _PROXY_REFUSED.search(str(exc)):
            return self._proxy_refused(where)
        if isinstance(exc, (httpx2.TransportError, OSError, TimeoutError)):
            return Retryable(f"cannot reach {self.endpoint} for {where}: {type(exc).__name__}: {exc}")
        return Retryable(
            f"unexpected error from the Hub for {where}: {type(exc).__name__}: {exc}",
            error_class=ErrorClass.UPSTREAM,
        )

    def _http_error(self, exc: HfHubHTTPError, where: str) -> HopError:
        response = exc.response
        status = response.status_code if response is not None else 0
        detail = (exc.server_message or "").strip().splitlines()
        said = f": {detail[0][:200]}" if detail else ""
        if status == 401:
            return NeedsPerson(
                f"{self.endpoint} refused the token (401 invalid credentials) for {where}",
                hint=(
                    "set a valid token (hub.token_env, hub.token_file or hub.token; now "
                    f"{self.config.token.describe()}), or remove it for public repos"
                ),
                error_class=ErrorClass.AUTH,
            )
        if status == 407:
            return self._proxy_refused(where)
        if status == 429:
            retry_after = retry_after_seconds(response.headers) if response is not None else None
            return Retryable(
                f"{self.endpoint} rate-limited the request for {where} (429){said}",
                retry_after=retry_after,
                error_class=ErrorClass.RATE_LIMIT,
            )
        if status >= 500 or status in (408, 425):
            return Retryable(
                f"{self.endpoint} failed for {where} ({status}){said}", error_class=ErrorClass.SERVER
            )
        if status == 403:
            return NeedsPerson(
                f"{self.endpoint} refused access to {where} (403){said}",
                hint="check that the token has read access to the repo",
                error_class=ErrorClass.AUTH,
            )
        return Permanent(
            f"{self.endpoint} answered {status} for {where}{said}", error_class=ErrorClass.UPSTREAM
        )

    def _proxy_refused(self, where: str) -> HopError:
        """A proxy that answered 407 (to a request, or to the CONNECT of a tunnel): waiting does not
        give it credentials."""
        return NeedsPerson(
            f"the proxy between relayd and {self.endpoint} asks for credentials it was not given or "
            f"refused (407) for {where}",
            hint="set them in hub.proxy or the proxy variables as http://user:password@host:port, then "
            "`relayctl retry`",
            error_class=ErrorClass.CONFIG,
        )

    @staticmethod
    def _kind(repo_type: str) -> str:
        return "dataset" if repo_type == "dataset" else "model"


def _missing_or_private(exc: BaseException) -> bool:
    """Tell whether *exc* is the Hub's 401 for a repo it will not say exists (anonymous callers get it
    without an X-Error-Code), as opposed to a refused token."""
    response = exc.response if isinstance(exc, HfHubHTTPError) else None
    if response is None or response.status_code != 401:
        return False
    return (
        response.headers.get("X-Error-Message") != _INVALID_CREDENTIALS
        and _REPO_URL.match(str(response.request.url)) is not None
    )


def describe_rate_limits(states: Iterable[BucketState]) -> str:
    """Return e.g. "api 498/500, resolvers 2997/3000 left in this 5-minute window", with when a bucket
    that is running low resets."""
    states = list(states)
    left = ", ".join(
        f"{s.name} {s.remaining}/{s.quota}" if s.quota else f"{s.name} {s.remaining}" for s in states
    )
    window = next((s.window for s in states if s.window), None)
    span = (
        f"{window // 60}-minute"
        if window and window % 60 == 0
        else f"{window}-second"
        if window
        else "current"
    )
    lows = [f"{s.name} resets in {format_duration(s.resets_in)}" for s in states if s.low]
    text = f"{left} left in this {span} window"
    return f"{text} ({', '.join(lows)})" if lows else text


def file_spec(entry: Any) -> FileSpec | None:
    """Return the FileSpec of a tree entry (None for folders). Raise Permanent for a malformed one."""
    if not isinstance(entry, RepoFile):
        return None
    if entry.lfs is not None:
        if entry.lfs.size != entry.size:
            raise Permanent(
                f"upstream gives {entry.path!r} two sizes ({entry.size} and LFS {entry.lfs.size})",
                error_class=ErrorClass.HOSTILE,
            )
        return FileSpec(path=entry.path, size=entry.size, lfs=True, sha256=str(entry.lfs.sha256).lower())
    return FileSpec(path=entry.path, size=entry.size, lfs=False, git_blob_id=str(entry.blob_id).lower())


def listing_digest(files: Iterable[FileSpec]) -> str:
    """Return a digest of a listing (paths, sizes and content ids), to compare two listings."""
    digest = hashlib.sha256()
    for spec in sorted(files, key=lambda item: item.path):
        digest.update(f"{spec.path}\0{spec.size}\0{spec.sha256}\0{spec.git_blob_id}\n".encode())
    return digest.hexdigest()


class HubSource(Source):
    """The ``hub`` source: repos on a Hugging Face Hub endpoint (or a mirror of one)."""

    def __init__(self, config: HubConfig) -> None:
        self.client = HubClient(config)
        self._listings: OrderedDict[tuple[str, str, str], str] = OrderedDict()

    @staticmethod
    def _repo_type(repo: Repo) -> str:
        if repo.repo_type not in REPO_TYPES:
            raise NeedsPerson(
                f"{repo.name} has the type {repo.repo_type!r}; relayd relays models and datasets",
                hint="add it again with --type model or --type dataset",
                error_class=ErrorClass.CONFIG,
            )
        return repo.repo_type

    def head(self, repo: Repo) -> str:
        commit = self.client.head_commit(repo.name, self._repo_type(repo), repo.revision)
        self.client.warn_if_anonymous()  # once it has polled (a failure says what to do itself)
        return commit

    def list_files(self, repo: Repo, commit: str) -> list[FileSpec]:
        repo_type = self._repo_type(repo)
        files = self.client.list_tree(repo.name, repo_type, commit)
        key = (repo_type, repo.name, commit)
        digest = listing_digest(files)
        previous = self._listings.get(key)
        if previous is not None and previous != digest:
            raise Permanent(
                f"two listings of {repo.name}@{commit[:12]} disagree: the tree changed under a pinned commit",
                hint="the Hub (or mirror) is inconsistent; check the repo there, then `relayctl retry`",
                error_class=ErrorClass.HOSTILE,
            )
        self._listings[key] = digest
        self._listings.move_to_end(key)
        while len(self._listings) > _LISTINGS_KEPT:
            self._listings.popitem(last=False)
        log.debug("%s@%s: %d files listed", repo.name, commit[:12], len(files))
        return files
