"""The I/O pool: ``io_depth`` threads carry out operations and time each one.

Each operation is timed in the thread that does it, around the tier call alone, with
``perf_counter_ns``; the tier calls release the GIL (preadv/pwritev, numpy and torch
copies), so the threads overlap on the device. ``submit`` hands an operation to the
threads and reports its ``Done`` (or its exception) through a callback; ``run`` carries
out a batch and waits. Metrics are recorded afterwards by the engine's thread, so no
histogram is ever shared between threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mpi_kvbench.engine import payload as pl
from mpi_kvbench.layout import aligned_buffer
from mpi_kvbench.tiers.base import Tier

READ, WRITE, MOVE = 0, 1, 2


@dataclass(slots=True, eq=False)    # identity: the engine tracks each planned op
class Op:
    kind: int            # READ, WRITE or MOVE (read src, then write dst)
    key: int
    src: int = -1        # tier index read from
    src_slot: int = -1
    dst: int = -1        # tier index written to
    dst_slot: int = -1
    crc: int = 0         # expected checksum of what is read (verify mode); -1: unknown
    seq: int = 0         # write sequence number, stamped into the payload


@dataclass(slots=True)
class Done:
    start: int           # clock when the op's first tier call began
    end: int             # clock when its last tier call ended
    read_ns: int         # time inside the read call (0 for WRITE)
    write_ns: int        # time inside the write call (0 for READ)
    read_bytes: int
    write_bytes: int
    crc: int             # checksum of the written bytes (verify mode)
    ok: bool             # verify passed (always True when not verifying)


class IOPool:
    """Threads with one page-aligned buffer each, plus the payload ring for writes."""

    def __init__(self, tiers: Sequence[Tier], object_bytes: int, depth: int,
                 payload: pl.PayloadSource, verify: bool) -> None:
        self.tiers = list(tiers)
        self.object_bytes = object_bytes
        self.payload = payload
        self.verify = verify
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="io")

    def run(self, ops: Sequence[Op]) -> list[Done]:
        """Runs every op, at most ``depth`` at a time; returns when all are done."""
        if not ops:
            return []
        return list(self._pool.map(self._do, ops))

    def submit(self, op: Op, report: Callable[[Op, Done | BaseException], None]) -> None:
        """Starts ``op`` when a thread is free; ``report`` gets its Done or its exception
        (on the I/O thread: it should only hand them over)."""
        future = self._pool.submit(self._do, op)
        future.add_done_callback(lambda f: report(op, f.exception() or f.result()))

    def _buffer(self):
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = aligned_buffer(self.object_bytes)
        return buf

    def _do(self, op: Op) -> Done:
        clock = time.perf_counter_ns
        if op.kind == WRITE and not self.tiers[op.dst].needs_payload:
            t0 = clock()   # a tier that ignores the bytes (null) gets no fresh payload
            nwrite = self.tiers[op.dst].write(op.dst_slot, self._buffer())
            t1 = clock()
            return Done(t0, t1, 0, t1 - t0, 0, nwrite, 0, True)
        if op.kind == WRITE:
            buf = self.payload.take()
            try:
                pl.stamp(buf, op.key, op.seq)
                crc = pl.checksum(buf) if self.verify else 0
                t0 = clock()
                nwrite = self.tiers[op.dst].write(op.dst_slot, buf)
                t1 = clock()
            finally:
                self.payload.give_back(buf)
            return Done(t0, t1, 0, t1 - t0, 0, nwrite, crc, True)
        buf = self._buffer()
        t0 = clock()
        nread = self.tiers[op.src].read(op.src_slot, buf)
        t1 = clock()
        ok = pl.check(buf, op.key, op.crc) if self.verify and op.crc >= 0 else True
        if op.kind == READ:
            return Done(t0, t1, t1 - t0, 0, nread, 0, op.crc, ok)
        t2 = clock()
        nwrite = self.tiers[op.dst].write(op.dst_slot, buf)
        t3 = clock()
        return Done(t0, t3, t1 - t0, t3 - t2, nread, nwrite, op.crc, ok)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
