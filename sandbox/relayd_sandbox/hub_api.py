"""The fake Hub's own origin: ``/api/…`` (repo info, the paginated tree, refs, commits, paths-info,
auth-check, whoami), ``/resolve`` (307 to the resolve-cache for regular files, 302 to a signed CDN URL
for LFS files) and the repo pages, with the Hub's error table and its rate limits on every answer."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from relayd_sandbox.hub_faults import FaultKind, FaultRule
from relayd_sandbox.hub_http import OriginHandler, xet_hash_of
from relayd_sandbox.hub_limits import Bucket, Count
from relayd_sandbox.hub_store import Commit, FileEntry, Repo, RepoType

logger = logging.getLogger(__name__)

_TYPES: dict[str, RepoType] = {"models": "model", "datasets": "dataset", "spaces": "space"}
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_NOT_FOUND_PAGE = "Sorry, we can't find the page you are looking for."
# What the Hub adds to every anonymous answer (topic; message), logged once by huggingface_hub.
_UNAUTHENTICATED = (
    "unauthenticated; Warning: You are sending unauthenticated requests to the HF Hub. "
    "Please set a HF_TOKEN to enable higher rate limits and faster downloads."
)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _object_id(repo: Repo) -> str:
    """Return the repo's 24-hex object id (``_id`` in its info, a segment of its Xet-bridge URLs)."""
    return hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24]


def _flag(values: list[str] | None) -> bool:
    return values is not None and len(values) > 0 and values[-1].lower() in ("1", "true", "yes")


def _bucket_of(parts: list[str]) -> Bucket:
    """Return the rate-limit bucket a Hub path counts in: ``api``, ``resolvers`` (a ``/resolve/``
    segment, or the resolve-cache those redirect to) or ``pages`` (everything else: web pages)."""
    if parts[:2] == ["api", "resolve-cache"]:
        return "resolvers"
    if parts[:1] == ["api"]:
        return "api"
    return "resolvers" if "resolve" in parts[1:4] else "pages"


class HubHandler(OriginHandler):
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
                    item["xetHash"] = xet_hash_of(entry.sha256)
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
            xet_hash = xet_hash_of(entry.sha256)
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
