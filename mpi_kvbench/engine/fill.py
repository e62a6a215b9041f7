"""Device preconditioning the way SSD vendors do it: sequential writes of the whole usable
space, ``fills`` times over, before anything is measured.

A flash device measured fresh out of a trim writes faster than it will after its spare
blocks are used up; writing its capacity twice reaches the steady state the SNIA PTS
asks for. Here the usable space is the storage tier's slab (its slots; the tier already
keeps it within the free space it may use), written slot after slot in object-sized
blocks (megabytes at real chunk sizes), ``io_depth`` in flight, each block of new
incompressible bytes. Not measured, and kept apart from the share-of-tier fill
(``run.precondition``), which fills the cache rather than the device.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mpi_kvbench.engine.payload import BLOCK
from mpi_kvbench.layout import aligned_buffer
from mpi_kvbench.tiers.base import Tier


@dataclass(frozen=True)
class Filled:
    """What one rank wrote: bytes, objects (blocks) and how long it took."""

    bytes: int
    blocks: int
    elapsed_ns: int


def blocks_for(tier: Tier, fills: float) -> int:
    """How many object-sized blocks ``fills`` times the tier's usable space is."""
    return round(fills * tier.slots)


def fill_device(tier: Tier, fills: float, io_depth: int, stop: Callable[[], object] = lambda: None,
                progress: Callable[[int, int], None] = lambda done, total: None) -> Filled:
    """Writes ``fills`` x the tier's slots, slot 0 upwards and round again; ``stop``
    ends it after the blocks in flight; ``progress(done, total)`` is called per block."""
    total = blocks_for(tier, fills)
    if total <= 0 or tier.share == "reader":
        return Filled(0, 0, 0)
    lock = threading.Lock()
    state = {"next": 0, "done": 0, "bytes": 0}

    def worker() -> None:
        buf = aligned_buffer(tier.object_bytes)
        words = np.frombuffer(buf, dtype=np.uint64)
        words[:] = np.random.default_rng().integers(0, 2**63, size=words.size, dtype=np.uint64)
        try:
            while True:
                with lock:
                    i = state["next"]
                    if i >= total or stop():
                        return
                    state["next"] = i + 1
                words[::BLOCK // 8] = i   # every 4 KiB block of every write is new
                moved = tier.write(i % tier.slots, memoryview(buf))
                with lock:
                    state["done"] += 1
                    state["bytes"] += moved
                    done = state["done"]
                progress(done, total)
        finally:
            del words   # the view must go before the buffer closes
            buf.close()

    threads = max(1, min(io_depth, total))
    t0 = time.perf_counter_ns()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for f in [pool.submit(worker) for _ in range(threads)]:
            f.result()
    return Filled(state["bytes"], state["done"], time.perf_counter_ns() - t0)
