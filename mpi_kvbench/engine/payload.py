"""Write payloads: incompressible bytes made ahead of use, stamped per 4 KiB block.

``fresh`` (default): generator threads fill a ring of page-aligned buffers with dgen-py
ahead of the writers, so every write carries new bytes. ``reuse``: the ring is filled
once and recycled; only the stamps change. Either way every 4 KiB block starts with a
stamp (object key, write sequence, byte offset), so no two blocks of a run are equal and
a dedup engine finds nothing; zstd finds nothing to compress within its window.

Generation must never limit a run. The source starts one generator thread and adds
another (up to ``max_threads``, by default this rank's share of the node's CPUs) when a
writer finds the ring empty (a stall), or when over the last half ring of takes the
writers took bytes faster than half the generators' measured fill rate (generation keeps
2x headroom). A thread is added only once the newest one has filled a buffer, so a burst
of stalls adds one at a time; idle threads block on the empty queue and cost nothing.
In ``fresh`` mode the ring holds a second ``depth`` of buffers beyond those the writers
hold: ``depth`` large writes that end together find their next buffers ready.

Honest CPU: every byte is made in the thread that asks for it, so ``time.thread_time``
(``CLOCK_THREAD_CPUTIME_ID``) around a fill is its whole cost. A ``Stream`` makes an
object's whole 1 MiB blocks with a ``Generator(max_threads=1)`` (dgen's sequential path,
in the calling thread, one call per buffer) and the rest with ``fill_buffer`` on less
than a block (dgen-py 0.3 runs a ``fill_buffer`` call of two blocks or more on its own
rayon threads whatever ``max_threads`` says; no clock of ours would see that). Each call
releases the GIL. ``generator_cpu_s`` is that clock summed over the generator threads
(and the constructor, which fills the ``reuse`` ring); ``generated_bytes`` is every byte
filled; ``stalls`` counts takes that found no ready buffer. Small objects never go
through ``fill_chunk``: it makes a whole block per call (ten times the CPU per byte at
64 KiB). dgen's own threaded path costs about a quarter less per GB, but its threads
are not ours to clock; ``benchmarks/payload_rate.py`` prints the attributed and the
whole-process CPU side by side.

Verification: a write records the CRC32 of its buffer; a verified read recomputes it
and checks the stamp of every block, so misplaced and corrupted data are both caught.
Without verify, ``stamped`` looks at the stamps of an object's first and last block only
(six words, a few microseconds): enough to catch a read of a region never written or
cut off by truncation (zeros, or the stale bytes of another object), cheap enough for
every read.
"""

from __future__ import annotations

import functools
import mmap
import os
import queue
import struct
import threading
import time
import zlib

import dgen_py
import numpy as np

from mpi_kvbench.layout import MASK64, aligned_buffer

BLOCK = 4096
DGEN_BLOCK = 1 << 20       # dgen's block: fill_buffer runs a larger call on its own threads
GEN_STREAM_BYTES = 1 << 40 # a whole number of blocks
RING_BYTES = 64 << 20      # more than zstd's largest default window (8 MiB at level 19)
HEADROOM = 2.0             # generation capacity kept above the writers' demand
_STAMP = struct.Struct("=3Q")   # a block's stamp: key, write sequence, offset (native uint64)
SPARE_BYTES = 320 << 20    # fresh mode, by default: the most made ahead beyond the I/O threads' own
LOCAL_RANKS_ENV = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE",
                   "SLURM_NTASKS_PER_NODE")


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


