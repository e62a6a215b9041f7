"""Fresh payload per rank against the calibrated storage rate, by generator threads.

    python benchmarks/payload_rate.py [--ranks 1 4] [--threads 1 2] [--seconds 3] [--cache-dir DIR]

First ``python -m mpi_kvbench calibrate --json`` measures the path (its object size and
io_depth are the run's defaults). Then, for each rank count (``mpirun -n R`` when R > 1)
and each thread count, every rank runs a PayloadSource with exactly that many generator
threads while a consumer takes and gives back buffers as fast as it can, so the
generators never wait: their output is the most fresh payload the rank can have. Printed
per row: GB/s per rank (slowest and mean rank), generation CPU-s/GB as the source
reports it (per-thread CPU clocks) and the whole process's CPU-s/GB (the consumer's
few microseconds per buffer included; the two agree when attribution is honest), and the
slowest rank's rate over its share of the calibrated write rate (write GB/s / R): the
issue asks for at least 2. The ``auto`` row is the source as a run gets it (one thread
to start, growing up to the default cap) under a steady demand of twice the rank's
share: the rate it delivered, its stalls and the threads it grew to.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mpi_kvbench.engine.payload import PayloadSource, generator_cap
from mpi_kvbench.mpi.comm import world


def process_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def measure(object_bytes: int, depth: int, threads: int, seconds: float) -> dict[str, float]:
    """This rank's generation with ``threads`` threads kept busy for ``seconds``."""
    src = PayloadSource(object_bytes, depth, "fresh", threads=threads, max_threads=threads)
    try:
        warm = time.perf_counter() + min(0.5, seconds / 4)   # past the ring's first filling
        while time.perf_counter() < warm:
            src.give_back(src.take())
        t0, cpu0 = time.perf_counter(), process_cpu_s()
        gen0, bytes0 = src.generator_cpu_s, src.generated_bytes
        while time.perf_counter() - t0 < seconds:
            src.give_back(src.take())
        wall = time.perf_counter() - t0
        gb = (src.generated_bytes - bytes0) / 1e9
        return {"gbps": gb / wall, "gen_cpu_s_per_gb": (src.generator_cpu_s - gen0) / gb,
                "process_cpu_s_per_gb": (process_cpu_s() - cpu0) / gb}
    finally:
        src.close()


def paced(object_bytes: int, depth: int, gbps: float, seconds: float) -> dict[str, float]:
    """The source as a run gets it (one thread to start, the default cap) under a steady
    demand of ``gbps``: what it delivered, its stalls and the threads it grew to."""
    src = PayloadSource(object_bytes, depth, "fresh")
    try:
        time.sleep(min(0.5, seconds / 4))                     # a run fills the ring in set-up
        gen0, bytes0, taken = src.generator_cpu_s, src.generated_bytes, 0
        t0 = due = time.perf_counter()
        while due - t0 < seconds:
            buf = src.take()
            src.give_back(buf)
            taken += len(buf)
            due += len(buf) / (gbps * 1e9)
            time.sleep(max(0.0, due - time.perf_counter()))
        wall = time.perf_counter() - t0
        gb = (src.generated_bytes - bytes0) / 1e9
        return {"gbps": taken / 1e9 / wall, "stalls": src.stalls, "threads": src.threads,
                "gen_cpu_s_per_gb": (src.generator_cpu_s - gen0) / gb if gb else 0.0}
    finally:
        src.close()


def worker(args: argparse.Namespace) -> int:
    """One rank: every thread count in turn, then the paced run, all ranks together;
    rank 0 prints JSON."""
    comm = world()
    rows = []
    for n in args.threads:
        comm.barrier()
        rows.append(comm.gather(measure(args.object_bytes, args.depth, n, args.seconds)))
    comm.barrier()
    auto = comm.gather(paced(args.object_bytes, args.depth, args.pace_gbps, args.seconds))
    if comm.rank == 0:
        print(json.dumps({"cap": generator_cap(), "rows": rows, "auto": auto}))
    return 0


def calibrate(cache_dir: str, size_gb: float) -> dict:
    out = subprocess.run([sys.executable, "-m", "mpi_kvbench", "calibrate", "--cache-dir", cache_dir,
                          "--size-gb", str(size_gb), "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--threads", type=int, nargs="+", default=list(range(1, (os.cpu_count() or 1) + 1)))
    ap.add_argument("--seconds", type=float, default=3.0, help="measured time per thread count")
    ap.add_argument("--cache-dir", default=None, help="storage path to calibrate (default: system temp)")
    ap.add_argument("--size-gb", type=float, default=1.0, help="calibration size")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--object-bytes", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--depth", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--pace-gbps", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    scratch = None if args.cache_dir else tempfile.mkdtemp(prefix="kvbench-rate-")
    try:
        cal = calibrate(args.cache_dir or scratch, args.size_gb)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    obj, depth = cal["block_bytes"], cal["io_depth"]
    print(f"calibrated {cal['path']} ({cal['fs_type']}, O_DIRECT {cal['o_direct']}): write"
          f" {cal['write_gbps']:.3f} GB/s, read {cal['read_gbps']:.3f} GB/s"
          f" ({obj / 2**20:.2f} MiB objects, depth {depth}, one process); {os.cpu_count()} CPUs")
    print(f"{'ranks':>5} {'threads':>7} {'GB/s/rank min':>13} {'mean':>6} {'gen CPU-s/GB':>12}"
          f" {'process CPU-s/GB':>16} {'min / write share':>17}")
    mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or "mpirun"
    for ranks in args.ranks:
        share = cal["write_gbps"] / ranks
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--object-bytes", str(obj),
               "--depth", str(depth), "--seconds", str(args.seconds), "--pace-gbps", str(2 * share),
               "--threads", *map(str, args.threads)]
        if ranks > 1:
            cmd = [mpirun, "-n", str(ranks), *cmd]
        got = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        for n, per_rank in zip(args.threads, got["rows"], strict=True):
            rates = [r["gbps"] for r in per_rank]
            gen = sum(r["gen_cpu_s_per_gb"] for r in per_rank) / len(per_rank)
            proc = sum(r["process_cpu_s_per_gb"] for r in per_rank) / len(per_rank)
            print(f"{ranks:>5} {n:>7} {min(rates):>13.3f} {sum(rates) / len(rates):>6.3f} {gen:>12.3f}"
                  f" {proc:>16.3f} {min(rates) / share:>17.2f}")
        auto = got["auto"]
        print(f"{ranks:>5} {'auto':>7} {min(r['gbps'] for r in auto):>13.3f}"
              f" {sum(r['gbps'] for r in auto) / len(auto):>6.3f}"
              f" {sum(r['gen_cpu_s_per_gb'] for r in auto) / len(auto):>12.3f} {'':>16}"
              f" {min(r['gbps'] for r in auto) / share:>17.2f}   paced at 2 x share:"
              f" {sum(r['stalls'] for r in auto)} stalls, threads {[r['threads'] for r in auto]}"
              f" (cap {got['cap']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
