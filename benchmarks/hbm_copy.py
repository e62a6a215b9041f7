"""The HBM tier's device<->host rate against pinned torch copies of the same size.

    python benchmarks/hbm_copy.py [--object-mib 32] [--seconds 5] [--io-depth 8]

Opens an HBM and a DRAM tier as a run does (DRAM slots pinned when torch sees a GPU) and
drives the I/O pool with ``io_depth`` operations in flight, as the engine does:

* D2H: MOVE HBM -> DRAM (a demotion: one device-to-host copy into the DRAM slot);
* H2D: MOVE DRAM -> HBM (a promotion or reload: one host-to-device copy);
* produce: WRITE of new objects made on the device (stamped fill; for information).

In the same process it times plain torch copies of one object of the same size: pinned
host tensor <-> device tensor, one thread, a stream synchronize after every copy (the
tier's own per-operation semantics: the reference for the target) and back-to-back (16
copies per synchronize: the link's peak, for information), and from pageable memory.
Prints GB/s (1e9 bytes/s) and the tier ÷ pinned-copy ratios; on a GPU the target is at
least 0.9 in each direction (exit status 1 when missed). Without a GPU it runs on torch
CPU tensors (``device: cpu``) and says so: the figures are host memory copies, nothing
crosses a bus, and the target is not judged.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from mpi_kvbench.context import RankContext
from mpi_kvbench.engine.iopool import MOVE, WRITE, Done, IOPool, Op
from mpi_kvbench.registry import TIERS

TARGET = 0.9


class NoPayload:
    """The pool's host payload ring, never used here: HBM makes its own bytes."""

    def take(self) -> Any:
        raise AssertionError("host payload requested: the tier did not produce on the device")

    def give_back(self, buf: Any) -> None:
        raise AssertionError("host payload returned")


def open_tier(name: str, slots: int, obj: int, **params: Any) -> Any:
    cls = TIERS.load(name)
    tier = cls(cls.Params(**params), slots * obj, obj, level=name)
    tier.open(RankContext())
    return tier


def drive(pool: IOPool, make: Callable[[int], Op], inflight: int, seconds: float) -> tuple[float, float]:
    """Keeps ``inflight`` ops submitted (the pool runs ``io_depth`` of them) for
    ``seconds``; returns (GB/s over the wall time, process CPU seconds per GB)."""
    moved = [0]
    errors: list[BaseException] = []
    free = threading.Semaphore(inflight)
    lock = threading.Lock()

    def report(op: Op, result: Done | BaseException) -> None:
        if isinstance(result, BaseException):
            errors.append(result)
        else:
            with lock:
                moved[0] += result.write_bytes
        free.release()

    for i in range(inflight):                         # warm-up: thread streams, staging buffers
        free.acquire()
        pool.submit(make(i), report)
    for _ in range(inflight):
        free.acquire()
    for _ in range(inflight):
        free.release()
    moved[0] = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    i = 0
    while time.perf_counter() - t0 < seconds and not errors:
        free.acquire()
        pool.submit(make(i), report)
        i += 1
    for _ in range(inflight):                         # wait for the last ones
        free.acquire()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if errors:
        raise errors[0]
    return moved[0] / wall / 1e9, cpu / (moved[0] / 1e9)


