"""Reading and distributing a large trace: seconds per 10k requests, memory per rank.

    mpirun -n 8 python benchmarks/trace_distribution.py [N_REQUESTS]

Rank 0 writes a Mooncake-format trace of N requests (default 100,000), then every rank
times ``replica_requests`` (rank 0 parses and sends batches; the others receive only
their share) and reports its peak resident memory.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time

from mpi_kvbench.distribute import replica_requests
from mpi_kvbench.mpi.comm import topology, world
from mpi_kvbench.registry import WORKLOADS


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    comm = world()
    path = None
    if comm.rank == 0:
        fd, path = tempfile.mkstemp(suffix=".jsonl")
        with os.fdopen(fd, "w") as fh:
            for i in range(n):
                ids = [i % 50, 1000 + i % 700, *range(10**6 + 8 * i, 10**6 + 8 * i + 6)]
                fh.write(json.dumps({"timestamp": i * 10, "input_length": 512 * len(ids) - 100,
                                     "output_length": 200, "hash_ids": ids}) + "\n")
    path = comm.bcast(path)
    ctx, _ = topology(comm, 1, "bench")
    params = WORKLOADS.params("mooncake", {"trace": path}, "workload")
    workload = WORKLOADS.load("mooncake")(params, 1)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    comm.barrier()
    t0 = time.perf_counter()
    mine = list(replica_requests(workload, ctx, comm, None, 256))
    took = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = comm.gather((len(mine), took, rss0 / 1024, rss / 1024))
    if comm.rank == 0:
        os.unlink(path)
        total = max(r[1] for r in rows)
        print(f"{n} requests to {comm.size} ranks: {total:.2f} s, {total / n * 1e4:.3f} s per 10k")
        for rank, (count, _took, before, after) in enumerate(rows):
            print(f"  rank {rank}: {count} requests, peak RSS {before:.0f} -> {after:.0f} MiB")


if __name__ == "__main__":
    main()
