"""The checkpoint run on every rank: set up, write together, restore together, report.

All ranks open their target and start their producer (which fills the pool), meet at a
barrier, and write; the write window is the first rank's start to the last rank's end
(Unix clocks), as for a run; then again for the restore. Rank 0 writes ``summary.json``
and ``result.h5`` (per-rank arrays) in ``results_dir/run_name``. Peak memory per rank is
the kernel's high-water mark of resident memory over the write and restore (reset at
their start where the kernel allows, else the process's lifetime peak): the pool plus
the process's own working set, never the checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import h5py
import numpy as np

from mpi_kvbench import SCHEMA_VERSION, __version__
from mpi_kvbench.calibrate import calibrate
from mpi_kvbench.checkpoint.settings import CheckpointSettings
from mpi_kvbench.checkpoint.stream import BufferPool, Producer, chunk_key
from mpi_kvbench.checkpoint.targets import FileTarget, S3Target, Target
from mpi_kvbench.context import RankContext
from mpi_kvbench.engine import payload as pl
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.footprint import peak_rss_bytes, rss_bytes
from mpi_kvbench.mpi.comm import Comm, topology, world
from mpi_kvbench.results.hdf5 import atomic_write, write_summary
from mpi_kvbench.results.summary import VERIFY_FAILED
from mpi_kvbench.run import _holds_result, agree
from mpi_kvbench.tiers.storage import StorageTier

PER_RANK = ("bytes", "write_s", "read_s", "write_start_ns", "write_end_ns", "read_start_ns",
            "read_end_ns", "stalls", "stall_s", "gen_cpu_s", "peak_rss_bytes", "rss_before_bytes",
            "verify_mismatches")


def reset_peak_rss() -> bool:
    """Starts a new resident-memory high-water mark (Linux >= 4.0: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def open_target(s: CheckpointSettings, ctx: RankContext, size: int) -> Target:
    return FileTarget(s, ctx) if s.target == "file" else S3Target(s, ctx, size)


def execute(s: CheckpointSettings, command_line: str, comm: Comm | None = None) -> int:
    comm = comm or world()
    started = datetime.now(UTC)
    run_id = comm.bcast(f"ckpt-{started:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}" if comm.rank == 0
                        else None)
    ctx, _ = topology(comm, 1, run_id)
    run_name = s.run_name or run_id
    out_dir = os.path.join(s.results_dir, run_name)
    exc: BaseException | None = None
    if comm.rank == 0 and _holds_result(out_dir):
        exc = ConfigError(f"checkpoint.run_name={run_name!r}: {out_dir} already holds a result;"
                          " choose another --run-name")
    agree(comm, exc)
    size = s.rank_bytes(comm.size)
    target = cal = None
    pool = BufferPool(s.num_buffers, s.chunk_bytes)
    try:
        try:
            if s.target == "file" and s.calibrate:
                # the writer's own pattern, raw: chunk-sized O_DIRECT transfers, one at a time
                cal = calibrate(StorageTier.Params(path=s.path, o_direct=True), ctx, s.chunk_bytes,
                                1, max(s.chunk_bytes, int(min(s.calibrate_gb * 1e9, size))))
            target = open_target(s, ctx, size)
        except (ConfigError, OSError) as e:
            exc = e
        agree(comm, exc)
        mine = _measure(s, comm, ctx, target, pool, size)
    finally:
        pool.close()
        if target is not None and not s.keep:
            target.remove()
    rows = comm.gather(mine)
    status = 0
    if comm.rank == 0:
        summary = summarize(s, rows, cal, run_name, run_id, command_line, comm.size)
        write_result(out_dir, summary, rows)
        status = 0 if summary["complete"] else 1
        if status == 0 and summary.get("verify_mismatches"):   # as a run: exit 3, one line
            print(f"error: verify: {summary['verify_mismatches']} restored chunk(s) differ from"
                  " what was written", file=sys.stderr)
            status = VERIFY_FAILED
    return comm.bcast(status)


def _measure(s: CheckpointSettings, comm: Comm, ctx: RankContext, target: Target,
             pool: BufferPool, size: int) -> dict[str, Any]:
    row: dict[str, Any] = {"rank": ctx.rank, "host": ctx.host, "bytes": size, "error": None,
                           "target": target.info(), "pool_bytes": pool.nbytes}
    producer = Producer(pool, size, ctx.rank, s.generator_threads,   # fills the pool now
                        checksums=s.restore and s.verify)
    row["rss_before_bytes"] = rss_bytes()
    reset_peak_rss()
    try:
        producer.wait_primed()
        comm.barrier()
        row["write_start_ns"] = time.time_ns()
        written = target.write(producer.chunks())
        row["write_end_ns"] = time.time_ns()
        if written != size:
            raise OSError(f"wrote {written} of {size} bytes")
    except Exception as e:   # noqa: BLE001 - reported in the result, the other ranks go on
        row["error"] = f"rank {ctx.rank}: write: {e}"
    finally:
        producer.close()
    row.update(stalls=producer.stalls, stall_s=producer.stall_s, gen_cpu_s=producer.gen_cpu_s)
    failed = comm.allreduce(int(row["error"] is not None), "sum")
    if s.restore and not failed:
        comm.barrier()
        row["read_start_ns"] = time.time_ns()
        try:
            row["verify_mismatches"] = _restore(s, target, pool, producer, ctx.rank)
        except Exception as e:   # noqa: BLE001
            row["error"] = f"rank {ctx.rank}: restore: {e}"
        row["read_end_ns"] = time.time_ns()
    row["peak_rss_bytes"] = peak_rss_bytes()
    for a, b, k in (("write_start_ns", "write_end_ns", "write_s"),
                    ("read_start_ns", "read_end_ns", "read_s")):
        if a in row and b in row:
            row[k] = (row[b] - row[a]) / 1e9
    return row


def _restore(s: CheckpointSettings, target: Target, pool: BufferPool, producer: Producer,
             rank: int) -> int:
    """Reads the shard back chunk by chunk into one pool buffer; with verify, checks
    every block's stamp and the chunk's CRC. Returns the chunks that failed."""
    bad = 0
    buf = memoryview(pool.buffers[0])
    for i, n in enumerate(producer.sizes):
        view = buf[:n]
        got = target.read_into(view)
        if got != n:
            raise OSError(f"chunk {i}: read {got} of {n} bytes")
        if s.verify and not pl.check(view, chunk_key(rank, i), producer.crcs[i]):
            bad += 1
    return bad


def summarize(s: CheckpointSettings, rows: list[dict], cal: dict | None, run_name: str,
              run_id: str, command_line: str, world_size: int) -> dict[str, Any]:
    errors = [r["error"] for r in rows if r["error"]]
    total = sum(r["bytes"] for r in rows)
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "tool_version": __version__, "kind": "checkpoint",
        "run_name": run_name, "run_id": run_id, "command_line": command_line,
        "complete": not errors, "errors": errors, "world_size": world_size,
        "target": s.target, "bytes_per_rank": rows[0]["bytes"], "bytes_total": total,
        "pool_bytes": rows[0]["pool_bytes"], "num_buffers": s.num_buffers,
        "chunk_bytes": s.chunk_bytes, "generator_threads": s.generator_threads,
        "generation_stalls": sum(r.get("stalls", 0) for r in rows),
        "generation_stall_s": round(sum(r.get("stall_s", 0.0) for r in rows), 6),
        "peak_rss_bytes_max": max(r.get("peak_rss_bytes", 0) for r in rows),
        "peak_rss_over_pool_bytes_max": max(r.get("peak_rss_bytes", 0) - r["pool_bytes"]
                                            for r in rows),
        # what the write and restore added to the process: the pool, never the checkpoint
        "peak_rss_growth_bytes_max": max(r.get("peak_rss_bytes", 0) - r.get("rss_before_bytes", 0)
                                         for r in rows),
        "target_info": rows[0]["target"],
    }
    for phase in ("write", "read"):
        starts = [r.get(f"{phase}_start_ns") for r in rows]
        ends = [r.get(f"{phase}_end_ns") for r in rows]
        if None in starts or None in ends:
            continue
        window = (max(ends) - min(starts)) / 1e9
        per = [r["bytes"] / r[f"{phase}_s"] / 1e9 for r in rows]
        name = "checkpoint" if phase == "write" else "restore"
        out[f"time_to_{name}_s"] = round(window, 4)
        out[f"{phase}_throughput_gbps"] = round(total / window / 1e9, 4)
        out[f"{phase}_gbps_per_rank"] = {"min": round(min(per), 4), "mean": round(
            sum(per) / len(per), 4), "max": round(max(per), 4)}
        key = f"{phase}_gbps"
        if cal and cal.get(key):
            # the calibration is one rank's raw rate; every rank's own rate is held to it
            out[f"{phase}_vs_calibrated"] = round(min(per) / cal[key], 4)
    if s.restore and s.verify and not errors:
        out["verify_mismatches"] = sum(r.get("verify_mismatches", 0) for r in rows)
    out["calibration"] = cal
    return out


def write_result(out_dir: str, summary: dict[str, Any], rows: list[dict]) -> None:
    """Both files as a run writes its own: whole on the device before their names appear."""
    os.makedirs(out_dir, exist_ok=True)
    write_summary(os.path.join(out_dir, "summary.json"), summary)

    def write_h5(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["kind"] = "checkpoint"
            f.attrs["complete"] = summary["complete"]
            f.attrs["summary"] = json.dumps(summary)
            g = f.create_group("ranks")
            for k in PER_RANK:
                g.create_dataset(k, data=np.array([float(r.get(k) or 0) for r in rows]))
            g.create_dataset("target", data=np.array([json.dumps(r["target"]) for r in rows],
                                                   dtype=h5py.string_dtype()))
    atomic_write(os.path.join(out_dir, "result.h5"), write_h5)
