"""Run under mpirun by test_scale.py: every rank records seeded, rank-dependent metrics
(names some ranks lack, series of different lengths), reduces them with both
``run.per_rank_detail`` values and, on rank 0, writes full.h5 and summary.h5 into argv[1]."""

from __future__ import annotations

import os
import sys

import numpy as np

from mpi_kvbench.metrics import Histogram, Metrics
from mpi_kvbench.mpi.comm import world
from mpi_kvbench.mpi.reduce import collect
from mpi_kvbench.results.hdf5 import write_hdf5


def metrics(rank: int) -> Metrics:
    rng = np.random.default_rng(1000 + rank)
    m = Metrics()
    for name in ("storage.read.prefill", "storage.write.prefill", "dram.read.decode"):
        m.hist.setdefault(name, Histogram()).record_many(rng.lognormal(13 + rank % 3, 1, 200 + rank))
    if rank % 2:   # a name only odd ranks record: the union must hold it, zeros elsewhere
        m.hist.setdefault("handoff", Histogram()).record_many(rng.integers(1, 10**9, 50 + rank))
    m.add("requests_completed", 10 + rank)
    m.add("storage.read_bytes", (rank + 1) << 20)
    if rank == 3:
        m.add("only_rank_3", 7)
    for s in range(5 + rank):   # series of different lengths
        m.tick("requests", s, rank + 1)
        m.peak("queue_delay_ms_max", s, float(rng.integers(0, 100)))
    return m


def main() -> None:
    comm = world()
    m = metrics(comm.rank)
    env = {"rank": comm.rank, "tp_rank": 0, "host": "h", "tiers": []}
    for detail in ("full", "summary"):
        data = collect(comm, m, 10**9 + comm.rank, env, None, detail)
        if comm.rank == 0:
            write_hdf5(os.path.join(sys.argv[1], f"{detail}.h5"), data,
                       {"schema_version": 1, "run_name": detail}, {})


if __name__ == "__main__":
    main()
