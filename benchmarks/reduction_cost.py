"""How long the end-of-run gather and the result write take, at 1k and 100k requests.

Run under MPI: ``mpirun -n 8 python benchmarks/reduction_cost.py``. Each rank records
the same histograms a real run records plus N requests; the script times the group
latency reduction, the gather to rank 0 and the HDF5/JSON write, and prints the ratio
between the two request counts (it should stay near 1: the cost grows with ranks x
buckets, not with requests).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from mpi_kvbench.metrics import Histogram, Metrics
from mpi_kvbench.mpi.comm import topology, world
from mpi_kvbench.mpi.reduce import collect, group_latency
from mpi_kvbench.results.collected import RequestLog
from mpi_kvbench.results.hdf5 import write_hdf5, write_summary

NAMES = [f"{t}.{op}.{ph}" for t in ("hbm", "dram", "storage") for op in ("read", "write")
         for ph in ("prefill", "decode", "demote")]


def fake_metrics(n_requests: int, seed: int) -> tuple[Metrics, RequestLog]:
    rng = np.random.default_rng(seed)
    m, log = Metrics(), RequestLog()
    for name in NAMES:
        m.hist.setdefault(name, Histogram()).record_many(rng.lognormal(15, 1, 1000).astype(np.int64))
        m.add(name + "_bytes", 1 << 30)
    e2e = rng.lognormal(20, 1, n_requests).astype(np.int64)
    for name in ("request.e2e", "request.prefill_storage", "qos.batch.e2e"):
        m.hist.setdefault(name, Histogram()).record_many(e2e)
    for s in range(60):
        m.tick("storage.read_bytes", s, 1e9)
    for i, v in enumerate(e2e.tolist()):   # as the engine does, one request at a time
        log.index.append(i)
        log.e2e_ns.append(v)
        log.prefill_ns.append(v // 2)
        log.qos.append(2)
    return m, log


def main() -> None:
    comm = world()
    ctx, group = topology(comm, 2 if comm.size % 2 == 0 else 1, "bench")
    out = tempfile.mkdtemp() if comm.rank == 0 else None
    times = {}
    for n in (1_000, 100_000):
        metrics, log = fake_metrics(n, comm.rank)
        comm.barrier()
        t0 = time.perf_counter()
        group_latency(group, log, metrics)
        tg = time.perf_counter()
        data = collect(comm, metrics, 60 * 10**9, {"rank": comm.rank, "tp_rank": ctx.tp_rank,
                                                   "host": ctx.host, "tiers": []}, None)
        t1 = time.perf_counter()
        if comm.rank == 0:
            write_hdf5(os.path.join(out, f"r{n}.h5"), data, {"schema_version": 1}, {})
            write_summary(os.path.join(out, f"r{n}.json"), {"requests": n})
        t2 = time.perf_counter()
        times[n] = (t1 - tg, t2 - t1)
        if comm.rank == 0:
            print(f"{n:>7} requests/rank, {comm.size} ranks: TP-group max {tg - t0:.3f} s,"
                  f" gather to rank 0 {t1 - tg:.3f} s, write {t2 - t1:.3f} s")
    if comm.rank == 0:
        ratio = sum(times[100_000]) / sum(times[1_000])
        print(f"gather + write, 100k / 1k requests: {ratio:.2f}x")


if __name__ == "__main__":
    main()
