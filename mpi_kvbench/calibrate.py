"""Raw O_DIRECT bandwidth of a path, with the run's object size and I/O depth.

This is the yardstick for the run: the same tier code, block size and concurrency, with
no cache logic and no request structure, so ``storage_throughput / calibrated`` says how
much of the device the benchmark itself leaves on the table.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from mpi_kvbench.context import RankContext
from mpi_kvbench.engine.iopool import READ, WRITE, IOPool, Op
from mpi_kvbench.engine.payload import PayloadSource
from mpi_kvbench.tiers.storage import StorageTier


def calibrate(params: StorageTier.Params, ctx: RankContext, object_bytes: int, io_depth: int,
              size_bytes: int) -> dict[str, Any]:
    """Writes then reads ``size_bytes`` through a fresh slab file; removes it after. Its
    own run id keeps the file (and a scratch directory) apart from the run's."""
    tier = StorageTier(params, size_bytes, object_bytes, level="storage")
    tier.open(dataclasses.replace(ctx, run_id=f"{ctx.run_id}-calibrate"))
    tier.unlink()   # nobody else opens it: nameless from the start, so nothing can leak
    payload = pool = None
    try:
        payload = PayloadSource(object_bytes, io_depth, "reuse")
        pool = IOPool([tier], object_bytes, io_depth, payload, verify=False)
        n = tier.slots
        figures: dict[str, Any] = {"path": tier.path, "fs_type": tier.fs, "o_direct": tier.o_direct,
                                   "block_bytes": object_bytes, "io_depth": io_depth,
                                   "bytes": n * object_bytes}
        for name, kind in (("write", WRITE), ("read", READ)):
            ops = [Op(kind, key=i, src=0, src_slot=i, dst=0, dst_slot=i, seq=i) for i in range(n)]
            t0 = time.perf_counter_ns()
            pool.run(ops)
            figures[f"{name}_gbps"] = round(n * object_bytes / (time.perf_counter_ns() - t0), 4)
        return figures
    finally:   # the directories it made go too, whatever failed
        if pool is not None:
            pool.close()
        if payload is not None:
            payload.close()
        tier.close()
