"""Host-DRAM tier: one pre-allocated, pre-faulted buffer cut into slots.

No allocation happens per object, and page faults are taken at set-up, not in the
measured phase. Copies go through numpy, which releases the GIL.

When torch sees a GPU the buffer is also page-locked (``cudaHostRegister``), so the HBM
tier copies to and from a slot by DMA at the link's rate, without the driver's bounce
through its own pinned buffer (pageable copies ran at a tenth of that). The slots stay
the same mapping, with the same transparent huge pages; ``host_slot`` hands a slot to
the HBM tier for that one direct copy. Without a GPU nothing is pinned: pinning would
fail or buy nothing.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import numpy as np

from mpi_kvbench.context import RankContext
from mpi_kvbench.environment import memory_bytes
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.layout import aligned_buffer
from mpi_kvbench.tiers.base import Tier

HOST_REGISTER_PORTABLE = 1    # cudaHostRegisterPortable: pinned for every CUDA context


def cuda_torch() -> Any | None:
    """torch when it sees a GPU, else None; without an NVIDIA driver torch is not even
    imported (the import takes seconds and would find nothing)."""
    if not os.path.exists("/proc/driver/nvidia"):
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def device_index(torch: Any, local_rank: int) -> int:
    """The GPU this rank uses: the same choice as the HBM tier's ``device: auto``."""
    return local_rank % torch.cuda.device_count()


def pin(torch: Any, buf: Any, device: int) -> int:
    """Page-locks ``buf`` for DMA; returns its address, 0 when the driver refused.

    Registered on the rank's own GPU (so no context is made on GPU 0 by every rank) and
    portable, so a copy on any context sees it pinned."""
    addr = np.frombuffer(buf, dtype=np.uint8).ctypes.data
    with torch.cuda.device(device):
        err = int(torch.cuda.cudart().cudaHostRegister(addr, len(buf), HOST_REGISTER_PORTABLE))
    if err:
        warnings.warn(f"cudaHostRegister of {len(buf)} bytes failed (cudaError {err}); host"
                      " memory stays pageable", stacklevel=2)
        return 0
    return addr


def unpin(torch: Any, addr: int) -> None:
    torch.cuda.cudart().cudaHostUnregister(addr)


class HostSlots:
    """A page-aligned anonymous mapping viewed as a (slots, object_bytes) array."""

    def __init__(self, slots: int, object_bytes: int) -> None:
        self._map = aligned_buffer(max(1, slots * object_bytes))
        self.array = np.frombuffer(self._map, dtype=np.uint8)[: slots * object_bytes].reshape(
            slots, object_bytes)
        self._torch: Any = None
        self._pinned = 0

    @property
    def pinned(self) -> bool:
        return bool(self._pinned)

    def pin(self, torch: Any, device: int) -> bool:
        """Page-locks the whole mapping (see ``pin``); True when it is."""
        self._torch = torch
        self._pinned = pin(torch, self._map, device)
        return self.pinned

    def view(self, slot: int) -> memoryview:
        return memoryview(self.array[slot])

    def write(self, slot: int, data: memoryview) -> int:
        np.copyto(self.array[slot], np.frombuffer(data, dtype=np.uint8))
        return len(data)

    def read(self, slot: int, out: memoryview) -> int:
        np.copyto(np.frombuffer(out, dtype=np.uint8), self.array[slot])
        return len(out)

    def close(self) -> None:
        if self.array is None:
            return
        self.array = None
        if self._pinned:
            unpin(self._torch, self._pinned)
            self._pinned = 0
        self._map.close()


class DramTier(Tier):
    """Host memory, pre-allocated at set-up; pinned when torch sees a GPU."""

    name = "dram"

    @dataclasses.dataclass(frozen=True)
    class Params:
        pin: bool = True      # page-lock the slots when torch sees a GPU (false: pageable)

    def open(self, ctx: RankContext) -> None:
        total = memory_bytes()
        if total and self.slots * self.object_bytes > total:   # pre-faulting it would call the OOM killer
            raise ConfigError(f"tiers.{self.level}.capacity_gb={self.capacity_bytes / 1e9:g} is more"
                              f" than this node's {total / 1e9:.1f} GB of memory; give less")
        self._mem = HostSlots(self.slots, self.object_bytes)
        torch = cuda_torch() if self.params.pin else None
        if torch is not None:
            self._mem.pin(torch, device_index(torch, ctx.local_rank))

    @property
    def pinned(self) -> bool:
        return self._mem.pinned

    def write(self, slot: int, data: memoryview) -> int:
        return self._mem.write(slot, data)

    def read(self, slot: int, out: memoryview) -> int:
        return self._mem.read(slot, out)

    def host_slot(self, slot: int) -> memoryview:
        return self._mem.view(slot)

    def close(self) -> None:
        self._mem.close()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "backing": "host memory", "pinned": self.pinned}
