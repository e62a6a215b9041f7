"""What the I/O trace log costs, and how fast trace mode records, in one invocation.

    python benchmarks/io_trace_log.py [--ranks 1] [--duration 5] [--repeat 3] [--cache-dir DIR]
                                      [--trace-requests 3000] [--small] [--request-rate 1000]
                                      [--trace-mode-only]

0. In-process: CPU per operation the log adds on the engine's thread (``Recorder.stage``).
1. Overhead: storage-only saturation runs (no HBM or DRAM tier, open-loop arrivals faster
   than the device serves them, so it is busy the whole ``--duration`` seconds of each
   run), without and with ``--io-trace-log`` (``.zst``), interleaved (off, on, on, off, ...)
   so a drift of a shared machine, and whatever one run leaves the next (the disk still
   writing back), hit both alike. Prints each run's storage GB/s and operations logged,
   then the mean GB/s with the log over without (the issue asks for at least 0.95).
2. Trace mode: ``--trace-only --io-trace-log`` on one rank (tiers null, nothing moved),
   ``--trace-requests`` requests arriving at once (1e6/s, open loop), large tiers; prints
   rows logged per second of the measured phase (the issue asks for 100k or more), and
   per CPU-second of the process (the rate on a core of its own, on a shared machine).
   Then the default workload (closed-loop users, 30 s, default tiers) in trace mode: the
   same two rates, and the trace time its log spans against the wall time it took (the
   virtual clock: nothing waits for a think time). ``--trace-mode-only``: parts 0 and 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean


def run(args: argparse.Namespace, n: int, out: Path, name: str, extra: list[str]) -> dict:
    mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or "mpirun"
    cmd = [mpirun, "-n", str(n), sys.executable, "-m", "mpi_kvbench", "--results-dir", str(out),
           "--run-name", name, *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / name / "summary.json").read_text())


def rows(out: Path, name: str) -> int:
    """Rows logged by every rank of the run whose logs are ``<name>-rank<r>.csv.zst``."""
    return sum(json.loads(p.read_text())["rows"] for p in out.glob(f"{name}-rank*.csv.zst.json"))


def engine_thread_cost(n: int = 200_000) -> tuple[float, float]:
    """CPU microseconds per operation that ``Recorder.stage`` spends on the engine's thread,
    without and with a trace log (stages of 8 storage writes, as a run records them)."""
    import time

    from mpi_kvbench.engine.iopool import WRITE, Done, Op
    from mpi_kvbench.engine.record import Recorder
    from mpi_kvbench.iotrace import IoTraceLog

    ops = [Op(WRITE, 1234567 + i, dst=0, dst_slot=i) for i in range(8)]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for trace in (None, IoTraceLog(f"{tmp}/cost.csv.zst", 0, 0, 393216, {})):
            rec = Recorder(["storage"], 16, 1, False, time.perf_counter_ns(), trace=trace)
            if trace is not None:
                trace.start()
            now = time.perf_counter_ns()
            done = [Done(now, now + 500_000, 0, 500_000, 0, 393216, 0, True)] * 8
            t0 = time.thread_time()
            for _ in range(n // 8):
                rec.stage(ops, done, "prefill")
            out.append((time.thread_time() - t0) / n * 1e6)
            if trace is not None:
                trace.close()
    return out[0], out[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cache-dir", help="storage path (default: the temp dir)")
    p.add_argument("--trace-requests", type=int, default=3000)
    p.add_argument("--request-rate", type=float, default=1000.0,
                   help="open-loop arrivals (requests/s), more than the device serves: saturation")
    p.add_argument("--trace-mode-only", action="store_true", help="skip the saturation runs (part 1)")
    p.add_argument("--small", action="store_true",
                   help="384 KiB objects (tiny-1b, 16-token chunks): many more rows per second")
    args = p.parse_args()
    off, on = engine_thread_cost()
    print(f"engine thread: {off:.2f} us per operation recorded, {on:.2f} us with the log"
          f" (+{on - off:.2f} us; formatting and compression run on the writer thread)")
    with tempfile.TemporaryDirectory(prefix="iotrace-bench-") as tmp:
        out = Path(tmp)
        storage = ["--duration", str(args.duration), "--gpu-mem-gb", "0", "--cpu-mem-gb", "0",
                   "--storage-capacity-gb", "8", "--request-rate", str(args.request_rate)]
        if args.cache_dir:
            storage += ["--cache-dir", args.cache_dir + "/{rank}"]
        if args.small:
            storage += ["--model", "tiny-1b", "--chunk-tokens", "16"]
        gbps: dict[bool, list[float]] = {False: [], True: []}
        for i in range(0 if args.trace_mode_only else args.repeat):
            for logged in (False, True) if i % 2 == 0 else (True, False):   # ABBA: no order bias
                name = f"{'on' if logged else 'off'}{i}"
                extra = ["--io-trace-log", str(out / f"{name}.csv.zst")] if logged else []
                s = run(args, args.ranks, out, name, storage + extra)
                gbps[logged].append(s["storage_throughput_gbps"])
                n = rows(out, name) if logged else 0
                print(f"{name:6} storage {s['storage_throughput_gbps']:.3f} GB/s over {s['duration_s']:.2f} s"
                      + (f", {n} rows logged" if logged else ""), flush=True)
        if gbps[True]:
            print(f"with the log / without: {mean(gbps[True]) / mean(gbps[False]):.3f}"
                  f" ({mean(gbps[True]):.3f} / {mean(gbps[False]):.3f} GB/s, {args.ranks} rank(s),"
                  f" {args.repeat} runs each)")
        trace = ["--trace-only", "--io-trace-log", str(out / "tr.csv.zst"), "--duration", "0",
                 "--max-requests", str(args.trace_requests), "--request-rate", "1000000",
                 "--gpu-mem-gb", "16", "--cpu-mem-gb", "64", "--storage-capacity-gb", "2000"]
        s = run(args, 1, out, "trace", trace)
        n = rows(out, "tr")
        cpu = s["cpu"]["process_s"]
        print(f"trace mode: {n} rows in {s['duration_s']:.2f} s = {n / s['duration_s']:,.0f}"
              f" operations/s on one rank; {cpu:.2f} CPU-s = {n / cpu:,.0f} operations per"
              " CPU-second (what one free core would do)")
        from mpi_kvbench.iotrace import read_rows

        s = run(args, 1, out, "default", ["--trace-only", "--io-trace-log", str(out / "df.csv.zst")])
        n, cpu = rows(out, "df"), s["cpu"]["process_s"]
        stamps = [r.t_ns for r in read_rows(str(out / "df-rank0.csv.zst"))]
        print(f"trace mode, default workload: {n} rows in {s['duration_s']:.2f} s = "
              f"{n / s['duration_s']:,.0f} operations/s; {cpu:.2f} CPU-s = {n / cpu:,.0f} per"
              f" CPU-second; the log spans {(max(stamps) - min(stamps)) / 1e9:.1f} s of trace time")


if __name__ == "__main__":
    main()
