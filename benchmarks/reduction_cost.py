"""How long the end-of-run reductions and the result write take, per ``run.per_rank_detail``.

Run under MPI: ``mpirun -n 8 python benchmarks/reduction_cost.py`` (add ``--oversubscribe``
style flags as your MPI needs for more ranks than cores). Each rank records metrics shaped like a
real run's (25 histograms, 66 counters, 16 series of 30 s, a 1.1 KB environment) plus N
requests; the script times the TP-group maximum, the reduction to rank 0 (``collect``)
and the HDF5/JSON write, for both details and two request counts, and prints the result
file's size and the bytes rank 0 received per rank. The cost grows with ranks x buckets
(full) or ranks x histograms (summary), never with requests: the ratio 100k / 1k stays
near 1. The per-rank and per-level costs these lines give feed the model in the closing
lines (see docs/DESIGN-NOTES.md, *Reductions at scale*).

``python benchmarks/reduction_cost.py --write-only 1024 8192`` (no MPI) writes the result
rank 0 would write at those rank counts and prints its time and size.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time

import numpy as np

from mpi_kvbench.metrics import N_BUCKETS, PERCENTILES, Histogram, Metrics
from mpi_kvbench.mpi.comm import topology, world
from mpi_kvbench.mpi.reduce import collect, group_latency, rank_percentiles
from mpi_kvbench.results.collected import Collected, RequestLog
from mpi_kvbench.results.hdf5 import write_hdf5, write_summary

TIER_OPS = [f"{t}.{op}.{ph}" for t in ("hbm", "dram", "storage") for op in ("read", "write")
            for ph in ("prefill", "decode")] + ["demotion.hbm", "demotion.dram", "storage.write.demote"]
QOS = [f"qos.{c}.{m}" for c in ("batch", "interactive", "responsive") for m in ("e2e", "prefill_storage")]
REQUEST = ["request.e2e", "request.prefill_storage", "request.queue", "request.ttft_proxy"]
SECONDS = 30


def fake_metrics(n_requests: int, seed: int) -> tuple[Metrics, RequestLog]:
    rng = np.random.default_rng(seed)
    m, log = Metrics(), RequestLog()
    for name in TIER_OPS:
        m.hist.setdefault(name, Histogram()).record_many(rng.lognormal(15, 1, 1000).astype(np.int64))
    e2e = rng.lognormal(20, 1, n_requests).astype(np.int64)
    for name in (*REQUEST, *QOS):
        m.hist.setdefault(name, Histogram()).record_many(e2e)
    for i in range(66):
        m.add(f"counter.{i:02d}", i << 20)
    for s in range(SECONDS):
        for i in range(15):
            m.tick(f"series.{i:02d}", s, 1e9)
        m.peak("queue_delay_ms_max", s, 3.0)
    for i, v in enumerate(e2e.tolist()):   # as the engine does, one request at a time
        log.index.append(i)
        log.e2e_ns.append(v)
        log.prefill_ns.append(v // 2)
        log.qos.append(2)
    return m, log


def gathered_bytes(metrics: Metrics, detail: str) -> int:
    """What ``collect`` gathers from one rank, as it lays it out (8-byte values, the
    environment aside): one row of every histogram's min, max, sum and count, the
    counters and the elapsed time; then with ``full`` the bucket counts [H, B] and the
    series [S, T], with ``summary`` the percentiles [H, P]."""
    h = len(metrics.hist)
    row = 4 * h + len(metrics.counters) + 1
    extra = (h * N_BUCKETS + len(metrics.series) * SECONDS if detail == "full"
             else h * len(PERCENTILES))
    return (row + extra) * 8


def env(comm_rank: int, ctx) -> dict:
    return {"rank": comm_rank, "tp_rank": ctx.tp_rank, "host": ctx.host, "group": ctx.group,
            "packages": {f"package-{i}": "1.2.3" for i in range(30)}, "cpu_model": "x" * 60,
            "platform": "Linux-6.1-x86_64-with-glibc2.36", "mpi_library": "MPICH Version: 4.1.2",
            "tiers": [{"kind": k, "level": k, "capacity_bytes": 1 << 30, "slots": 32}
                      for k in ("hbm", "dram", "storage")]}


def synthetic(ranks: int, detail: str) -> Collected:
    """Rank 0's data for ``ranks`` ranks, made in one process: the write and the file size
    at 1,024 and 8,192 ranks without starting that many processes."""
    metrics, _ = fake_metrics(1000, 0)
    names = sorted(metrics.hist)
    counts = np.stack([metrics.hist[n].counts for n in names])
    stats = [np.array([getattr(metrics.hist[n], k) for n in names]) for k in ("min_ns", "max_ns", "sum_ns")]
    tile = functools.partial(np.repeat, repeats=ranks, axis=0)
    cn = sorted(metrics.counters)
    counters = tile(np.array([[metrics.counters[n] for n in cn]], dtype=np.int64))
    sn = sorted(metrics.series)
    series = np.stack([metrics.series[n][:SECONDS] for n in sn])
    pcts = rank_percentiles(counts, *stats[:2])
    rng = np.random.default_rng(0)   # rank-to-rank variety, so gzip sees no exact repeats
    per_rank = (counts[None] + rng.integers(0, 2, (ranks, *counts.shape)) * (counts[None] > 0)
                if detail == "full" else None)
    ctx = type("Ctx", (), {"tp_rank": 0, "host": "node0", "group": 0})
    return Collected(names, counts * ranks, *stats, per_rank, *(tile(a[None]) for a in stats), cn,
                     counters, sn, tile(series[None]) if detail == "full" else None,
                     np.full(ranks, SECONDS * 10**9), [env(r, ctx) for r in range(ranks)], [],
                     detail, tile(counts.sum(axis=1)[None]) if detail == "summary" else None,
                     tile(pcts[None]) if detail == "summary" else None, series * ranks)


def model(ranks: list[int]) -> None:
    """One process: the result write and its size at ``ranks`` ranks, per detail (full only
    up to 1,024 ranks: 8,192 would hold 7.7 GB of bucket counts in memory)."""
    out = tempfile.mkdtemp()
    for detail in ("summary", "full"):
        for n in ranks:
            if detail == "full" and n > 1024:
                continue
            data = synthetic(n, detail)
            path = os.path.join(out, f"{detail}{n}.h5")
            t0 = time.perf_counter()
            write_hdf5(path, data, {"schema_version": 1}, {})
            took = time.perf_counter() - t0
            print(f"{detail:7} {n:>5} ranks: write {took:.3f} s, file {os.path.getsize(path) / 1e6:.2f} MB"
                  f" ({os.path.getsize(path) / n / 1024:.1f} KiB/rank)", flush=True)
            os.unlink(path)
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--write-only":
        model([int(a) for a in sys.argv[2:]])
        return
    comm = world()
    ctx, group = topology(comm, 2 if comm.size % 2 == 0 else 1, "bench")
    out = tempfile.mkdtemp() if comm.rank == 0 else None
    load = os.getloadavg()[0]
    times = {}
    for detail in ("full", "summary"):
        for n in (1_000, 100_000):
            metrics, log = fake_metrics(n, comm.rank)
            comm.quiet_barrier()   # waiting ranks sleep: rank 0 is not timed against spinners
            t0 = time.perf_counter()
            group_latency(group, log, metrics)
            tg = time.perf_counter()
            c0 = time.thread_time()
            data = collect(comm, metrics, SECONDS * 10**9, env(comm.rank, ctx), None, detail)
            t1 = time.perf_counter()
            cpu = time.thread_time() - c0   # rank 0's own work, whatever the others' scheduling
            size = 0
            if comm.rank == 0:
                path = os.path.join(out, f"{detail}{n}.h5")
                write_hdf5(path, data, {"schema_version": 1}, {})
                write_summary(os.path.join(out, f"{detail}{n}.json"), {"requests": n})
                size = os.path.getsize(path)
            t2 = time.perf_counter()
            comm.quiet_barrier()
            times[detail, n] = (t1 - tg, t2 - t1)
            if comm.rank == 0:
                per_rank = gathered_bytes(metrics, detail)
                print(f"{detail:7} {n:>7} requests/rank, {comm.size:>4} ranks: TP-group max"
                      f" {tg - t0:.3f} s, reduce to rank 0 {t1 - tg:.3f} s ({cpu:.3f} CPU-s on rank 0),"
                      f" write {t2 - t1:.3f} s,"
                      f" file {size / 1e6:.2f} MB, ~{per_rank / 1024:.1f} KiB/rank gathered"
                      f" (+ environment)", flush=True)
    if comm.rank == 0:
        for detail in ("full", "summary"):
            ratio = sum(times[detail, 100_000]) / sum(times[detail, 1_000])
            print(f"{detail}: reduce + write, 100k / 1k requests: {ratio:.2f}x")
        print(f"load average at start: {load:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
