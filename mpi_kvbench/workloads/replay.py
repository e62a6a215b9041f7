"""Replay of recorded I/O trace logs (``python -m mpi_kvbench replay``): rank r carries out
the operations of log r instead of serving requests.

It is a workload so that a replay is a run like any other: same tiers, engine, reductions
and result files, with ``workload: replay``. It yields no requests; the engine takes its
operations (``operations``) and issues them in their recorded order, as fast as the
rank's ``io_depth`` allows or at their recorded times (``timing``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from mpi_kvbench.errors import ConfigError
from mpi_kvbench.iotrace import Row, read_meta, read_rows
from mpi_kvbench.params import choice
from mpi_kvbench.workloads.base import Request, Workload

TIMINGS = ("asap", "recorded")


class ReplayWorkload(Workload):
    """The operations of recorded I/O trace logs, one log per rank."""

    partitionable = True   # nothing to send: each rank reads its own log

    @dataclasses.dataclass(frozen=True)
    class Params:
        logs: dict = dataclasses.field(default_factory=dict)   # position -> path of a log
        timing: str = "asap"

        def check(self) -> None:
            if not self.logs:
                raise ConfigError("workload.logs: no log given; pass the --io-trace-log files to replay")
            choice(self, "workload", "timing", TIMINGS)

    def __init__(self, params: Any, seed: int) -> None:
        super().__init__(params, seed)
        self.log: str | None = None
        self.rows: list[Row] = []

    def load(self, rank: int, world_size: int) -> list[Row]:
        """This rank's operations, in the order they started. The log whose JSON says
        ``rank`` is this rank's; logs without one go by their position."""
        logs = [self.params.logs[k] for k in sorted(self.params.logs)]
        if len(logs) != world_size:
            raise ConfigError(f"replay: {len(logs)} log(s) for {world_size} rank(s); run one rank"
                              " per log (mpirun -n <number of logs>)")
        by_rank = {read_meta(p).get("rank"): p for p in logs}
        self.log = by_rank.get(rank, logs[rank])
        self.rows = sorted(read_rows(self.log), key=lambda r: r.t_ns)
        return self.rows

    def requests(self, replica: int = 0, replicas: int = 1) -> Iterator[Request]:
        return iter(())

    def operations(self) -> list[Row]:
        return self.rows

    def info(self) -> dict[str, Any]:
        logs = [self.params.logs[k] for k in sorted(self.params.logs)]
        return {"logs": logs, "timing": self.params.timing, "log": self.log, "operations": len(self.rows)}
