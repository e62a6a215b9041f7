"""The tier interface: a tier stores fixed-size objects in numbered slots.

Every object of a run has the same size (a chunk, or a chunk's layer, of one TP shard), so
a tier is an array of slots: ``write(slot, data)`` and ``read(slot, out)`` move one object.
The tier never decides what to keep: the cache hierarchy owns the index, capacity
accounting, slot allocation and eviction, and the I/O pool owns timing. A tier moves
bytes and releases the GIL while it does (system calls, numpy or torch copies), so
``io_depth`` threads really overlap.
"""

from __future__ import annotations

import abc
import dataclasses
import mmap
from typing import Any, ClassVar

import numpy as np

from mpi_kvbench.context import RankContext

ALIGN = 4096


def aligned_buffer(nbytes: int) -> mmap.mmap:
    """Page-aligned memory (as O_DIRECT needs), faulted in now rather than mid-run.

    Transparent huge pages where the kernel allows: O_DIRECT pins every page of a buffer
    for each I/O, and 2 MiB pages cut that kernel CPU cost about six-fold here (and hand
    the device larger segments)."""
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    np.frombuffer(buf, dtype=np.uint8)[:: mmap.PAGESIZE] = 0
    return buf


def round_up(n: int, align: int = ALIGN) -> int:
    return -(-n // align) * align


class Tier(abc.ABC):
    """Base of every tier plug-in."""

    name: ClassVar[str]
    needs_payload: ClassVar[bool] = True   # False for tiers that never look at the bytes
    level: str = ""                        # hbm, dram or storage: set by the run that opens it

    @dataclasses.dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: Any, capacity_bytes: int, object_bytes: int) -> None:
        self.params = params
        self.object_bytes = object_bytes
        self.capacity_bytes = capacity_bytes

    @property
    def slots(self) -> int:
        """How many objects fit; a tier may lower ``capacity_bytes`` in ``open``."""
        return self.capacity_bytes // self.object_bytes

    @abc.abstractmethod
    def open(self, ctx: RankContext) -> None:
        """Allocates memory or creates files; called once per rank before any I/O."""

    @abc.abstractmethod
    def write(self, slot: int, data: memoryview) -> int:
        """Stores ``data`` (one object) in ``slot``; returns bytes moved."""

    @abc.abstractmethod
    def read(self, slot: int, out: memoryview) -> int:
        """Reads the object in ``slot`` into ``out``; returns bytes moved."""

    @abc.abstractmethod
    def close(self) -> None:
        """Frees memory and removes every file this tier created (and nothing else).
        Safe to call twice: tear-down after a failure may reach it again."""

    def info(self) -> dict[str, Any]:
        """Facts for the result file: what backs the tier and how."""
        return {"kind": self.name, "capacity_bytes": self.capacity_bytes, "slots": self.slots}
