"""Storage-only runs driven to saturation, one per ``engine.max_batch``, against the
path's calibrated bandwidth, in one invocation.

    python benchmarks/saturation.py [--ranks 4] [--duration 10] [--max-batch 1 16] [--repeat 1]
                                    [--cache-dir DIR] [--payload fresh|reuse] [--no-calibrate]
                                    [--variant NAME="ARGS" ...]

``--variant`` compares settings other than the batch size: each is a name and the extra
arguments of its runs (at ``max_batch`` 16), e.g. the payload spares and io_depth of
docs/DESIGN-NOTES.md:
``--variant d8s10="" --variant d8s2="--set io.payload_spare_mb=0"
--variant d4s2="--io-depth 4 --set io.payload_spare_mb=0"``.

Each run is ``mpirun -n RANKS python -m mpi_kvbench`` with no HBM or DRAM tier, 40 users
and ``run.calibrate`` on (the same object size and io_depth, all ranks at once), for
``--duration`` seconds; ``--repeat`` interleaves the batch sizes (1, 16, 1, 16, ...) so a
drift of a shared machine hits both alike. Per run it prints:

* storage GB/s (read + write over the measured window) and the device share: the device
  time the run's bytes need at the calibrated read and write rates, over the window
  (1.0 = the run kept the device as busy as calibration);
* payload stalls (a write found no fresh buffer ready: generation fell behind);
* CPU seconds per GB moved: the whole process, the I/O path (everything but payload
  generation) and payload generation alone (per GB generated).

Then, per batch size after the first, its GB/s and CPU-s/GB over the first's (means
over repeats): the issue asks that ``max_batch 16`` move at least as many GB/s as
``max_batch 1`` with no more engine CPU per GB.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean


def run_once(args: argparse.Namespace, variant: str, out: Path, name: str) -> dict:
    """One storage-only run; its summary.json."""
    mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or "mpirun"
    cmd = [mpirun, "-n", str(args.ranks), sys.executable, "-m", "mpi_kvbench",
           "--duration", str(args.duration), "--gpu-mem-gb", "0", "--cpu-mem-gb", "0",
           "--storage-capacity-gb", "8", "--set", "workload.users=40",
           "--set", f"run.calibrate={str(args.calibrate).lower()}", "--set", f"io.payload={args.payload}",
           *args.variants[variant], "--results-dir", str(out), "--run-name", name]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir + "/{rank}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / name / "summary.json").read_text())


def figures(s: dict) -> dict:
    st, cal, cpu = s["tiers"]["storage"], s.get("calibration") or {"read_gbps": 0, "write_gbps": 0}, s["cpu"]
    need = (st["read_bytes"] / 1e9 / cal["read_gbps"] + st["write_bytes"] / 1e9 / cal["write_gbps"]
            if cal["read_gbps"] else float("nan"))
    return {"gbps": s["storage_throughput_gbps"], "read": st["read_gbps"], "write": st["write_gbps"],
            "share": need / s["duration_s"], "stalls": cpu["payload_stalls"],
            "stall_s": cpu["payload_stall_s"], "rss_mib": s["peak_rss_bytes"]["max"] / 2**20,
            "process": cpu["process_s_per_gb"], "io_path": cpu["io_path_s_per_gb"],
            "generation": cpu["generation_s_per_gb"], "cal_read": cal["read_gbps"],
            "cal_write": cal["write_gbps"], "window": s["duration_s"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--duration", type=float, default=10, help="measured seconds per run")
    ap.add_argument("--max-batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeat", type=int, default=1, help="runs per batch size, interleaved")
    ap.add_argument("--cache-dir", default=None, help="storage path (default: system temp)")
    ap.add_argument("--payload", default="fresh", choices=("fresh", "reuse"))
    ap.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                    help="skip calibration (the device share is then not printed)")
    ap.add_argument("--variant", action="append", default=[], metavar='NAME="ARGS"',
                    help="compare these settings instead of batch sizes (at max_batch 16)")
    args = ap.parse_args()
    if args.variant:
        args.variants = {v.split("=", 1)[0]: ["--set", "engine.max_batch=16",
                                              *shlex.split(v.partition("=")[2])] for v in args.variant}
    else:
        args.variants = {f"max_batch {b}": ["--set", f"engine.max_batch={b}"] for b in args.max_batch}
    names = list(args.variants)
    out = Path(tempfile.mkdtemp(prefix="kvbench-sat-"))
    runs: dict[str, list[dict]] = {n: [] for n in names}
    print(f"{args.ranks} ranks, storage only, payload {args.payload}, {args.duration:g} s per run")
    print(f"{'variant':>12} {'GB/s':>6} {'(read':>6} {'write)':>6} {'device share':>12} {'stalls':>6}"
          f" {'wait s':>6} {'peak RSS MiB':>12} {'CPU-s/GB: process':>17} {'I/O path':>8}"
          f" {'generation':>10} {'calibrated r/w GB/s':>19}")
    try:
        for rep in range(args.repeat):
            for i, n in enumerate(names):
                f = figures(run_once(args, n, out, f"sat-{i}-{rep}"))
                runs[n].append(f)
                print(f"{n:>12} {f['gbps']:>6.3f} {f['read']:>6.3f} {f['write']:>6.3f} {f['share']:>12.2f}"
                      f" {f['stalls']:>6} {f['stall_s']:>6.2f} {f['rss_mib']:>12.0f} {f['process']:>17}"
                      f" {f['io_path']:>8} {f['generation']:>10} {f['cal_read']:>9.3f}/{f['cal_write']:.3f}",
                      flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    base = names[0]
    for n in names[1:]:
        ratio = {k: mean(r[k] for r in runs[n]) / mean(r[k] for r in runs[base])
                 for k in ("gbps", "process", "io_path")}
        print(f"{n} / {base}: GB/s x{ratio['gbps']:.2f}, process CPU-s/GB x{ratio['process']:.2f},"
              f" I/O path CPU-s/GB x{ratio['io_path']:.2f}; stalls {sum(r['stalls'] for r in runs[n])}"
              f" vs {sum(r['stalls'] for r in runs[base])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
