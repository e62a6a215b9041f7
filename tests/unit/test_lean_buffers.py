"""Lean ranks: in fresh mode the I/O threads read into buffers lent by the payload ring
and swap them for each write's fresh one, so a rank holds the ring and nothing more;
the footprint helpers read this process's own memory and age."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

import pytest

from mpi_kvbench import footprint
from mpi_kvbench.context import RankContext
from mpi_kvbench.engine import iopool
from mpi_kvbench.engine import payload as pl
from mpi_kvbench.engine.iopool import READ, WRITE, IOPool, Op
from mpi_kvbench.registry import TIERS

OBJ = 4 * 4096


def dram(slots: int):
    cls = TIERS.load("dram")
    tier = cls(cls.Params(), slots * OBJ, OBJ, level="dram")
    tier.open(RankContext())
    return tier


def test_reads_and_writes_share_the_ring_and_stay_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    """No buffer is made beyond the ring (aligned_buffer in the pool would raise), every
    verified read finds the bytes its write stamped, and the ring's buffers all come back."""
    def no_new_buffer(nbytes: int):
        raise AssertionError("the pool made a buffer of its own")

    monkeypatch.setattr(iopool, "aligned_buffer", no_new_buffer)
    depth = 4
    tier = dram(64)
    src = pl.PayloadSource(OBJ, depth, "fresh", ring_bytes=0)
    pool = IOPool([tier], OBJ, depth, src, verify=True)
    crcs: dict[int, tuple[int, int]] = {}
    oks: list[bool] = []

    def work() -> None:
        for rnd in range(4):   # writes, then reads of everything written so far, over and over
            writes = [Op(WRITE, 1000 * rnd + i, dst=0, dst_slot=16 * rnd + i, seq=rnd)
                      for i in range(16)]
            for op, d in zip(writes, pool.run(writes), strict=True):
                crcs[op.dst_slot] = (op.key, d.crc)
            reads = [Op(READ, key, src=0, src_slot=slot, crc=crc) for slot, (key, crc) in crcs.items()]
            oks.extend(d.ok and d.read_bytes == OBJ for d in pool.run(reads))

    worker = threading.Thread(target=work, daemon=True)
    try:
        assert src.lends
        worker.start()
        worker.join(60)   # a buffer lost from the ring shows as writers waiting forever
        assert not worker.is_alive(), "the pool stopped: buffers left the ring"
        assert len(oks) == 16 * (1 + 2 + 3 + 4) and all(oks)
        assert len(set(crcs.values())) == len(crcs) == 64   # every write carried new bytes
    finally:
        if worker.is_alive():   # release the stuck writers: take() raises on an exception
            src._ready.put(RuntimeError("the test gave up"))
        pool.close(wait=not worker.is_alive())
        src.close()
        tier.close()
    held = depth   # one per I/O thread at most; the rest is back in the ring
    assert src._ready.qsize() + src._empty.qsize() >= len(src._buffers) - held


def take_all(src: pl.PayloadSource, n: int, into: list) -> None:
    into.extend(src.take() for _ in range(n))


def test_a_large_object_ring_keeps_spares_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh mode starts with two spares and adds one per stall, up to depth + 2 while they
    fit in ``spare_bytes`` (``io.payload_spare_mb``), else as many as fit, two at least."""
    for spare_bytes, most in ((20 * OBJ, 8 + 10), (4 * OBJ, 8 + 4), (OBJ, 8 + 2), (0, 8 + 2)):
        src = pl.PayloadSource(OBJ, 8, "fresh", ring_bytes=0, spare_bytes=spare_bytes)
        try:
            assert src.ring_bytes == (8 + 2) * OBJ, spare_bytes   # made at set-up
            held: list = []                                       # stalls beyond the first ten
            taker = threading.Thread(target=take_all, args=(src, most, held), daemon=True)
            taker.start()
            taker.join(60)                    # the limit only turns a ring that never grows into a failure
            assert len(held) == most, f"only {len(held)} of {most} buffers could be out at once"
            assert len({id(b) for b in held}) == most
            assert src.ring_bytes == most * OBJ
            assert src.stalls >= most - (8 + 2)
            for buf in held:
                src.give_back(buf)
            for _ in range(100):                                  # more stalls add nothing
                held = [src.take() for _ in range(most)]
                for buf in held:
                    src.give_back(buf)
            assert src.ring_bytes == most * OBJ
        finally:
            src.close()
    reuse = pl.PayloadSource(OBJ, 8, "reuse", ring_bytes=0, spare_bytes=OBJ)   # reuse: untouched
    try:
        assert reuse.ring_bytes == (8 + 2) * OBJ and not reuse.lends
    finally:
        reuse.close()


def test_footprint_reads_this_process() -> None:
    before = footprint.rss_bytes()
    block = bytearray(64 << 20)                       # 64 MiB touched
    block[:: 4096] = b"\1" * len(block[:: 4096])
    assert footprint.rss_bytes() >= before + (60 << 20)
    assert footprint.peak_rss_bytes() >= footprint.rss_bytes()
    del block
    assert 0 < footprint.process_age_s() < 24 * 3600
    if shutil.which("ps"):   # the kernel's start time as ps reads it, in whole seconds
        etimes = int(subprocess.run(["ps", "-o", "etimes=", "-p", str(os.getpid())],
                                    capture_output=True, text=True, check=True).stdout)
        assert abs(footprint.process_age_s() - etimes) <= 2
    fp = footprint.Footprint()
    fp.lap("a")
    fp.lap("a")
    fp.mark("here")
    out = fp.counters()
    assert set(out) == {"setup.a_us", "memory.here_rss_bytes", "peak_rss_bytes"}
    assert out["peak_rss_bytes"] >= out["memory.here_rss_bytes"] > 0


def test_footprint_laps_add_up_per_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    """A phase seen twice gets both laps; each lap runs from the one before, any phase."""
    clock = iter([1.5, 2.0, 4.0])
    monkeypatch.setattr(footprint.time, "perf_counter", lambda: next(clock))
    fp = footprint.Footprint(_t=0.0)
    fp.lap("a")                                       # 0.0 -> 1.5
    fp.lap("b")                                       # 1.5 -> 2.0
    fp.lap("a")                                       # 2.0 -> 4.0
    monkeypatch.undo()
    out = fp.counters()
    assert out["setup.a_us"] == 3_500_000 and out["setup.b_us"] == 500_000
