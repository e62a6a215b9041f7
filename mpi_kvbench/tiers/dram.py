"""Host-DRAM tier: one pre-allocated, pre-faulted buffer cut into slots.

No allocation happens per object, and page faults are taken at set-up, not in the
measured phase. Copies go through numpy, which releases the GIL.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpi_kvbench.context import RankContext
from mpi_kvbench.layout import aligned_buffer
from mpi_kvbench.tiers.base import Tier


class HostSlots:
    """A page-aligned anonymous mapping viewed as a (slots, object_bytes) array."""

    def __init__(self, slots: int, object_bytes: int) -> None:
        self._map = aligned_buffer(max(1, slots * object_bytes))
        self.array = np.frombuffer(self._map, dtype=np.uint8)[: slots * object_bytes].reshape(
            slots, object_bytes)

    def write(self, slot: int, data: memoryview) -> int:
        np.copyto(self.array[slot], np.frombuffer(data, dtype=np.uint8))
        return len(data)

    def read(self, slot: int, out: memoryview) -> int:
        np.copyto(np.frombuffer(out, dtype=np.uint8), self.array[slot])
        return len(out)

    def close(self) -> None:
        self.array = None
        self._map.close()


class DramTier(Tier):
    """Host memory, pre-allocated at set-up."""

    name = "dram"

    def open(self, ctx: RankContext) -> None:
        self._mem = HostSlots(self.slots, self.object_bytes)

    def write(self, slot: int, data: memoryview) -> int:
        return self._mem.write(slot, data)

    def read(self, slot: int, out: memoryview) -> int:
        return self._mem.read(slot, out)

    def close(self) -> None:
        self._mem.close()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "backing": "host memory"}
