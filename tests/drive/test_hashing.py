"""The drive's fingerprints (reference/aliyun-drive.md §3.1 test vectors) and part rules (§4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayd.drive.hashing import (
    LARGE_FILE,
    LARGE_PART,
    MAX_PARTS,
    PART_SIZE,
    content_hash,
    part_count,
    part_size_for,
    pre_hash,
    proof_code,
    proof_offset,
)

VECTORS = [
    (bytes(range(256)) * 8, 1786, "+vv8/f7/AAE="),
    (b"hello", 4, "bw=="),
    (b"", 0, ""),
]


@pytest.mark.parametrize(("content", "offset", "expected"), VECTORS)
def test_proof_code_vectors(content: bytes, offset: int, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "content.bin"
    path.write_bytes(content)
    assert proof_offset("test-token", len(content)) == offset
    assert proof_code("test-token", path, len(content)) == expected


def test_hash_vectors(tmp_path: Path) -> None:
    path = tmp_path / "v.bin"
    path.write_bytes(bytes(range(256)) * 8)
    assert pre_hash(path) == "5b00669c480d5cffbdfa8bdba99561160f2d1b77"
    assert content_hash(path) == "F10CCFDE60C17DB26E7D85D35665C7661DBBEB2C"
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert content_hash(empty) == "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709"


def test_part_rules() -> None:
    assert part_size_for(0) == PART_SIZE
    assert part_size_for(30 * 2**30) == PART_SIZE
    assert part_size_for(LARGE_FILE - 1) == PART_SIZE
    assert part_size_for(LARGE_FILE) == LARGE_PART
    huge = 4 * 2**40
    assert part_size_for(huge) * MAX_PARTS >= huge
    assert part_size_for(huge) % 2**20 == 0
    # A small preferred size still never needs more than 10,000 parts.
    assert part_size_for(10 * 2**30, 64 * 1024) * MAX_PARTS >= 10 * 2**30
    assert part_count(0, PART_SIZE) == 1
    assert part_count(PART_SIZE, PART_SIZE) == 1
    assert part_count(PART_SIZE + 1, PART_SIZE) == 2
