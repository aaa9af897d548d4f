"""The fake drive's files: a global SHA-1 content store (so rapid upload hits across users), the folder
tree of each drive with its name-collision modes, the file API (get, list, rename, move, trash,
restore, delete) and the views tests read."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from relayd_sandbox.drive_hashes import pre_hash
from relayd_sandbox.drive_oauth import DriveOAuth
from relayd_sandbox.drive_records import (
    _COPY_CHUNK,
    DOMAIN_ID,
    JSON,
    MAX_LIST_LIMIT,
    ROOT,
    ApiError,
    CallContext,
    DriveSettings,
    Node,
    StoredBlob,
    StoredFile,
    as_int,
    bad_parameter,
    not_found_file,
    now_iso,
)


class DriveFiles(DriveOAuth):
    """Content, folders and files; an upload (``drive_uploads``) adds to them, a download
    (``drive_downloads``) reads them."""

    def __init__(self, root: Path, settings: DriveSettings, clock: Callable[[], float]) -> None:
        super().__init__(root, settings, clock)
        self._blobs: dict[str, StoredBlob] = {}
        self._by_pre_hash: dict[tuple[str, int], StoredBlob] = {}
        self._nodes: dict[str, Node] = {}
        self._children: dict[tuple[str, str], dict[str, Node]] = {}
        self.seed_content(b"")

    def seed_content(self, source: bytes | Path) -> str:
        """Make *source* known to the global content store, as if another user had uploaded it, and
        return its content_hash. Streams files; never holds them in memory."""
        tmp = self.root / "tmp" / f"seed-{secrets.token_hex(8)}"
        sha1 = hashlib.sha1()
        head = b""
        size = 0
        with tmp.open("wb") as out:
            for chunk in _chunks(source):
                if len(head) < 1024:
                    head += chunk[: 1024 - len(head)]
                sha1.update(chunk)
                out.write(chunk)
                size += len(chunk)
        return self._adopt(tmp, sha1.hexdigest().upper(), size, pre_hash(head)).content_hash

    def _adopt(self, data: Path, content_hash: str, size: int, head_hash: str) -> StoredBlob:
        with self.lock:
            blob = self._blobs.get(content_hash)
            if blob is not None:
                data.unlink(missing_ok=True)
                return blob
            target = self.root / "blobs" / content_hash[:2] / content_hash
            target.parent.mkdir(exist_ok=True)
            os.replace(data, target)
            blob = StoredBlob(content_hash, size, head_hash, target)
            self._blobs[content_hash] = blob
            self._by_pre_hash.setdefault((head_hash, size), blob)
            return blob

    def corrupt(self, file_id: str, offset: int | None = None) -> None:
        """Flip one byte of a file's stored bytes (same size), leaving its content_hash as it was.

        The file gets a private copy, so other files and rapid-upload proofs still see good bytes.
        """
        with self.lock:
            node = self._nodes[file_id]
            source = node.data_path
            if source is None or node.size == 0:
                raise ValueError(f"file {file_id} has no bytes to corrupt")
            target = self.root / "corrupt" / f"{file_id}-{secrets.token_hex(4)}"
            shutil.copyfile(source, target)
            where = node.size // 2 if offset is None else offset
            with target.open("r+b") as handle:
                handle.seek(where)
                byte = handle.read(1)
                handle.seek(where)
                handle.write(bytes([byte[0] ^ 0xFF]))
            node.corrupt_path = target

    def repair_files(self) -> None:
        """Make every file corrupted by ``corrupt`` serve its good bytes again."""
        with self.lock:
            for node in self._nodes.values():
                node.corrupt_path = None

    def _visible(self, node: Node) -> bool:
        return node.status == "available" and not node.trashed

    def _node(self, drive_id: str, file_id: str) -> Node:
        if file_id == ROOT:
            return Node(ROOT, drive_id, "", ROOT, "folder", 0.0, 0.0)
        node = self._nodes.get(file_id)
        if node is None or node.drive_id != drive_id:
            raise not_found_file()
        return node

    def _folder(self, drive_id: str, file_id: str) -> Node:
        node = self._node(drive_id, file_id)
        if node.type != "folder" or node.trashed or node.status != "available":
            raise not_found_file()
        return node

    def _find(
        self, drive_id: str, parent_id: str, name: str, kind: str, exclude: Node | None = None
    ) -> Node | None:
        for node in self._children.get((drive_id, parent_id), {}).values():
            if node.name == name and node.type == kind and node is not exclude and self._visible(node):
                return node
        return None

    def _free_name(self, drive_id: str, parent_id: str, name: str, kind: str) -> str:
        # The real service's auto_rename pattern is undocumented; "x(1).bin" is this fake's choice.
        stem, dot, ext = name.rpartition(".") if kind == "file" and "." in name[1:] else (name, "", "")
        n = 1
        while True:
            candidate = f"{stem}({n}){dot}{ext}"
            if self._find(drive_id, parent_id, candidate, kind) is None:
                return candidate
            n += 1

    def _add_node(self, node: Node) -> Node:
        self._nodes[node.file_id] = node
        self._children.setdefault((node.drive_id, node.parent_file_id), {})[node.file_id] = node
        return node

    def _new_node(self, drive_id: str, parent_id: str, name: str, kind: str, **extra: Any) -> Node:
        now = self.now()
        return self._add_node(Node(secrets.token_hex(20), drive_id, parent_id, name, kind, now, now, **extra))

    def _remove_node(self, node: Node) -> None:
        for child in list(self._children.get((node.drive_id, node.file_id), {}).values()):
            self._remove_node(child)
        self._nodes.pop(node.file_id, None)
        self._children.get((node.drive_id, node.parent_file_id), {}).pop(node.file_id, None)

    def _place(self, node: Node, mode: str) -> None:
        """Resolve a name collision for *node*, about to become visible, under *mode*."""
        other = self._find(node.drive_id, node.parent_file_id, node.name, node.type, exclude=node)
        if other is None or mode == "ignore":
            return
        if mode == "refuse":
            raise ApiError(
                409, "AlreadyExist.File", f"The resource file has already exists. file_id {other.file_id}"
            )
        if mode == "overwrite":
            other.trashed = True
            other.updated_at = self.now()
        else:
            node.name = self._free_name(node.drive_id, node.parent_file_id, node.name, node.type)

    def _file_json(self, node: Node) -> JSON:
        out: JSON = {
            "drive_id": node.drive_id,
            "domain_id": DOMAIN_ID,
            "file_id": node.file_id,
            "name": node.name,
            "type": node.type,
            "created_at": now_iso(node.created_at),
            "updated_at": now_iso(node.updated_at),
            "hidden": False,
            "starred": False,
            "status": node.status,
            "parent_file_id": node.parent_file_id,
            "encrypt_mode": "none",
            "revision_id": "",
            "trashed": node.trashed,
        }
        if node.type == "file":
            ext = node.name.rpartition(".")[2] if "." in node.name else ""
            out.update(
                {
                    "content_type": "application/oct-stream",
                    "file_extension": ext,
                    "mime_type": "application/octet-stream",
                    "mime_extension": ext,
                    "size": node.size,
                    "category": "others",
                    "punish_flag": 0,
                }
            )
            if node.blob is not None:
                out.update({"content_hash": node.blob.content_hash, "content_hash_name": "sha1"})
            if node.upload_id:
                out["upload_id"] = node.upload_id
        return out

    def _created_json(self, node: Node, **extra: Any) -> JSON:
        out: JSON = {
            "parent_file_id": node.parent_file_id,
            "type": node.type,
            "file_id": node.file_id,
            "domain_id": DOMAIN_ID,
            "drive_id": node.drive_id,
            "file_name": node.name,
            "encrypt_mode": "none",
            "location": "cn-beijing",
        }
        out.update(extra)
        return out

    def _create_folder(self, drive_id: str, parent_id: str, name: str, mode: str) -> JSON:
        existing = self._find(drive_id, parent_id, name, "folder")
        if existing is not None and mode in {"refuse", "overwrite"}:
            # Overwriting a folder would drop its contents; this fake answers it like refuse.
            return self._created_json(existing, exist=True)
        if existing is not None and mode == "auto_rename":
            name = self._free_name(drive_id, parent_id, name, "folder")
        return self._created_json(self._new_node(drive_id, parent_id, name, "folder"))

    def get_file(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        with self.lock:
            drive_id = self._drive_id(ctx, body)
            file_id = str(body.get("file_id") or "")
            if file_id == ROOT:
                root = self._node(drive_id, ROOT)
                return 200, self._file_json(root)
            return 200, self._file_json(self._node(drive_id, file_id))

    def list_files(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """List a folder's visible children in pages: ``next_marker`` is "" on the last page."""
        with self.lock:
            drive_id = self._drive_id(ctx, body)
            parent = self._folder(drive_id, str(body.get("parent_file_id") or ROOT))
            items = [
                n for n in self._children.get((drive_id, parent.file_id), {}).values() if self._visible(n)
            ]
            return 200, self._page(items, body)

    def list_trash(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        with self.lock:
            drive_id = self._drive_id(ctx, body)
            items = [n for n in self._nodes.values() if n.drive_id == drive_id and n.trashed]
            return 200, self._page(items, body)

    def _page(self, items: list[Node], body: JSON) -> JSON:
        limit = as_int(body.get("limit") or 100, "Limit")
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise bad_parameter("Limit", f"limit must be between 1 and {MAX_LIST_LIMIT}")
        kind = body.get("type")
        if kind:
            items = [n for n in items if n.type == kind]
        order_by = body.get("order_by") or "name"
        keys: dict[str, Callable[[Node], Any]] = {
            "name": lambda n: n.name,
            "created_at": lambda n: n.created_at,
            "updated_at": lambda n: n.updated_at,
            "size": lambda n: n.size,
        }
        if order_by not in keys:
            raise bad_parameter("OrderBy")
        key = keys[order_by]
        descending = str(body.get("order_direction") or "ASC").upper() == "DESC"
        items.sort(key=lambda n: (key(n), n.file_id), reverse=descending)
        offset = _decode_marker(body.get("marker"))
        size = min(limit, max(1, self.settings.page_limit))
        page = items[offset : offset + size]
        more = offset + size < len(items)
        return {
            "items": [self._file_json(n) for n in page],
            "next_marker": _encode_marker(offset + size) if more else "",
            "punished_file_count": 0,
        }

    def update_file(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        """/v3/file/update: rename (``check_name_mode`` refuse by default: 409 on a clash)."""
        with self.lock:
            node = self._node(self._drive_id(ctx, body), str(body.get("file_id") or ""))
            if node.file_id == ROOT:
                raise bad_parameter("FileId")
            new_name = body.get("name")
            if new_name is not None and new_name != node.name:
                if not new_name or "/" in new_name:
                    raise bad_parameter("Name")
                old, node.name = node.name, str(new_name)
                try:
                    self._place(node, body.get("check_name_mode") or "refuse")
                except ApiError:
                    node.name = old
                    raise
                node.updated_at = self.now()
            return 200, self._file_json(node)

    def move_file(self, ctx: CallContext, body: JSON) -> tuple[int, JSON]:
        with self.lock:
            drive_id = self._drive_id(ctx, body)
            node = self._node(drive_id, str(body.get("file_id") or ""))
            target = self._folder(drive_id, str(body.get("to_parent_file_id") or ROOT))
            if node.file_id == ROOT or self._is_within(target, node):
                raise bad_parameter("ToParentFileId")
            mode = (
                "overwrite"
                if body.get("overwrite")
                else "auto_rename"
                if body.get("auto_rename")
                else "refuse"
            )
            old_parent, old_name = node.parent_file_id, node.name
            self._children[(drive_id, old_parent)].pop(node.file_id)
            node.parent_file_id = target.file_id
            node.name = str(body.get("new_name") or node.name)
            try:
                self._place(node, mode)
            except ApiError:
                node.parent_file_id, node.name = old_parent, old_name
                raise
            finally:
                self._children.setdefault((drive_id, node.parent_file_id), {})[node.file_id] = node
            node.updated_at = self.now()
            return 200, {"domain_id": DOMAIN_ID, "drive_id": drive_id, "file_id": node.file_id}

    def _is_within(self, folder: Node, ancestor: Node) -> bool:
        current: Node | None = folder
        while current is not None and current.file_id != ROOT:
            if current.file_id == ancestor.file_id:
                return True
            current = self._nodes.get(current.parent_file_id)
        return False

    def trash(self, ctx: CallContext, body: JSON) -> tuple[int, JSON | None]:
        """/v2/recyclebin/trash: 204 for a file, 202 with an async task id for a folder."""
        with self.lock:
            node = self._node(self._drive_id(ctx, body), str(body.get("file_id") or ""))
            if node.file_id == ROOT:
                raise bad_parameter("FileId")
            node.trashed = True
            node.updated_at = self.now()
            if node.type == "file":
                return 204, None
            return 202, {
                "domain_id": DOMAIN_ID,
                "drive_id": node.drive_id,
                "file_id": node.file_id,
                "async_task_id": secrets.token_hex(16),
            }

    def restore(self, ctx: CallContext, body: JSON) -> tuple[int, JSON | None]:
        with self.lock:
            node = self._node(self._drive_id(ctx, body), str(body.get("file_id") or ""))
            node.trashed = False
            self._place(node, "auto_rename")
            return 204, None

    def delete(self, ctx: CallContext, body: JSON) -> tuple[int, JSON | None]:
        with self.lock:
            node = self._node(self._drive_id(ctx, body), str(body.get("file_id") or ""))
            if node.file_id == ROOT:
                raise bad_parameter("FileId")
            self._remove_node(node)
            return 204, None

    def path_of(self, node: Node) -> str:
        names = []
        current: Node | None = node
        while current is not None and current.file_id != ROOT:
            names.append(current.name)
            current = self._nodes.get(current.parent_file_id)
        return "/" + "/".join(reversed(names))

    def _view(self, node: Node) -> StoredFile:
        return StoredFile(
            file_id=node.file_id,
            drive_id=node.drive_id,
            parent_file_id=node.parent_file_id,
            path=self.path_of(node),
            name=node.name,
            type=node.type,
            size=node.size,
            content_hash=node.blob.content_hash if node.blob else None,
            data_path=node.data_path,
            status=node.status,
            trashed=node.trashed,
        )

    def lookup(self, path: str, drive_id: str) -> StoredFile | None:
        """Return the visible file or folder at *path* ("/relayd/owner/name/x.bin") in *drive_id*."""
        with self.lock:
            parent = ROOT
            segments = [s for s in PurePosixPath(path).parts if s != "/"]
            node: Node | None = None
            for i, segment in enumerate(segments):
                last = i == len(segments) - 1
                kinds = ("file", "folder") if last else ("folder",)
                node = next(
                    (found for kind in kinds if (found := self._find(drive_id, parent, segment, kind))),
                    None,
                )
                if node is None:
                    return None
                parent = node.file_id
            return self._view(node) if node is not None else None

    def view(self, file_id: str) -> StoredFile | None:
        with self.lock:
            node = self._nodes.get(file_id)
            return self._view(node) if node is not None else None

    def all_files(self, drive_id: str | None, include_hidden: bool) -> list[StoredFile]:
        with self.lock:
            nodes = [
                n
                for n in self._nodes.values()
                if (drive_id is None or n.drive_id == drive_id) and (include_hidden or self._visible(n))
            ]
            return sorted((self._view(n) for n in nodes), key=lambda f: (f.drive_id, f.path))


def _chunks(source: bytes | Path) -> Iterator[bytes]:
    if isinstance(source, bytes):
        yield source
        return
    with source.open("rb") as handle:
        while chunk := handle.read(_COPY_CHUNK):
            yield chunk


def _encode_marker(offset: int) -> str:
    return base64.urlsafe_b64encode(f"relayd-list:{offset}".encode()).decode()


def _decode_marker(marker: Any) -> int:
    if not marker:
        return 0
    try:
        text = base64.urlsafe_b64decode(str(marker).encode()).decode()
        prefix, _, number = text.partition(":")
        if prefix != "relayd-list":
            raise ValueError(text)
        return int(number)
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise bad_parameter("Marker") from exc
