"""Write payloads: incompressible bytes made ahead of use, stamped per 4 KiB block.

``fresh`` (default): a generator thread fills a ring of page-aligned buffers with dgen-py
ahead of the writers, so every write carries new bytes. ``reuse``: the ring is filled
once and recycled; only the stamps change. Either way every 4 KiB block starts with a
stamp (object key, write sequence, byte offset), so no two blocks of a run are equal and
a dedup engine finds nothing; zstd finds nothing to compress within its window.

Verification: a write records the CRC32 of its buffer; a verified read recomputes it
and checks the stamp of every block, so misplaced and corrupted data are both caught.
"""

from __future__ import annotations

import functools
import mmap
import os
import queue
import threading
import time
import zlib

import dgen_py
import numpy as np

from mpi_kvbench.layout import MASK64, aligned_buffer

BLOCK = 4096
GEN_STREAM_BYTES = 1 << 40
RING_BYTES = 64 << 20      # more than zstd's largest default window (8 MiB at level 19)


def block_view(buf: mmap.mmap | memoryview) -> np.ndarray:
    """The buffer as rows of one 4 KiB block each, in uint64 words."""
    return np.frombuffer(buf, dtype=np.uint64).reshape(-1, BLOCK // 8)


@functools.lru_cache(maxsize=8)
def _offsets(blocks: int) -> np.ndarray:
    """Byte offsets of the blocks of an object: made once per size, not once per write."""
    out = np.arange(blocks, dtype=np.uint64) * BLOCK
    out.flags.writeable = False
    return out


def stamp(buf: mmap.mmap, key: int, seq: int) -> None:
    words = block_view(buf)
    words[:, 0] = key & MASK64
    words[:, 1] = seq
    words[:, 2] = _offsets(words.shape[0])


def checksum(buf: mmap.mmap | memoryview) -> int:
    return zlib.crc32(buf)


def check(buf: mmap.mmap | memoryview, key: int, expected_crc: int) -> bool:
    """True when every block carries ``key`` and its own offset and the CRC matches."""
    words = block_view(buf)
    good = bool(np.all(words[:, 0] == np.uint64(key & MASK64))
                and np.all(words[:, 2] == _offsets(words.shape[0])))
    return good and zlib.crc32(buf) == expected_crc


class PayloadSource:
    """A ring of aligned buffers kept full of fresh bytes by one generator thread."""

    def __init__(self, object_bytes: int, depth: int, mode: str = "fresh") -> None:
        self.object_bytes = object_bytes
        self.mode = mode
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        self._empty: queue.SimpleQueue = queue.SimpleQueue()
        # at least RING_BYTES in the ring, so even reused bytes repeat only beyond the
        # window of any compressor or dedup engine that looks at a stream
        count = max(depth + 2, -(-RING_BYTES // object_bytes))
        self._buffers = [aligned_buffer(object_bytes) for _ in range(count)]
        self._gen = self._new_generator()
        self.generated_bytes = 0
        self.generator_cpu_s = 0.0
        self.stalls = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for buf in self._buffers:
            if mode == "reuse":
                self._fill(buf)
                self._ready.put(buf)
            else:
                self._empty.put(buf)
        if mode == "fresh":
            self._thread = threading.Thread(target=self._run, name="payload", daemon=True)
            self._thread.start()

    @staticmethod
    def _new_generator() -> dgen_py.Generator:
        """A 1 TiB stream (dgen-py sizes its state by the stream length), fresh seed each time."""
        return dgen_py.Generator(size=GEN_STREAM_BYTES, dedup_ratio=1, compress_ratio=1,
                                 max_threads=1, seed=int.from_bytes(os.urandom(8), "little") >> 1)

    def _fill(self, buf: mmap.mmap) -> None:
        t = time.thread_time()
        if self._gen.fill_chunk(buf) < len(buf):
            self._gen = self._new_generator()
            self._gen.fill_chunk(buf)
        self.generator_cpu_s += time.thread_time() - t
        self.generated_bytes += len(buf)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                buf = self._empty.get(timeout=0.1)
            except queue.Empty:
                continue
            self._fill(buf)
            self._ready.put(buf)

    def take(self) -> mmap.mmap:
        """A buffer of new bytes; counts a stall when the generator is behind."""
        try:
            return self._ready.get_nowait()
        except queue.Empty:
            self.stalls += 1
            return self._ready.get()

    def give_back(self, buf: mmap.mmap) -> None:
        (self._ready if self.mode == "reuse" else self._empty).put(buf)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
