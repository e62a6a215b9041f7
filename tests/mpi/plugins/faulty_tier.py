"""A storage tier that fails like a full disk on one rank, loaded as a third-party plug-in.

It reaches mpi_kvbench the way any plug-in does: through the ``mpi_kvbench.tiers``
entry-point group of the dist-info folder beside it (the tests put this folder on
PYTHONPATH). After ``fail_after`` writes on rank ``fail_rank`` every write raises ENOSPC.
"""

from __future__ import annotations

import dataclasses
import errno
import os

from mpi_kvbench.tiers.storage import StorageTier


class FaultyTier(StorageTier):
    """Storage that runs out of space on one rank."""

    name = "faulty"

    @dataclasses.dataclass(frozen=True)
    class Params(StorageTier.Params):
        fail_rank: int = 1
        fail_after: int = 3

    def open(self, ctx) -> None:
        super().open(ctx)
        self._armed = ctx.rank == self.params.fail_rank
        self._writes = 0

    def write(self, slot: int, data: memoryview) -> int:
        self._writes += 1
        if self._armed and self._writes > self.params.fail_after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)
        return super().write(slot, data)
