"""The I/O pool: ``io_depth`` threads carry out operations and time each one.

Each operation is timed in the thread that does it, around the tier call alone, with
``perf_counter_ns``; the tier calls release the GIL (preadv/pwritev, numpy and torch
copies), so the threads overlap on the device. ``submit`` hands an operation to the
threads and reports its ``Done`` (or its exception) through a callback; ``run`` carries
out a batch and waits. Metrics are recorded afterwards by the engine's thread, so no
histogram is ever shared between threads.

Fast paths a tier may offer (``tiers.base``): a tier that ``makes_payload`` produces a
WRITE's bytes itself (KV born on the GPU) and the pool takes no host payload; a MOVE that
one tier can do in one call (``copy_to``/``copy_from``: HBM to or from a DRAM slot) is
done so, without the bounce through this thread's pageable buffer; any other copy that
touches a tier with a ``staging_buffer`` (pinned, for a GPU) bounces through that.

Every read through a host buffer, verify or not, is checked cheaply (``payload.stamped``):
a short read or an object whose first or last block lacks its stamp is a read of a region
never written or truncated away. Reads of bytes another rank writes (``crc`` -1: a TP
group's shared file) are not, nor any read of a hierarchy with a tier that ignores the
bytes (``needs_payload`` False: what it demotes carries no stamps).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mpi_kvbench.engine import payload as pl
from mpi_kvbench.layout import aligned_buffer
from mpi_kvbench.tiers.base import Tier

READ, WRITE, MOVE, DROP = 0, 1, 2, 3


@dataclass(slots=True, eq=False)    # identity: the engine tracks each planned op
class Op:
    kind: int            # READ, WRITE, MOVE (read src, then write dst) or DROP (delete src)
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
    stamp_checked: bool = False   # the read's stamps were looked at (verify or not)
    stamp_ok: bool = True         # ... and the whole object arrived stamped with its key


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
        self._running: dict[int, tuple[Op, int]] = {}   # I/O thread -> its op, since when
        # a tier that ignores the bytes (null) passes zeros on when it demotes: below it no
        # object is sure to carry its stamps, so none is checked
        self._stamps_real = all(t.needs_payload for t in self.tiers)

    def oldest(self) -> tuple[Op, int] | None:
        """The operation in flight the longest and when it started (for the watchdog)."""
        return min(list(self._running.values()), key=lambda r: r[1], default=None)

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
        """This thread's own buffer: lent by the payload ring in fresh mode, so a thread
        holds one object's worth whether it reads or writes."""
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = (self.payload.lend() if self.payload.lends
                                     else aligned_buffer(self.object_bytes))
        return buf

    def _staging(self, index: int) -> Any:
        """Tier ``index``'s staging buffer for this thread (made once), or None."""
        cache = getattr(self._local, "staging", None)
        if cache is None:
            cache = self._local.staging = {}
        if index not in cache:
            cache[index] = self.tiers[index].staging_buffer()
        return cache[index]

    def _bounce(self, op: Op) -> Any:
        """Where a read lands: the staging buffer of a tier the op touches (the
        destination's first), else this thread's own buffer."""
        for index in (op.dst, op.src) if op.kind == MOVE else (op.src,):
            buf = self._staging(index)
            if buf is not None:
                return buf
        return self._buffer()

    def _read_back(self, index: int, slot: int) -> Any:
        """Tier ``index``'s object in ``slot`` in host memory, for verify mode (untimed)."""
        buf = self._staging(index)
        buf = self._buffer() if buf is None else buf
        self.tiers[index].read(slot, buf)
        return buf

    def _produce(self, op: Op) -> Done:
        """A WRITE whose tier makes the bytes itself; only that call is timed. In verify
        mode the checksum is taken from a read-back of the slot, outside the timing."""
        tier = self.tiers[op.dst]
        t0 = time.perf_counter_ns()
        nwrite = tier.produce(op.dst_slot, op.key, op.seq)
        t1 = time.perf_counter_ns()
        crc = pl.checksum(self._read_back(op.dst, op.dst_slot)) if self.verify else 0
        return Done(t0, t1, 0, t1 - t0, 0, nwrite, crc, True)

    def _move_direct(self, op: Op) -> Done | None:
        """A MOVE done in one call when a tier can copy straight to or from the other (None:
        neither can). That one copy reads the source and writes the destination at once,
        so its time is recorded as both the read and the write (each tier was busy for all
        of it), and its bytes count on both tiers, as for a two-call move."""
        src, dst = self.tiers[op.src], self.tiers[op.dst]
        t0 = time.perf_counter_ns()
        moved = src.copy_to(op.src_slot, dst, op.dst_slot)
        if moved is None:
            moved = dst.copy_from(op.dst_slot, src, op.src_slot)
        t1 = time.perf_counter_ns()
        if moved is None:
            return None
        ok = True
        if self.verify and op.crc >= 0:   # check what arrived, untimed
            landed = dst.host_slot(op.dst_slot)
            if landed is None:
                landed = self._read_back(op.dst, op.dst_slot)
            ok = pl.check(landed, op.key, op.crc)
        return Done(t0, t1, t1 - t0, t1 - t0, moved, moved, op.crc, ok)

    def _do(self, op: Op) -> Done:
        me = threading.get_ident()
        self._running[me] = (op, time.perf_counter_ns())
        try:
            return self._carry_out(op)
        finally:
            del self._running[me]

    def _carry_out(self, op: Op) -> Done:
        clock = time.perf_counter_ns
        if op.kind == DROP:   # an evicted object deleted where deleting is I/O (object storage)
            t0 = clock()
            self.tiers[op.src].drop(op.src_slot)
            t1 = clock()
            return Done(t0, t1, 0, 0, 0, 0, 0, True)
        if op.kind == WRITE and self.tiers[op.dst].makes_payload:
            return self._produce(op)
        if op.kind == MOVE:
            done = self._move_direct(op)
            if done is not None:
                return done
        if op.kind == WRITE and not self.tiers[op.dst].needs_payload:
            t0 = clock()   # a tier that ignores the bytes (null) gets no fresh payload
            nwrite = self.tiers[op.dst].write(op.dst_slot, self._buffer())
            t1 = clock()
            return Done(t0, t1, 0, t1 - t0, 0, nwrite, 0, True)
        if op.kind == WRITE:
            buf = self.payload.take()
            lends = self.payload.lends
            if lends:   # the fresh buffer becomes this thread's own; its old one is refilled
                old, self._local.buf = getattr(self._local, "buf", None), buf
                if old is not None:
                    self.payload.give_back(old)
            try:
                pl.stamp(buf, op.key, op.seq)
                crc = pl.checksum(buf) if self.verify else 0
                t0 = clock()
                nwrite = self.tiers[op.dst].write(op.dst_slot, buf)
                t1 = clock()
            finally:
                if not lends:
                    self.payload.give_back(buf)
            return Done(t0, t1, 0, t1 - t0, 0, nwrite, crc, True)
        buf = self._bounce(op)
        t0 = clock()
        nread = self.tiers[op.src].read(op.src_slot, buf)
        t1 = clock()
        ok = pl.check(buf, op.key, op.crc) if self.verify and op.crc >= 0 else True
        checked = op.crc >= 0 and self._stamps_real
        stamp_ok = not checked or (nread >= self.object_bytes
                                   and pl.stamped(buf, op.key, self.object_bytes))
        if op.kind == READ:
            return Done(t0, t1, t1 - t0, 0, nread, 0, op.crc, ok, checked, stamp_ok)
        t2 = clock()
        nwrite = self.tiers[op.dst].write(op.dst_slot, buf)
        t3 = clock()
        return Done(t0, t3, t1 - t0, t3 - t2, nread, nwrite, op.crc, ok, checked, stamp_ok)

    def close(self, wait: bool = True) -> None:
        """``wait=False`` after a stall: a thread stuck in a device call is left behind."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
