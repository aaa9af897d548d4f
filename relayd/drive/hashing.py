"""The drive's content fingerprints and part rules (reference/aliyun-drive.md §3.1 and §4).

``pre_hash`` is the lowercase SHA-1 of the first 1024 bytes; ``content_hash`` the uppercase SHA-1 of
the whole file; the ``proof_code`` (v1) is base64 of up to 8 bytes at an offset derived from the MD5 of
the current access token, so it proves the caller holds the bytes and must be recomputed after every
token refresh.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
from pathlib import Path

PRE_HASH_BYTES = 1024
#: The part size the drive uses below LARGE_FILE bytes.
PART_SIZE = 10 * 1024 * 1024
#: From this size on the drive uses LARGE_PART parts.
LARGE_FILE = 104_857_600_000
LARGE_PART = 256 * 1024 * 1024
MAX_PARTS = 10_000
_MIB = 1024 * 1024
_CHUNK = 8 * 1024 * 1024


def pre_hash(path: Path) -> str:
    """Return the lowercase SHA-1 of the first 1024 bytes of the file at *path*."""
    with path.open("rb") as handle:
        head = handle.read(PRE_HASH_BYTES)
    return hashlib.sha1(head, usedforsecurity=False).hexdigest()


def content_hash(path: Path) -> str:
    """Return the uppercase SHA-1 of the whole file at *path*, read once in large chunks."""
    digest = hashlib.sha1(usedforsecurity=False)
    fd = os.open(path, os.O_RDONLY)
    try:
        while data := os.read(fd, _CHUNK):
            digest.update(data)
    finally:
        os.close(fd)
    return digest.hexdigest().upper()


def proof_offset(access_token: str, size: int) -> int:
    """Return where the proof bytes start: the first 16 hex digits of MD5(token), modulo *size*."""
    if size <= 0:
        return 0
    prefix = hashlib.md5(access_token.encode(), usedforsecurity=False).hexdigest()[:16]
    return int(prefix, 16) % size


def proof_code(access_token: str, path: Path, size: int) -> str:
    """Return the v1 proof code of the file at *path* (*size* bytes) for *access_token* ("" if empty)."""
    if size <= 0:
        return ""
    offset = proof_offset(access_token, size)
    fd = os.open(path, os.O_RDONLY)
    try:
        window = os.pread(fd, min(8, size - offset), offset)
    finally:
        os.close(fd)
    return base64.b64encode(window).decode("ascii")


def part_size_for(size: int, preferred: int = PART_SIZE) -> int:
    """Return the part size for a file of *size* bytes: 256 MiB from 104,857,600,000 bytes on (the
    drive's rule), else *preferred*; never so small that the file needs over 10,000 parts."""
    needed = math.ceil(math.ceil(size / MAX_PARTS) / _MIB) * _MIB
    if size >= LARGE_FILE:
        return max(LARGE_PART, needed)
    return preferred if size <= preferred * MAX_PARTS else max(preferred, needed)


def part_count(size: int, part_size: int) -> int:
    """Return how many parts a file of *size* bytes has (one, possibly empty, at least)."""
    return max(1, math.ceil(size / part_size))
