"""The buffer pool: ``num_buffers`` aligned buffers cycle between one producer thread
that fills them with fresh dgen-py bytes and the writer that drains them.

Why a pool: a 24 GB shard streams through 4 x 32 MiB (128 MiB) of memory instead of
being built whole, and generation runs while the previous chunk is being written. The
producer starts before the ranks' start barrier and fills every buffer, so the writer
never waits at the start; afterwards, each time the writer finds no filled buffer it
counts a stall (and the time it waited): generation held the device back.

Every 4 KiB block is stamped like a KV payload (key = rank and chunk number, sequence,
offset) and, for a verified restore, each chunk's CRC is kept (4 bytes per chunk), so the
restore can be checked without keeping the data.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import dgen_py

from mpi_kvbench.engine import payload as pl
from mpi_kvbench.layout import aligned_buffer

_STOP = object()


def chunk_key(rank: int, index: int) -> int:
    return (rank << 40) | index


class BufferPool:
    """``num_buffers`` buffers of ``chunk_bytes``, each aligned for O_DIRECT."""

    def __init__(self, num_buffers: int, chunk_bytes: int) -> None:
        self.chunk_bytes = chunk_bytes
        self.buffers = [aligned_buffer(chunk_bytes) for _ in range(num_buffers)]

    @property
    def nbytes(self) -> int:
        return len(self.buffers) * self.chunk_bytes

    def close(self) -> None:
        for b in self.buffers:
            b.close()
        self.buffers = []


def chunk_sizes(total_bytes: int, chunk_bytes: int) -> list[int]:
    full, rest = divmod(total_bytes, chunk_bytes)
    return [chunk_bytes] * full + ([rest] if rest else [])


class Producer:
    """Fills the pool's buffers in chunk order on its own thread; ``chunks()`` hands them
    to the writer one at a time and takes each back when the writer asks for the next."""

    def __init__(self, pool: BufferPool, total_bytes: int, rank: int, threads: int = 1,
                 checksums: bool = True) -> None:
        self.sizes = chunk_sizes(total_bytes, pool.chunk_bytes)
        self.rank = rank
        self.checksums = checksums     # only a verified restore needs them: CPU saved
        self.crcs = [0] * len(self.sizes)
        self.stalls = 0
        self.stall_s = 0.0
        self.gen_cpu_s = 0.0
        self._gen = dgen_py.Generator(size=max(total_bytes, 1), dedup_ratio=1, compress_ratio=1,
                                      max_threads=threads)
        self._empty: queue.SimpleQueue = queue.SimpleQueue()
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        for b in pool.buffers:
            self._empty.put(b)
        # the pool is full before the window opens: a stall then means generation fell
        # behind the device, not that the pipeline was still filling
        self._primed = threading.Event()
        self._prime_count = min(len(pool.buffers), len(self.sizes))
        if not self._prime_count:
            self._primed.set()
        self._thread = threading.Thread(target=self._run, name="ckpt-producer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for i, size in enumerate(self.sizes):
                buf = self._empty.get()
                if buf is _STOP:
                    return
                c = time.thread_time()
                view = memoryview(buf)[:size]
                done = 0
                while done < size:
                    done += self._gen.fill_chunk(view[done:])
                pl.stamp(view, chunk_key(self.rank, i), i)
                if self.checksums:
                    self.crcs[i] = pl.checksum(view)
                self.gen_cpu_s += time.thread_time() - c
                view.release()
                self._ready.put(buf)
                if i + 1 == self._prime_count:
                    self._primed.set()
        except BaseException as exc:   # hand it to the writer: a silent death would hang it
            self._ready.put(exc)
            self._primed.set()

    def wait_primed(self) -> None:
        """Returns once every buffer of the pool holds a chunk (or the producer failed)."""
        self._primed.wait()

    def chunks(self) -> Iterator[memoryview]:
        """Filled chunks in order; the previous one goes back to the producer when the
        next is asked for (so a writer must be done with a chunk before it asks)."""
        for size in self.sizes:
            try:
                buf = self._ready.get_nowait()
            except queue.Empty:
                self.stalls += 1
                t = time.perf_counter()
                buf = self._ready.get()
                self.stall_s += time.perf_counter() - t
            if isinstance(buf, BaseException):
                raise buf
            view = memoryview(buf)[:size]
            yield view
            view.release()
            self._empty.put(buf)

    def close(self) -> None:
        self._empty.put(_STOP)
        self._thread.join(timeout=30)
