"""vm_pull against the sandbox: a download-link client for the fake drive, a seeded catalogue, and a
runner process, shared by the tests, the benchmark and anyone trying the hop by hand.

``FakeDriveLinks`` is the part of a ``relayd.drive`` Drive that vm_pull uses (``download_url``),
spoken over the fake drive's HTTP API; ``upload_to_fake_drive`` puts bytes on the fake drive (rapid
upload with a proof) and returns the file id; ``seed_pulls`` records a snapshot whose files already
went through ``pan_upload``, so only their ``vm_pull`` transfers are left; ``pull_params`` are the agent's
parameters for pulling bytes from it.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import select

from relayd.catalogue.schema import File
from relayd.catalogue.store import FileSpec, RepoSpec, Store
from relayd.config import VmConfig
from relayd.errors import ErrorClass, NeedsPerson, Retryable
from relayd_sandbox.drive_hashes import proof_code
from relayd_sandbox.processes import processes_with_cmdline

DEFAULT_REFERER = "https://www.aliyundrive.com/"


@dataclass(frozen=True)
class Link:
    """A download link, shaped like ``relayd.drive.base.DownloadLink``."""

    url: str
    headers: dict[str, str]
    expires_at: datetime
    size: int
    content_hash: str

    def __repr__(self) -> str:
        return f"Link(size={self.size}, expires_at={self.expires_at.isoformat()})"


@dataclass
class FakeDriveLinks:
    """Mint download links from the fake drive's API with an access token (what vm_pull needs of a
    Drive). ``minted`` counts the links handed out."""

    api_url: str
    access_token: str
    drive_id: str = ""
    referer: str = DEFAULT_REFERER
    expire_sec: int = 14400
    minted: int = 0
    _session: requests.Session = field(default_factory=requests.Session, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def download_url(self, file_id: str) -> Link:
        body = {"file_id": file_id, "drive_id": self.drive_id, "expire_sec": self.expire_sec}
        try:
            answer = self._session.post(
                f"{self.api_url}/v2/file/get_download_url",
                json=body,
                headers={"Authorization": self.access_token},
                timeout=30,
            )
        except requests.RequestException as exc:
            raise Retryable(f"the drive API is unreachable: {type(exc).__name__}") from exc
        if answer.status_code == 401:
            raise NeedsPerson("the drive refused the access token", hint="log in to the drive again")
        if answer.status_code != 200:
            raise Retryable(f"get_download_url answered {answer.status_code}", error_class=ErrorClass.SERVER)
        data = answer.json()
        with self._lock:
            self.minted += 1
        expires = datetime.fromisoformat(str(data["expiration"]).replace("Z", "+00:00"))
        return Link(
            url=str(data["url"]),
            headers={"Referer": self.referer},
            expires_at=expires,
            size=int(data["size"]),
            content_hash=str(data["content_hash"]),
        )

    def close(self) -> None:
        self._session.close()


def upload_to_fake_drive(drive: Any, data: bytes | Path, name: str, *, drive_id: str = "") -> str:
    """Put *data* on the FakeDrive *drive* as ``/<name>`` (rapid upload with a proof) in *drive_id*
    (default: the user's default drive) and return its file id."""
    content_hash = drive.seed_content(data)
    token = drive.issue_access_token()
    size = len(data) if isinstance(data, bytes) else data.stat().st_size
    answer = requests.post(
        f"{drive.api_url}/adrive/v2/file/createWithFolders",
        json={
            "name": name,
            "type": "file",
            "parent_file_id": "root",
            "drive_id": drive_id or drive.default_drive_id,
            "size": size,
            "content_hash": content_hash,
            "content_hash_name": "sha1",
            "proof_code": proof_code(token, data),
            "proof_version": "v1",
            "check_name_mode": "refuse",
        },
        headers={"Authorization": token},
        timeout=30,
    )
    answer.raise_for_status()
    created = answer.json()
    if not created.get("rapid_upload"):
        raise RuntimeError(f"the fake drive did not take {name} by rapid upload: {created}")
    return str(created["file_id"])


def pull_params(
    root: Path, data: bytes, *, piece: int, relpath: str = "acme/tiny/f.bin", **changes: Any
) -> dict[str, Any]:
    """Return the agent's ``pull`` parameters for a fresh pull of *data* into *root*/*relpath* in pieces
    of *piece* bytes, every piece missing, two connections (*changes* override any of them)."""
    plan = [[i, o, min(piece, len(data) - o)] for i, o in enumerate(range(0, len(data), piece))]
    params: dict[str, Any] = {
        "root": str(root),
        "relpath": relpath,
        "size": len(data),
        "plan": plan,
        "missing": [p[0] for p in plan],
        "fresh": True,
        "expected_sha256": hashlib.sha256(data).hexdigest(),
        "connections": 2,
        "headers": {"Referer": DEFAULT_REFERER},
        "expires_in": 3600,
    }
    params.update(changes)
    return params


def seed_pulls(
    store: Store,
    repo: str,
    files: Mapping[str, tuple[int, str, str]],
    file_ids: Mapping[str, str],
    *,
    route: tuple[str, ...] = ("pan_upload", "vm_pull"),
    options: Mapping[str, Any] | None = None,
    destinations: Mapping[str, Any] | None = None,
    staged: Mapping[str, str] | None = None,
) -> int:
    """Record a snapshot of *files* (path → (size, sha256, sha1)) whose pan_upload is done with the
    drive ids *file_ids* (and, optionally, staged copies path → staging-relative path); return the
    repo id. Only the vm_pull transfers are left to run."""
    repo_row, _ = store.add_repo(
        RepoSpec(
            name=repo,
            every=3600,
            route=route,
            options=dict(options or {}),
            destinations=dict(destinations or {}),
        )
    )
    specs = [FileSpec(path=p, size=s, lfs=True, sha256=sha) for p, (s, sha, _) in files.items()]
    commit = hashlib.sha1(repr(sorted(files.items())).encode(), usedforsecurity=False).hexdigest()
    store.record_snapshot(repo_row.id, commit, specs)
    with store.read() as session:
        paths = {row.id: row.path for row in session.scalars(select(File).where(File.repo_id == repo_row.id))}
    while (transfer := store.claim(route[0], "seed", 60)) is not None:
        assert transfer.file_id is not None  # noqa: S101 - file transfers only here
        path = paths[transfer.file_id]
        store.complete(
            transfer.id,
            "seed",
            {"file_id": file_ids[path]},
            sha1=files[path][2],
            staged_path=(staged or {}).get(path),
        )
    return repo_row.id


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, step: float = 0.05) -> bool:
    """Poll *predicate* until it is true or *timeout* passes; return its last truth."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def no_agent_left(marker: str, timeout: float = 10.0) -> bool:
    """Return True once no live process (an ssh client or an agent) carries *marker* in its command
    line."""
    return wait_until(lambda: not processes_with_cmdline(marker), timeout)


def vm_config(**overrides: Any) -> VmConfig:
    """Return a VmConfig with test-friendly defaults (local executor, small pieces)."""
    values: dict[str, Any] = {
        "executor": "local",
        "root": "/tmp/relayd-vm",  # noqa: S108 - overridden by every caller
        "host": "",
        "port": 22,
        "user": "",
        "identity_file": None,
        "known_hosts_file": None,
        "ssh_config_file": None,
        "strict_host_key_checking": "yes",
        "ssh_options": (),
        "ssh_multiplex": True,
        "python": sys.executable,
        "path": "",
        "concurrency": 1,
        "connections": 2,
        "piece_size": 256 * 1024,
        "from_staging": False,
    }
    values.update(overrides)
    return VmConfig(**values)
