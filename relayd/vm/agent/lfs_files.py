"""What goes to ModelScope as an LFS pointer, what a pointer is, and how .gitattributes names a path.

Pure rules, no I/O: the lfs_push hop asks ``wants_lfs`` on the daemon's side, the agent's publish
writes the pointers and merges ``.gitattributes``.
"""

from __future__ import annotations

import re

from .core import AgentError

POINTER_VERSION = "https://git-lfs.github.com/spec/v1"
SMALL_FILE_LIMIT = 64 * 1024
# Files the hub parses must stay plain text, whatever their size (reference §2).
PLAIN_NAMES = frozenset(
    {
        "README.md",
        ".gitattributes",
        ".gitignore",
        "configuration.json",
        "configuration.yaml",
        "configuration.yml",
        "dataset_infos.json",
        "config.json",
        ".msc",
        ".mdl",
    }
)
# fmt: off
LFS_SUFFIXES = (
    ".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gz", ".h5", ".joblib", ".mlmodel", ".model",
    ".msgpack", ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb", ".pickle", ".pkl", ".pt", ".pth",
    ".rar", ".safetensors", ".tar", ".tflite", ".tgz", ".wasm", ".xz", ".zip", ".zst",
)
# fmt: on
LFS_ATTRIBUTES = "filter=lfs diff=lfs merge=lfs -text"
OID = re.compile(r"^[0-9a-f]{64}$")


def wants_lfs(path: str, size: int, upstream_lfs: bool) -> bool:
    """Given a file's *path*, *size* and whether upstream stores it in LFS, return whether it goes to
    ModelScope as an LFS pointer (True) or as plain content (False)."""
    name = path.rsplit("/", 1)[-1]
    if name in PLAIN_NAMES or size == 0:
        return False
    return upstream_lfs or size > SMALL_FILE_LIMIT or name.lower().endswith(LFS_SUFFIXES)


def pointer(oid: str, size: int) -> bytes:
    """Return the Git LFS pointer file of object *oid* of *size* bytes, byte for byte."""
    return ("version %s\noid sha256:%s\nsize %d\n" % (POINTER_VERSION, oid, size)).encode("ascii")


def check_path(path: str) -> str:
    """Return *path* if it is a safe relative path for a git tree; raise a permanent AgentError."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or any(part in ("", ".", "..", ".git") for part in parts)
        or any(c in path for c in "\0\n\r")
    ):
        raise AgentError("unsafe path %r in the snapshot" % path, kind="permanent", error_class="integrity")
    return path


# -- .gitattributes ------------------------------------------------------------------------------------


def attribute_pattern(path: str) -> str:
    """Return a .gitattributes pattern matching exactly *path* (anchored, glob characters escaped)."""
    escaped = "/" + re.sub(r"([\\*?\[])", r"\\\1", path)
    if re.search(r'[\s"]', escaped) or any(ord(c) > 126 for c in escaped):
        quoted = escaped.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")
        return '"%s"' % quoted
    return escaped


def merge_attributes(*texts: str) -> list[str]:
    """Return the lines of several .gitattributes files merged: the first file's lines in order, then
    each later file's lines that are not there yet."""
    lines: list[str] = []
    seen = set()
    for text in texts:
        for line in text.splitlines():
            key = line.strip()
            if key and key in seen:
                continue
            if key:
                seen.add(key)
            lines.append(line.rstrip("\r"))
    while lines and not lines[-1].strip():
        lines.pop()
    return lines
