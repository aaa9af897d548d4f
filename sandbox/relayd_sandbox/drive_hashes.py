"""The Aliyun Drive's content hashes as the fake checks them: the pre-hash (SHA-1 of the first KiB, which
answers whether rapid upload may hit) and the v1 rapid-upload proof (8 bytes at an offset derived from
the caller's access token)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path


def pre_hash(head: bytes) -> str:
    """Given the start of a file, return its pre-hash: lowercase SHA-1 of the first 1024 bytes."""
    return hashlib.sha1(head[:1024]).hexdigest()


def proof_offset(access_token: str, size: int) -> int:
    """Given an access token and a file size, return where the 8 proof bytes start (§3.1)."""
    if size <= 0:
        return 0
    md5_prefix = hashlib.md5(access_token.encode()).hexdigest()[:16]
    return int(md5_prefix, 16) % size


def proof_code(access_token: str, source: bytes | Path) -> str:
    """Given the caller's access token and the content (bytes or a path), return the v1 proof code:
    padded base64 of up to 8 bytes at ``proof_offset``; "" for empty content."""
    if isinstance(source, bytes):
        size = len(source)
        offset = proof_offset(access_token, size)
        window = source[offset : offset + 8]
    else:
        size = source.stat().st_size
        offset = proof_offset(access_token, size)
        with source.open("rb") as handle:
            handle.seek(offset)
            window = handle.read(min(8, size - offset))
    return base64.b64encode(window).decode() if size else ""
