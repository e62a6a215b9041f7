"""A writer's stream of payload, as the I/O pool makes it, for the payload tests."""

from __future__ import annotations

import hashlib

from mpi_kvbench.engine import payload as pl
from mpi_kvbench.engine.payload import BLOCK, PayloadSource

STAMP = 24            # bytes of a block's stamp: key, write sequence, offset


def stream_blocks(source: PayloadSource, total: int) -> tuple[float, int, int, int]:
    """Takes, stamps and 'writes' buffers as the I/O pool does (few keys, rewritten often),
    ``total`` bytes in all. Returns (zstd level-3 size / raw size, blocks, distinct blocks,
    distinct blocks once the stamps are cut off). Needs zstandard."""
    import zstandard

    comp = zstandard.ZstdCompressor(level=3).compressobj()
    packed = written = blocks = seq = 0
    whole: set[bytes] = set()
    bare: set[bytes] = set()
    while written < total:
        buf = source.take()
        seq += 1
        try:
            pl.stamp(buf, 7 + seq % 5, seq)
            raw = bytes(buf)
        finally:
            source.give_back(buf)
        packed += len(comp.compress(raw))
        for off in range(0, len(raw), BLOCK):
            whole.add(hashlib.blake2b(raw[off:off + BLOCK], digest_size=16).digest())
            bare.add(hashlib.blake2b(raw[off + STAMP:off + BLOCK], digest_size=16).digest())
            blocks += 1
        written += len(raw)
    packed += len(comp.flush())
    return packed / written, blocks, len(whole), len(bare)
