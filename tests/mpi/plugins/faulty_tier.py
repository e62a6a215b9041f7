"""A storage tier that goes wrong on one rank, loaded as a third-party plug-in.

It reaches mpi_kvbench the way any plug-in does: through the ``mpi_kvbench.tiers``
entry-point group of the dist-info folder beside it (the tests put this folder on
PYTHONPATH). After ``fail_after`` writes on rank ``fail_rank`` it does what ``mode`` says:

* ``enospc``: every further write raises ENOSPC (a full disk);
* ``exit``: the process ends at once (``os._exit``: a rank that dies);
* ``interrupt``: the write raises KeyboardInterrupt in its I/O thread;
* ``stall``: the write never returns (a device that stopped answering);
* ``sigint``/``sigterm``/``sighup``: the rank sends itself that signal, once;
* ``mark``: it creates the file ``marker`` (once; the test then signals the launcher)
  and from then on every write on every rank takes 20 ms longer, so the run is still
  going when the signal comes;
* ``close_error``: closing the tier raises ValueError (not an OSError).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import threading
import time

from mpi_kvbench.tiers.storage import StorageTier


class FaultyTier(StorageTier):
    """Storage that fails on one rank, in one of several ways."""

    name = "faulty"

    @dataclasses.dataclass(frozen=True)
    class Params(StorageTier.Params):
        fail_rank: int = 1
        fail_after: int = 3
        mode: str = "enospc"
        marker: str = ""

    def open(self, ctx) -> None:
        super().open(ctx)
        self._armed = ctx.rank == self.params.fail_rank
        self._writes = 0
        self._fired = False

    def write(self, slot: int, data: memoryview) -> int:
        self._writes += 1
        mode = self.params.mode
        if mode == "mark" and self.params.marker and os.path.exists(self.params.marker):
            time.sleep(0.02)
        if self._armed and self._writes > self.params.fail_after:
            if mode == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)
            if mode == "exit":
                os._exit(3)
            if mode == "interrupt":
                raise KeyboardInterrupt("injected in an I/O thread")
            if mode == "stall":
                threading.Event().wait()
            if not self._fired:
                self._fired = True
                if mode.startswith("sig"):
                    os.kill(os.getpid(), getattr(signal, mode.upper()))
                elif mode == "mark":
                    with open(self.params.marker, "w") as fh:
                        fh.write(str(os.getpid()))
        return super().write(slot, data)

    def close(self) -> None:
        super().close()
        if self._armed and self.params.mode == "close_error":
            raise ValueError("injected in close")
