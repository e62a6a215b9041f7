"""The streaming checkpoint against the issue's targets, on one path.

    python benchmarks/checkpoint_stream.py --path DIR [--size-gb 24] [--modes direct none dontneed]
                                           [--ranks 1] [--s3-url URL --s3-bucket B]

Runs ``mpi_kvbench checkpoint`` once per mode (``direct``: O_DIRECT; ``none``,
``sequential``, ``dontneed``: buffered with that fadvise mode), with the default pool (4 x
32 MiB) and calibration on, and prints per mode: write and restore GB/s, the write rate
over the path's calibrated O_DIRECT write rate (target >= 0.9), generation stalls (target
0) and the peak resident memory over the pool (target < 300 MB). With ``--s3-url`` the
same for one S3 target (keys from the environment).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def run(extra: list[str], ranks: int, out: Path, name: str) -> dict:
    cmd = [sys.executable, "-m", "mpi_kvbench", "checkpoint", "--results-dir", str(out),
           "--run-name", name, *extra]
    if ranks > 1:
        cmd = [shutil.which("mpirun") or "mpirun", "-n", str(ranks), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{name}: {proc.stderr.strip()[-500:]}")
    return json.loads((out / name / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", required=True)
    ap.add_argument("--size-gb", type=float, default=24)
    ap.add_argument("--modes", nargs="+", default=["direct"])
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--calibrate-gb", type=float, default=2)
    ap.add_argument("--s3-url", default="")
    ap.add_argument("--s3-bucket", default="")
    a = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    rows = []
    try:
        for mode in a.modes:
            extra = ["--size-gb", str(a.size_gb), "--path", a.path, "--set",
                     f"checkpoint.calibrate_gb={a.calibrate_gb}"]
            if mode != "direct":
                extra += ["--set", "checkpoint.direct=false", "--set", f"checkpoint.fadvise={mode}"]
            rows.append((mode, run(extra, a.ranks, out, mode)))
        if a.s3_url:
            extra = ["--target", "s3", "--size-gb", str(a.size_gb), "--set",
                     f"checkpoint.s3={{bucket: {a.s3_bucket}, endpoints: [{a.s3_url}]}}"]
            rows.append(("s3", run(extra, a.ranks, out, "s3")))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"{a.ranks} rank(s) x {a.size_gb:g} GB, pool {rows[0][1]['pool_bytes'] / 2**20:.0f} MiB,"
          f" {os.cpu_count()} CPUs")
    print(f"{'mode':<11}{'write GB/s':>11}{'vs cal':>8}{'read GB/s':>10}{'vs cal':>8}{'stalls':>7}"
          f"{'stall s':>8}{'RSS-pool MB':>12}{'t_ckpt s':>9}{'t_rest s':>9}")
    for mode, s in rows:
        print(f"{mode:<11}{s['write_throughput_gbps']:>11.3f}{s.get('write_vs_calibrated', 0):>8.3f}"
              f"{s.get('read_throughput_gbps', 0):>10.3f}{s.get('read_vs_calibrated', 0):>8.3f}"
              f"{s['generation_stalls']:>7}{s['generation_stall_s']:>8.2f}"
              f"{s['peak_rss_over_pool_bytes_max'] / 1e6:>12.1f}{s['time_to_checkpoint_s']:>9.2f}"
              f"{s.get('time_to_restore_s', 0):>9.2f}")


if __name__ == "__main__":
    main()
