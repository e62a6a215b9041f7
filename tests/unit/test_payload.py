"""Write payloads: incompressible, no duplicate 4 KiB block, verifiable."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from payload_rig import stream_blocks

from mpi_kvbench.engine import payload as pl
from mpi_kvbench.engine.payload import BLOCK, PayloadSource

zstd = pytest.importorskip("zstandard")

STREAM = 64 << 20     # bytes of consecutive writes per check


@pytest.mark.parametrize("mode,object_bytes,depth", [
    ("fresh", 64 << 10, 2),
    ("fresh", 384 << 10, 8),
    ("reuse", 2 << 20, 8),          # real chunk sizes: 32 buffers, the 64 MiB ring floor
])
def test_incompressible_and_no_duplicate_block(mode: str, object_bytes: int, depth: int) -> None:
    src = PayloadSource(object_bytes, depth, mode)
    try:
        ratio, blocks, distinct, _ = stream_blocks(src, STREAM)
    finally:
        src.close()
    assert blocks >= STREAM // BLOCK
    assert distinct == blocks
    assert ratio >= 0.99


def test_reuse_mode_with_a_small_ring_is_incompressible() -> None:
    """Small objects at a shallow depth would make a small ring (depth + 2 buffers, 256 KiB,
    repeating well inside zstd's window); the ring is sized up to RING_BYTES instead."""
    src = PayloadSource(64 << 10, 2, "reuse")          # e.g. small layer-wise objects, depth 2
    try:
        ratio, blocks, distinct, _ = stream_blocks(src, 16 << 20)
    finally:
        src.close()
    # the ring holds max(depth + 2, RING_BYTES // object) = 1,024 buffers (64 MiB), so this
    # 16 MiB stream never comes back to a buffer: no block repeats (and were one to, its
    # stamp, key, write sequence and offset, would still differ), and zstd finds no repeat
    assert distinct == blocks
    assert ratio >= 0.99


def test_stamp_layout() -> None:
    src = PayloadSource(3 * BLOCK, 1, "reuse")
    try:
        buf = src.take()
        pl.stamp(buf, 2**64 - 3, 77)
        for i in range(3):
            assert struct.unpack_from("<QQQ", buf, i * BLOCK) == (2**64 - 3, 77, i * BLOCK)
        src.give_back(buf)
    finally:
        src.close()


@pytest.fixture
def stamped():
    src = PayloadSource(8 * BLOCK, 1, "fresh")
    buf = src.take()
    key = 0xDEADBEEF12345678
    pl.stamp(buf, key, 5)
    crc = pl.checksum(buf)
    yield buf, key, crc
    src.give_back(buf)
    src.close()


def test_check_passes_on_intact_data(stamped) -> None:
    buf, key, crc = stamped
    assert pl.check(buf, key, crc)
    assert pl.check(memoryview(buf), key, crc)


@pytest.mark.parametrize("offset", [0, 8, 16, 24, 100, BLOCK, 5 * BLOCK + 4000, 8 * BLOCK - 1])
def test_check_fails_when_one_byte_changes(stamped, offset: int) -> None:
    buf, key, crc = stamped
    buf[offset] ^= 0x01
    assert not pl.check(buf, key, crc)
    buf[offset] ^= 0x01
    assert pl.check(buf, key, crc)


def test_check_fails_on_the_wrong_key(stamped) -> None:
    buf, key, crc = stamped
    assert not pl.check(buf, key + 1, crc)
    assert not pl.check(buf, 0, crc)


def test_check_fails_on_misplaced_blocks_even_with_a_matching_crc(stamped) -> None:
    buf, key, _ = stamped
    rows = np.frombuffer(buf, dtype=np.uint8).reshape(-1, BLOCK)
    rows[[0, 1]] = rows[[1, 0]]                          # two blocks swapped
    assert not pl.check(buf, key, pl.checksum(buf))


def test_fresh_buffers_are_new_bytes_each_time() -> None:
    src = PayloadSource(4 * BLOCK, 2, "fresh")
    try:
        seen = set()
        for _ in range(50):
            buf = src.take()
            seen.add(hashlib.sha256(bytes(buf)[64:]).digest())   # ignore the stamp area
            src.give_back(buf)
        assert len(seen) == 50
        assert src.generated_bytes >= 50 * 4 * BLOCK
    finally:
        src.close()


def test_buffers_are_page_aligned_and_sized() -> None:
    src = PayloadSource(5 * BLOCK, 3, "reuse")
    try:
        buf = src.take()
        assert len(buf) == 5 * BLOCK
        addr = np.frombuffer(buf, dtype=np.uint8).ctypes.data
        assert addr % 4096 == 0
        src.give_back(buf)
    finally:
        src.close()
