"""A storage-only run driven to saturation, against the path's calibrated bandwidth.

    python benchmarks/saturation.py [--ranks 4] [--duration 20] [--cache-dir DIR]

Runs ``mpirun -n RANKS python -m mpi_kvbench`` with no HBM or DRAM tier, 40 users and
``run.calibrate`` on (the same object size and io_depth, all ranks at once), then prints:

* device share: the device time the run's bytes need at the calibrated read and write
  rates, over the measured window (1.0 = the run kept the device as busy as calibration);
* CPU seconds per GB moved: the I/O path (everything but payload generation), the whole
  process, and payload generation alone; and the payload stalls (generation fell behind).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--cache-dir", default=None, help="storage path (default: system temp)")
    ap.add_argument("--payload", default="fresh", choices=("fresh", "reuse"))
    args = ap.parse_args()
    mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or "mpirun"
    out = Path(tempfile.mkdtemp(prefix="kvbench-sat-"))
    cmd = [mpirun, "-n", str(args.ranks), sys.executable, "-m", "mpi_kvbench",
           "--duration", str(args.duration), "--gpu-mem-gb", "0", "--cpu-mem-gb", "0",
           "--storage-capacity-gb", "8", "--set", "workload.users=40",
           "--set", "run.calibrate=true", "--set", f"io.payload={args.payload}",
           "--results-dir", str(out), "--run-name", "sat"]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir + "/{rank}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    s = json.loads((out / "sat" / "summary.json").read_text())
    shutil.rmtree(out)
    st, cal, cpu = s["tiers"]["storage"], s["calibration"], s["cpu"]
    need = st["read_bytes"] / 1e9 / cal["read_gbps"] + st["write_bytes"] / 1e9 / cal["write_gbps"]
    print(f"calibrated: read {cal['read_gbps']:.3f} GB/s, write {cal['write_gbps']:.3f} GB/s"
          f" ({cal['block_bytes'] / 2**20:.0f} MiB blocks, depth {cal['io_depth']},"
          f" {cal['ranks']} ranks)")
    print(f"run: read {st['read_gbps']:.3f} GB/s + write {st['write_gbps']:.3f} GB/s ="
          f" {s['storage_throughput_gbps']:.3f} GB/s over {s['duration_s']:.1f} s")
    print(f"device share (calibrated device time needed / window): {need / s['duration_s']:.2f}")
    print(f"CPU s/GB: I/O path {cpu['io_path_s_per_gb']}, whole process"
          f" {cpu['process_s_per_gb']}, payload generation {cpu['generation_s_per_gb']}"
          f" ({cpu['payload_stalls']} stalls, payload {s['payload_mode']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
