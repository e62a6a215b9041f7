"""KV objects: chunks of ``chunk_tokens`` tokens keyed by a prefix-hash chain, their size
on one rank, and the aligned memory they move through.

A request's prompt is a sequence of content segments ``(identity, tokens)``; the tokens
of a chunk are named by (segment identity, offset) pieces. A chunk's key hashes those
pieces together with the key of the chunk before it, so two requests that share a
prefix share exactly its chunks, and changing any chunk changes every key after it.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mpi_kvbench.models import ModelSpec

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
ALIGN = 4096        # O_DIRECT alignment: every object is a whole number of these


def round_up(n: int, align: int = ALIGN) -> int:
    return -(-n // align) * align


MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)   # Python 3.11 lacks the name


def aligned_buffer(nbytes: int) -> mmap.mmap:
    """Page-aligned memory (as O_DIRECT needs), faulted in now rather than mid-run.

    Transparent huge pages where the kernel allows: O_DIRECT pins every page of a buffer
    for each I/O, and 2 MiB pages cut that kernel CPU cost about six-fold here (and hand
    the device larger segments)."""
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    try:   # one call faults every page in (Linux 5.14+), several times faster than touching
        buf.madvise(MADV_POPULATE_WRITE)
    except (OSError, ValueError):
        np.frombuffer(buf, dtype=np.uint8)[:: mmap.PAGESIZE] = 0
    return buf


@dataclass(frozen=True, slots=True)
class Chain:
    """How far a chunk chain got: the keys of its full chunks, the last key, and the pieces
    (identity, offset, tokens) of the unfinished chunk, so more tokens extend it without
    hashing the earlier ones again (a conversation's next turn extends its context)."""

    keys: tuple[int, ...] = ()
    prev: int = 0
    pieces: tuple[tuple[int, int, int], ...] = ()
    tokens: int = 0               # in the unfinished chunk


_ONE_PIECE = struct.Struct("<QQQQ")   # the previous key and one piece: most chunks


def _chain_key(prev: int, pieces: list[tuple[int, int, int]]) -> int:
    """blake2b-64 of the previous key then each piece, little-endian 64-bit words."""
    if len(pieces) == 1:
        data = _ONE_PIECE.pack(prev, *pieces[0])
    else:
        data = struct.pack(f"<{1 + 3 * len(pieces)}Q", prev, *[v for p in pieces for v in p])
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def extend_chain(chain: Chain, segments: Sequence[tuple[int, int]], chunk_tokens: int) -> Chain:
    """``chain`` followed by the tokens of ``segments``: ``extend_chain(Chain(), a + b, n)``
    equals ``extend_chain(extend_chain(Chain(), a, n), b, n)``."""
    keys = list(chain.keys)
    prev = chain.prev
    pieces = list(chain.pieces)
    room = chunk_tokens - chain.tokens
    for ident, length in segments:
        ident &= MASK64
        pos = 0
        while pos < length:
            take = min(room, length - pos)
            pieces.append((ident, pos, take))
            pos += take
            room -= take
            if room == 0:
                prev = _chain_key(prev, pieces)
                keys.append(prev)
                pieces, room = [], chunk_tokens
    return Chain(tuple(keys), prev, tuple(pieces), chunk_tokens - room)


def chunk_keys(segments: Sequence[tuple[int, int]], chunk_tokens: int) -> list[int]:
    """Keys (64-bit) of every full chunk of the token stream ``segments`` describes."""
    return list(extend_chain(Chain(), segments, chunk_tokens).keys)


def layer_key(chunk_key: int, layer: int) -> int:
    """The key of one layer's object of a chunk (layer-wise layout)."""
    return (chunk_key + (layer + 1) * GOLDEN) & MASK64


@dataclass(frozen=True)
class Geometry:
    """How big one object is on one rank, and how many objects a chunk makes."""

    model: ModelSpec
    chunk_tokens: int
    tp: int
    layout: str = "chunk"          # or "layer"

    @property
    def objects_per_chunk(self) -> int:
        return self.model.layers if self.layout == "layer" else 1

    @property
    def payload_bytes(self) -> int:
        """The KV bytes one object holds on one rank."""
        per_chunk = self.chunk_tokens * self.model.bytes_per_token_per_rank(self.tp)
        return per_chunk // self.objects_per_chunk

    @property
    def object_bytes(self) -> int:
        """The bytes each object occupies and moves: rounded up to 4 KiB for O_DIRECT."""
        return round_up(self.payload_bytes)

    def object_keys(self, chunk_key_list: Sequence[int]) -> list[int]:
        if self.layout == "chunk":
            return list(chunk_key_list)
        return [layer_key(k, layer) for k in chunk_key_list for layer in range(self.model.layers)]