def torch_copies(dst: Any, src: Any, seconds: float, batch: int, cuda: bool) -> float:
    """GB/s of ``dst.copy_(src)`` on one side stream, synchronized every ``batch`` copies."""
    stream = torch.cuda.Stream(device=dst.device if dst.is_cuda else src.device) if cuda else None
    ctx = torch.cuda.stream(stream) if cuda else contextlib.nullcontext()
    sync = stream.synchronize if cuda else (lambda: None)
    with ctx:
        dst.copy_(src, non_blocking=True)            # warm-up
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(batch):
                dst.copy_(src, non_blocking=True)
            sync()
            n += batch
        wall = time.perf_counter() - t0
    return n * src.numel() / wall / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--object-mib", type=float, default=32, help="object size (default 32 MiB)")
    ap.add_argument("--seconds", type=float, default=5, help="per measurement (default 5)")
    ap.add_argument("--io-depth", type=int, default=8, help="operations in flight (default 8)")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                    help="auto: the GPU when torch sees one, else torch CPU tensors")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if args.device == "cuda" and not cuda:
        print("error: --device cuda, but torch sees no GPU", file=sys.stderr)
        return 2
    obj = max(4096, int(args.object_mib * 2**20) // 4096 * 4096)
    depth = args.io_depth
    slots = 2 * depth + 2
    if cuda:
        where = f"GPU: {torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    else:
        where = (f"NO GPU FOUND (torch {torch.__version__}): HBM is a torch CPU tensor (device: cpu);"
                 " every figure below is a host memory copy, not PCIe/NVLink, and the target is"
                 " not judged")
    print(where)
    print(f"object {obj / 2**20:g} MiB, io_depth {depth}, {args.seconds:g} s per measurement")

    hbm = open_tier("hbm", slots, obj, device="auto" if cuda else "cpu")
    dram = open_tier("dram", slots, obj)
    pools = {d: IOPool([hbm, dram], obj, d, NoPayload(), verify=False) for d in sorted({1, depth})}
    try:
        hi, di = hbm.info(), dram.info()
        print(f"hbm: device {hi['device']}, produces on device {hi['produces_on_device']},"
              f" copy streams {hi['copy_streams']}; dram: pinned {di['pinned']}")

        def down(i: int) -> Op:
            return Op(MOVE, i, src=0, src_slot=i % slots, dst=1, dst_slot=i % slots)

        def up(i: int) -> Op:
            return Op(MOVE, i, src=1, src_slot=i % slots, dst=0, dst_slot=i % slots)

        def new(i: int) -> Op:
            return Op(WRITE, i, dst=0, dst_slot=i % slots, seq=i)

        tier: dict[tuple[str, int], tuple[float, float]] = {}
        for d, pool in pools.items():
            for name, make in (("D2H", down), ("H2D", up), ("produce", new)):
                if name == "produce" and d != depth:
                    continue
                tier[name, d] = drive(pool, make, 2 * d, args.seconds)
    finally:
        for pool in pools.values():
            pool.close()
        hbm.close()
        dram.close()

    dev = torch.device("cuda:0" if cuda else "cpu")
    on_dev = torch.zeros(obj, dtype=torch.uint8, device=dev)      # zeros: pages faulted now
    pinned = torch.zeros(obj, dtype=torch.uint8, pin_memory=cuda)
    pageable = torch.zeros(obj, dtype=torch.uint8)
    ref = {}
    for name, dst, src in (("D2H", pinned, on_dev), ("H2D", on_dev, pinned)):
        ref[name, "sync"] = torch_copies(dst, src, args.seconds, 1, cuda)
        ref[name, "stream"] = torch_copies(dst, src, args.seconds, 16, cuda)
    for name, dst, src in (("D2H", pageable, on_dev), ("H2D", on_dev, pageable)):
        ref[name, "pageable"] = torch_copies(dst, src, args.seconds, 1, cuda)

    host = "pinned" if cuda else "host"     # without a GPU nothing is pinned: plain memory
    print(f"\n{'':34}{'GB/s':>8}{'CPU s/GB':>10}")
    missed = []
    for name in ("D2H", "H2D"):
        for d in sorted({1, depth}):
            gbps, cpu = tier[name, d]
            print(f"{f'{name} tier, io_depth {d}':34}{gbps:8.2f}{cpu:10.3f}")
        print(f"{f'{name} torch {host}, sync per copy':34}{ref[name, 'sync']:8.2f}")
        print(f"{f'{name} torch {host}, 16 per sync':34}{ref[name, 'stream']:8.2f}")
        print(f"{f'{name} torch pageable, sync per copy':34}{ref[name, 'pageable']:8.2f}")
    gbps, cpu = tier["produce", depth]
    print(f"{f'produce on device, io_depth {depth}':34}{gbps:8.2f}{cpu:10.3f}")
    print()
    for name in ("D2H", "H2D"):
        gbps = tier[name, depth][0]
        ratio, peak = gbps / ref[name, "sync"], gbps / ref[name, "stream"]
        verdict = ("PASS" if ratio >= TARGET else "MISS") if cuda else "not judged: no GPU"
        if cuda and ratio < TARGET:
            missed.append(name)
        one = tier[name, 1][0] / ref[name, "sync"]
        print(f"{name}: tier {gbps:.2f} GB/s = {ratio:.2f} x torch {host} copy"
              f" ({ref[name, 'sync']:.2f} GB/s), {peak:.2f} x back-to-back"
              f" ({ref[name, 'stream']:.2f} GB/s), {one:.2f} x at io_depth 1;"
              f" target >= {TARGET}: {verdict}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