def stamped(buf: mmap.mmap | memoryview, key: int, nbytes: int) -> bool:
    """True when the first and last 4 KiB block of the ``nbytes`` object carry ``key`` and
    their own offsets (see the module notes): a cheap guard, not a full check."""
    last = (nbytes // BLOCK - 1) * BLOCK
    key0, _, offset0 = _STAMP.unpack_from(buf, 0)        # struct: a third of numpy's cost here
    key1, _, offset1 = _STAMP.unpack_from(buf, last)
    want = key & MASK64
    return key0 == want and offset0 == 0 and key1 == want and offset1 == last


def checksum(buf: mmap.mmap | memoryview) -> int:
    return zlib.crc32(buf)


def check(buf: mmap.mmap | memoryview, key: int, expected_crc: int) -> bool:
    """True when every block carries ``key`` and its own offset and the CRC matches."""
    words = block_view(buf)
    good = bool(np.all(words[:, 0] == np.uint64(key & MASK64))
                and np.all(words[:, 2] == _offsets(words.shape[0])))
    return good and zlib.crc32(buf) == expected_crc


class Stream:
    """One thread's source of new bytes, all made in that thread: whole dgen blocks from a
    single-threaded Generator in one call per buffer (one GIL round trip; the stream
    stays block-aligned, so no block is made twice), the rest below a block from
    ``fill_buffer`` (no stream: nothing wasted on small objects)."""

    def __init__(self) -> None:
        self._gen: dgen_py.Generator | None = None     # made when a buffer has a whole block

    @staticmethod
    def _new() -> dgen_py.Generator:
        """A 1 TiB stream (dgen-py sizes its state by the stream length), fresh seed each time."""
        return dgen_py.Generator(size=GEN_STREAM_BYTES, dedup_ratio=1, compress_ratio=1,
                                 max_threads=1, seed=int.from_bytes(os.urandom(8), "little") >> 1)

    def fill(self, buf: mmap.mmap | memoryview) -> None:
        with memoryview(buf) as view:
            whole = len(view) - len(view) % DGEN_BLOCK
            done = 0
            while done < whole:
                if self._gen is None:
                    self._gen = self._new()
                n = self._gen.fill_chunk(view[done:whole])
                if done + n < whole:          # the stream ran out (on a block boundary)
                    self._gen = None
                done += n
            if whole < len(view):
                dgen_py.fill_buffer(view[whole:], dedup_ratio=1, compress_ratio=1, max_threads=1)


def generator_cap(env: dict[str, str] | None = None) -> int:
    """Generator threads one rank may use: the CPUs it may run on, divided among the
    ranks of its node unless the launcher already bound it to its own share."""
    env = os.environ if env is None else env
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if allowed < (os.cpu_count() or allowed):
        return max(1, allowed)               # bound by the launcher: this is the rank's share
    for name in LOCAL_RANKS_ENV:
        value = env.get(name, "")
        if value.isdigit() and int(value) > 0:
            return max(1, allowed // int(value))
    return max(1, allowed)


class _Generator(threading.Thread):
    """One generator thread; only it writes its counters (others just read them)."""

    def __init__(self, empty: queue.SimpleQueue, ready: queue.SimpleQueue, index: int) -> None:
        super().__init__(name=f"payload-{index}", daemon=True)
        self.empty, self.ready = empty, ready
        self.stream = Stream()
        self.cpu_s = 0.0           # its own CPU time inside fills
        self.wall_s = 0.0          # wall time inside fills: its fill rate, contention included
        self.bytes = 0             # every byte it filled (0: it has not filled a buffer yet)

    def run(self) -> None:
        while (buf := self.empty.get()) is not None:      # None: close() says stop
            w, c = time.perf_counter(), time.thread_time()
            try:
                self.stream.fill(buf)
            except BaseException as e:   # hand it to the writers: a silent death hangs them
                self.ready.put(e)
                return
            self.cpu_s += time.thread_time() - c
            self.wall_s += time.perf_counter() - w
            self.bytes += len(buf)
            self.ready.put(buf)


class PayloadSource:
    """A ring of aligned buffers kept full of fresh bytes by as many generator threads as
    the writers need (see the module notes)."""

    def __init__(self, object_bytes: int, depth: int, mode: str = "fresh", *, threads: int = 1,
                 max_threads: int | None = None, ring_bytes: int = RING_BYTES,
                 spare_bytes: int = SPARE_BYTES) -> None:
        self.object_bytes = object_bytes
        self.mode = mode
        self.max_threads = max(1, generator_cap() if max_threads is None else max_threads)
        self.stalls = 0
        self.stall_ns = 0          # writers' wait for a ready buffer, summed: what stalls cost
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        self._empty: queue.SimpleQueue = queue.SimpleQueue()
        # at least ring_bytes in the ring, so even reused bytes repeat only beyond the
        # window of any compressor or dedup engine that looks at a stream. In fresh mode the
        # I/O threads keep their buffer (``lend``: one buffer per thread serves its reads
        # and writes alike) and two spares are made at once (a thread takes its next
        # buffer before it gives its last one back); each stall adds one more, up to a
        # second depth (so a wave of writes that all end at once finds its next buffers
        # made) or ``spare_bytes``. Where generation keeps up the ring stays small (memory,
        # and set-up time: faulting in memory is most of a rank's set-up); where it does
        # not, the ring grows to what two cores needed here: two spares cost 8% of storage
        # GB/s and the default 320 MiB none (docs/DESIGN-NOTES.md, "Payload spares").
        count = max(depth + 2, -(-ring_bytes // object_bytes))
        self._most = count
        if mode == "fresh":
            spare = max(2, min(depth + 2, spare_bytes // object_bytes))
            self._most = max(count, depth + spare)
        self._buffers = [aligned_buffer(object_bytes) for _ in range(count)]
        self._generators: list[_Generator] = []
        self._own_cpu_s = 0.0      # the constructor's fills (reuse mode)
        self._own_bytes = 0
        self._lock = threading.Lock()
        self._closed = False
        self._window = max(4, count // 2)      # takes between two looks at the demand
        self._taken = 0
        self._window_bytes = 0
        self._window_t0 = time.perf_counter()
        stream = Stream() if mode == "reuse" else None
        for buf in self._buffers:
            if stream is not None:
                t = time.thread_time()
                stream.fill(buf)
                self._own_cpu_s += time.thread_time() - t
                self._own_bytes += len(buf)
                self._ready.put(buf)
            else:
                self._empty.put(buf)
        if mode == "fresh":
            with self._lock:
                for _ in range(min(max(1, threads), self.max_threads)):
                    self._start_generator()

    # -- what the engine reads ------------------------------------------------------
    @property
    def generator_cpu_s(self) -> float:
        """CPU seconds spent generating, summed over the threads that did it."""
        return self._own_cpu_s + sum(g.cpu_s for g in tuple(self._generators))

    @property
    def generated_bytes(self) -> int:
        return self._own_bytes + sum(g.bytes for g in tuple(self._generators))

    @property
    def ring_bytes(self) -> int:
        """Memory the ring holds: what a rank pays for payload beyond its tiers."""
        return len(self._buffers) * self.object_bytes

    @property
    def threads(self) -> int:
        """Generator threads started so far."""
        return len(self._generators)

    @property
    def capacity_bps(self) -> float | None:
        """What the generators could make, bytes/s: each measured thread's fill rate, an
        unmeasured one counted at their mean; None before any thread has filled."""
        rates = [g.bytes / g.wall_s for g in tuple(self._generators) if g.wall_s > 0]
        if not rates:
            return None
        return sum(rates) / len(rates) * len(self._generators)

    # -- the writers' side ------------------------------------------------------------
    def take(self) -> mmap.mmap:
        """A buffer of new bytes. When none is ready: counts a stall, adds a generator and
        (fresh mode, within the budget) one more buffer. Raises if generation failed,
        rather than waiting forever."""
        try:
            buf = self._ready.get_nowait()
        except queue.Empty:
            t0 = time.perf_counter_ns()
            with self._lock:
                self.stalls += 1
                self._grow()
                more = len(self._buffers) < self._most and not self._closed
                if more:
                    index = len(self._buffers)
                    self._buffers.append(None)      # claimed; made outside the lock
            if more:   # the writer waits anyway: it makes the ring's next spare itself
                self._buffers[index] = buf = aligned_buffer(self.object_bytes)
                self._empty.put(buf)
            buf = self._ready.get()
            waited = time.perf_counter_ns() - t0
            with self._lock:
                self.stall_ns += waited
        if isinstance(buf, BaseException):
            self._ready.put(buf)                 # every other writer fails the same way
            raise RuntimeError("payload generation failed") from buf
        if self.mode == "fresh":
            self._note_demand(len(buf))
        return buf

    def give_back(self, buf: mmap.mmap) -> None:
        (self._ready if self.mode == "reuse" else self._empty).put(buf)

    @property
    def lends(self) -> bool:
        """Whether I/O threads keep a ring buffer as their own (``lend``) and swap it for
        each write's (fresh mode: a buffer given back is refilled before reuse, so the bytes
        a read left in it never reach a write)."""
        return self.mode == "fresh"

    def lend(self) -> mmap.mmap:
        """A buffer for an I/O thread to keep for its reads: an empty one when there is one
        (no generated bytes lost), else a ready one. Not a stall: no write waits on it."""
        try:
            buf = self._empty.get_nowait()
        except queue.Empty:
            buf = self._ready.get()
            if isinstance(buf, BaseException):
                self._ready.put(buf)
                raise RuntimeError("payload generation failed") from buf
        return buf

    def close(self) -> None:
        """Stops every generator thread and waits for it."""
        with self._lock:
            self._closed = True
            generators = tuple(self._generators)
        for _ in generators:
            self._empty.put(None)
        for g in generators:
            g.join()

    # -- growth ------------------------------------------------------------------------
    def _note_demand(self, nbytes: int) -> None:
        """Every window of takes, compares the writers' rate with the generators'."""
        with self._lock:
            self._taken += 1
            self._window_bytes += nbytes
            if self._taken % self._window:
                return
            now = time.perf_counter()
            demand = self._window_bytes / max(now - self._window_t0, 1e-9)
            self._window_bytes, self._window_t0 = 0, now
            capacity = self.capacity_bps
            if capacity is not None and HEADROOM * demand > capacity:
                self._grow()

    def _grow(self) -> None:
        """One more generator thread, if allowed and the newest one is already at work.
        Called with the lock held."""
        if self._closed or self.mode != "fresh" or len(self._generators) >= self.max_threads:
            return
        if self._generators and self._generators[-1].bytes == 0:
            return
        self._start_generator()

    def _start_generator(self) -> None:
        g = _Generator(self._empty, self._ready, len(self._generators))
        self._generators.append(g)
        g.start()
