"""The three S3 client libraries side by side against one local S3 server.

    python benchmarks/s3_libraries.py [--objects 64] [--mb 4] [--depth 8] [--repeats 3] [--url URL]

Starts moto's S3 server on 127.0.0.1 (or uses ``--url`` with the keys in the
environment: a MinIO or Ceph RGW), makes one bucket, then for each installed library, in
a fresh process of its own (s3dlio keeps one endpoint per process; CPU clocks stay
apart), PUTs ``--objects`` objects of ``--mb`` MiB from ``--depth`` threads through the
tier's client (``mpi_kvbench.tiers.s3``), GETs them back into one buffer per thread, and
deletes them; ``--repeats`` rounds, the libraries interleaved within each round so a
change in the machine's load hits them alike. Printed per library and direction, the
median over the rounds: GB/s (wall clock) and GB per CPU-second of the client process
(user + system, all its threads): what one core of the host running the benchmark
moves. The server's own CPU is not counted. The object tier's default library is the
one with the most GB per CPU-second.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "s3"))


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def child(library: str, url: str, bucket: str, objects: int, size: int, depth: int) -> dict:
    from mpi_kvbench.engine.payload import Stream
    from mpi_kvbench.layout import aligned_buffer
    from mpi_kvbench.tiers import s3
    client = s3.open_client(library, url, "us-east-1", 16 << 20, depth)
    src = aligned_buffer(size)
    Stream().fill(src)                                  # incompressible, made before timing
    view = memoryview(src)
    prefix = f"bench-{library}-{uuid.uuid4().hex[:6]}/"
    keys = [f"{prefix}{i}" for i in range(objects)]
    out = {}
    with ThreadPoolExecutor(depth) as pool:
        c0, t0 = cpu_s(), time.perf_counter()
        list(pool.map(lambda k: client.put(bucket, k, view), keys))
        c1, t1 = cpu_s(), time.perf_counter()
        mine = threading.local()    # one buffer per thread, made at its first GET only

        def get(k: str) -> int:
            if not hasattr(mine, "view"):
                mine.view = memoryview(aligned_buffer(size))
            return client.get_into(bucket, k, mine.view)
        got = sum(pool.map(get, keys))
        c2, t2 = cpu_s(), time.perf_counter()
    assert got == objects * size, (got, objects * size)
    gb = objects * size / 1e9
    out["put"] = {"gb_s": gb / (t1 - t0), "gb_per_cpu_s": gb / (c1 - c0), "cpu_s": c1 - c0}
    out["get"] = {"gb_s": gb / (t2 - t1), "gb_per_cpu_s": gb / (c2 - c1), "cpu_s": c2 - c1}
    client.delete(bucket, keys)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=64)
    ap.add_argument("--mb", type=float, default=4)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--url", default="")
    ap.add_argument("--child", nargs=3, metavar=("LIBRARY", "URL", "BUCKET"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    size = int(a.mb * (1 << 20))
    if a.child:
        print(json.dumps(child(*a.child, a.objects, size, a.depth)))
        return
    import s3server

    from mpi_kvbench.tiers.s3 import LIBRARIES, installed
    server = None
    if not a.url:
        server = s3server.start()
        os.environ.update(server.env)
        a.url = server.url
    bucket = f"bench{uuid.uuid4().hex[:8]}"
    try:
        import boto3
        boto3.client("s3", endpoint_url=a.url, region_name="us-east-1").create_bucket(Bucket=bucket)
        print(f"{a.objects} objects x {a.mb:g} MiB, {a.depth} threads, server {a.url}")
        print(f"{'library':<18}{'op':<5}{'GB/s':>8}{'GB/CPU-s':>10}{'CPU-s':>8}")
        runs: dict[str, list[dict]] = {}
        for _ in range(a.repeats):
            for lib in installed():
                proc = subprocess.run([sys.executable, __file__, "--objects", str(a.objects),
                                       "--mb", str(a.mb), "--depth", str(a.depth), "--child", lib,
                                       a.url, bucket], capture_output=True, text=True)
                if proc.returncode:
                    print(f"{lib:<18}failed: {proc.stderr.strip().splitlines()[-1]}")
                    continue
                runs.setdefault(lib, []).append(json.loads(proc.stdout.strip().splitlines()[-1]))
        best = {}
        for lib in LIBRARIES:
            if lib not in runs:
                print(f"{lib:<18}not installed or failed")
                continue
            med = {op: {k: statistics.median(r[op][k] for r in runs[lib]) for k in runs[lib][0][op]}
                   for op in ("put", "get")}
            for op in ("put", "get"):
                r = med[op]
                print(f"{lib:<18}{op:<5}{r['gb_s']:>8.3f}{r['gb_per_cpu_s']:>10.3f}{r['cpu_s']:>8.2f}")
            best[lib] = 2 / (1 / med["put"]["gb_per_cpu_s"] + 1 / med["get"]["gb_per_cpu_s"])
        if best:
            order = sorted(best, key=best.get, reverse=True)
            print("GB per CPU-second, PUT and GET together (harmonic mean): "
                  + ", ".join(f"{lib} {best[lib]:.3f}" for lib in order))
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
