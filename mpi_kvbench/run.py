"""The pipeline of one run, in order: config -> topology -> tiers -> trace -> phases ->
reductions -> result. Every rank runs it; rank 0 also writes the result.

Failure: a rank that fails during set-up makes every rank raise the same error (they
agree by allgather before going on). A rank that fails during the measured phase tells
the others to stop (they check between requests and while waiting), and every rank
still takes part in the reductions, so rank 0 keeps a partial result marked
``complete: false`` and the run exits non-zero.
"""

from __future__ import annotations

import os
import resource
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mpi_kvbench import SCHEMA_VERSION, __version__, disagg
from mpi_kvbench.calibrate import calibrate
from mpi_kvbench.comm import SerialComm, topology, world
from mpi_kvbench.config import Config
from mpi_kvbench.context import RankContext
from mpi_kvbench.distribute import replica_requests
from mpi_kvbench.engine import Engine
from mpi_kvbench.environment import describe
from mpi_kvbench.errors import ConfigError, RunFailed
from mpi_kvbench.reduce import Collected, collect, group_latency
from mpi_kvbench.registry import TIERS, WORKLOADS
from mpi_kvbench.result import write_hdf5, write_summary
from mpi_kvbench.summary import render, summarize
from mpi_kvbench.tiers.storage import StorageTier, remove_dirs
from mpi_kvbench.workloads.base import Request


def _holds_result(out_dir: str) -> bool:
    return any(os.path.exists(os.path.join(out_dir, f)) for f in ("result.h5", "summary.json"))


def agree(comm: SerialComm, exc: BaseException | None) -> None:
    """Raises the same RunFailed on every rank when any rank failed."""
    mine = None if exc is None else (f"rank {comm.rank}: {exc}", isinstance(exc, ConfigError))
    failures = [f for f in comm.allgather(mine) if f]
    if failures:
        message, config = failures[0]
        if comm.size == 1:
            message = message.split(": ", 1)[1]
        raise RunFailed(message, config)


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Progress:
    """A one-line status on rank 0's terminal every two seconds; silent when not a tty."""

    def __init__(self, enabled: bool, start_ns: int, duration_s: float) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.start_ns, self.duration_s = start_ns, duration_s
        self.last_ns, self.last_bytes = start_ns, 0

    def __call__(self, engine: Engine) -> None:
        now = time.perf_counter_ns()
        if not self.enabled or now - self.last_ns < 2e9:
            return
        moved = sum(v for k, v in engine.metrics.counters.items() if k.endswith("_bytes")
                    and k.split(".")[0] in engine.names)
        rate = (moved - self.last_bytes) / (now - self.last_ns)
        el = (now - self.start_ns) / 1e9
        left = f", {max(0.0, self.duration_s - el):.0f} s left" if self.duration_s else ""
        sys.stderr.write(f"\r  {el:.0f} s{left}, rank 0: {engine.completed} requests,"
                         f" {rate:.2f} GB/s   ")
        sys.stderr.flush()
        self.last_ns, self.last_bytes = now, moved

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def open_tiers(cfg: Config, ctx: RankContext, group: SerialComm, object_bytes: int,
               one_writer: bool) -> list:
    """Opens every tier; with ``one_writer`` the group's leader creates the shared storage
    file before the other ranks of its group open it."""
    tiers = []
    try:
        for spec in cfg.tiers:
            tier = TIERS.load(spec.kind)(spec.params, spec.capacity_bytes, object_bytes)
            tier.level = spec.level
            if one_writer and isinstance(tier, StorageTier):
                tier.group_role = "writer" if ctx.tp_rank == 0 else "reader"
                _open_in_turn(tier, ctx, group)
            else:
                tier.open(ctx)
            tiers.append(tier)
    except BaseException:
        for tier in tiers:
            tier.close()
        raise
    return tiers


def _open_in_turn(tier: StorageTier, ctx: RankContext, group: SerialComm) -> None:
    if tier.group_role == "writer":
        try:
            tier.open(ctx)
        except BaseException:
            group.bcast(False)
            raise
        group.bcast(True)
    elif group.bcast(None):
        tier.open(ctx)
    else:
        raise ConfigError("tiers.storage: the TP group's writer could not create the shared file")


@dataclass
class Run:
    """What every stage of one run shares, on one rank."""

    cfg: Config
    comm: SerialComm
    group: SerialComm          # this rank's TP group
    ctx: RankContext
    out_dir: str
    run_name: str
    started: datetime
    command_line: str
    tiers: list = field(default_factory=list)
    engine: Engine | None = None
    workload: Any = None
    requests: Iterator[Request] = iter(())
    calibration: list | None = None


def execute(cfg: Config, command_line: str) -> int:
    """Runs the benchmark on every rank; returns the process exit status."""
    comm = world()
    started = datetime.now(UTC)
    run_id = comm.bcast(f"{started:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}" if comm.rank == 0
                        else None)
    run_name = cfg.run.run_name or run_id
    ctx, group = topology(comm, cfg.kv.tensor_parallel, run_id)
    disagg.check(cfg.engine.prefill_groups, ctx, [t.level for t in cfg.tiers])
    run = Run(cfg, comm, group, ctx, os.path.join(cfg.run.results_dir, run_name), run_name,
              started, command_line)
    exc = None
    if comm.rank == 0 and _holds_result(run.out_dir):   # the directory is made only to write
        exc = ConfigError(f"run.run_name={run_name!r}: {run.out_dir} already holds a result;"
                          " choose another --run-name")
    agree(comm, exc)
    try:
        _set_up(run)
        return _measure(run)
    finally:
        if run.engine is not None:
            run.engine.close()
        for tier in run.tiers:
            tier.close()


def _set_up(run: Run) -> None:
    """Calibration, tiers, engine and this rank's requests; every rank agrees on failure."""
    cfg, comm, ctx = run.cfg, run.comm, run.ctx
    exc = None
    one_writer = cfg.model.kind == "mla" and cfg.kv.mla_mode == "one_writer" and ctx.tp_size > 1
    try:
        geometry = cfg.geometry
        storage = [t for t in cfg.tiers if t.kind == "storage"]
        if cfg.run.calibrate and storage:
            comm.barrier()   # every rank calibrates at once, as they will run
            run.calibration = calibrate(
                storage[0].params, ctx, geometry.object_bytes, cfg.io.io_depth,
                min(storage[0].capacity_bytes, int(cfg.run.calibrate_gb * 1e9)))
        run.tiers = open_tiers(cfg, ctx, run.group, geometry.object_bytes, one_writer)
        run.workload = WORKLOADS.load(cfg.workload_kind)(cfg.workload, cfg.run.seed)
    except Exception as err:   # noqa: BLE001 - every rank must hear of it
        exc = err
    agree(comm, exc)
    for tier in run.tiers:   # a TP group's ranks must plan alike: the smallest capacity rules
        tier.capacity_bytes = run.group.allreduce(tier.capacity_bytes, "min")
    try:
        run.engine = Engine(cfg, run.tiers, storage_writer=not one_writer or ctx.tp_rank == 0)
        k = cfg.engine.prefill_groups
        run.requests = replica_requests(run.workload, ctx, comm, k or None)
        if k and ctx.group < k:
            disagg.attach_prefill(run.engine, comm, ctx, k)
    except Exception as err:   # noqa: BLE001
        exc = err
    agree(comm, exc)
    run.calibration = comm.gather(run.calibration)


def _measure(run: Run) -> int:
    """Pre-conditioning, warm-up, the measured phase, reductions, tear-down, result."""
    cfg, comm, ctx, engine = run.cfg, run.comm, run.ctx, run.engine
    k = cfg.engine.prefill_groups
    prefill, decode = bool(k) and ctx.group < k, bool(k) and ctx.group >= k
    error = None
    start = time.perf_counter_ns()
    wall_start, elapsed = time.time_ns(), 0
    try:
        if cfg.run.precondition > 0:
            engine.precondition(cfg.run.precondition)
        if cfg.run.warmup_s > 0:
            comm.barrier()
            t0 = time.perf_counter_ns()
            engine.start_phase(t0)
            engine.replay(run.requests, t0 + int(cfg.run.warmup_s * 1e9), stop=comm.stop_requested)
        comm.quiet_barrier()
        start = time.perf_counter_ns()
        wall_start = time.time_ns()
        engine.start_phase(start)
        cpu0, gen0, bytes0 = cpu_s(), engine.payload.generator_cpu_s, engine.payload.generated_bytes
        stalls0 = engine.payload.stalls
        deadline = start + int(cfg.run.duration_s * 1e9) if cfg.run.duration_s else None
        progress = Progress(comm.rank == 0, start, cfg.run.duration_s)
        if decode:
            o_direct = all(t.info().get("o_direct", True) for t in run.tiers)
            why = disagg.decode_loop(engine, comm, k, o_direct)
        else:
            why = engine.replay(run.requests, deadline, cfg.run.max_requests,
                                stop=comm.stop_requested, progress=progress)
        if prefill:
            disagg.finish_prefill(comm, ctx, k)
        elapsed = time.perf_counter_ns() - start
        progress.done()
        if why == "share" and cfg.run.stonewall:
            comm.notify_stop("stonewall")
        m = engine.metrics
        m.add("cpu.process_us", int((cpu_s() - cpu0) * 1e6))
        m.add("cpu.generation_us", int((engine.payload.generator_cpu_s - gen0) * 1e6))
        m.add("payload.generated_bytes", engine.payload.generated_bytes - bytes0)
        m.add("payload.stalls", engine.payload.stalls - stalls0)
        m.add("stopped_by_stonewall", int(why == "stopped" and comm.stop_requested() == "stonewall"))
        for name, peak in zip(engine.names, engine.peak_used, strict=True):
            m.add(f"{name}.peak_used_bytes", peak)
    except Exception as err:   # noqa: BLE001 - the others must stop and the result be kept
        error = f"rank {comm.rank}: {type(err).__name__}: {err}"
        comm.notify_stop(error)
        elapsed = elapsed or time.perf_counter_ns() - start
    wall_end = time.time_ns()
    comm.quiet_barrier()
    group_latency(run.group, engine.log, engine.metrics)
    env = describe(ctx, comm.library, [t.info() | {"level": t.level} for t in run.tiers])
    data = collect(comm, engine.metrics, elapsed, env, error)
    wall = (comm.allreduce(wall_start, "min"), comm.allreduce(wall_end, "max"))
    engine.close()
    for tier in run.tiers:
        tier.close()
    comm.drain()   # every rank has closed: directories ranks made for each other are empty now
    for tier in run.tiers:
        if isinstance(tier, StorageTier):
            remove_dirs(tier.made_dirs)
    if comm.rank != 0:
        return 1 if comm.bcast(None) else 0
    status = _write(run, data, wall)
    comm.bcast(status)
    return status


def _write(run: Run, data: Collected, wall: tuple[int, int]) -> int:
    """Rank 0: the summary, result.h5 and summary.json, and the console table."""
    cfg, ctx, engine = run.cfg, run.ctx, run.engine
    storage = [t for e in data.env for t in e["tiers"] if t["level"] == "storage" and "o_direct" in t]
    hbm = [t for e in data.env for t in e["tiers"] if t["level"] == "hbm"]
    # potential caching: a node's storage working set fits in that node's memory
    working_set: dict[str, int] = {}
    memory = {e["host"]: e["memory_bytes"] for e in data.env}
    if "storage.peak_used_bytes" in data.counter_names:
        col = data.counter_names.index("storage.peak_used_bytes")
        for i, e in enumerate(data.env):
            working_set[e["host"]] = working_set.get(e["host"], 0) + int(data.counters[i, col])
    facts = {
        "run_name": run.run_name,
        "tensor_parallel": ctx.tp_size,
        "replicas": ctx.replicas,
        "model": cfg.model.name,
        "bytes_per_token_per_rank": cfg.model.bytes_per_token_per_rank(ctx.tp_size),
        "object_bytes": engine.geometry.object_bytes,
        "mla_mode": cfg.kv.mla_mode if cfg.model.kind == "mla" else None,
        "layout": cfg.kv.layout,
        "workload": cfg.workload_kind,
        "payload_mode": cfg.io.payload,
        "tiers": engine.names,
        "o_direct": all(t["o_direct"] for t in storage) if storage else None,
        "hbm_emulated": any(t["emulated"] for t in hbm) if hbm else None,
        "potential_caching": any(0 < ws < memory[h] for h, ws in working_set.items()),
        "calibration": _calibration_summary(run.calibration),
        "prefill_groups": cfg.engine.prefill_groups,
        "stonewall": cfg.run.stonewall,
        "qos_metric": cfg.qos.metric,
        "qos_targets_ms": cfg.qos.targets_ms,
    }
    summary = summarize(data, facts)
    attrs = {
        "schema_version": SCHEMA_VERSION, "tool_version": __version__,
        "command_line": run.command_line, "config_yaml": cfg.text, "seed": cfg.run.seed,
        "run_id": ctx.run_id, "run_name": run.run_name, "complete": summary["complete"],
        "start_time": run.started.isoformat(),
        "end_time": datetime.now(UTC).isoformat(),
        "measured_start_unix_ns": wall[0], "measured_end_unix_ns": wall[1],
        "world_size": ctx.world_size, "tensor_parallel": ctx.tp_size, "replicas": ctx.replicas,
        "nodes": ctx.nodes, "model": cfg.model.name, "mla_mode": facts["mla_mode"],
        "o_direct": facts["o_direct"], "hbm_emulated": facts["hbm_emulated"],
        "payload_mode": cfg.io.payload, "workload_info": run.workload.info(),
        "calibration": [c for c in run.calibration or [] if c],
    }
    out_dir = run.out_dir
    try:
        if _holds_result(out_dir):   # another run took the name meanwhile: keep both
            out_dir = f"{out_dir}-{ctx.run_id}"
            print(f"warning: the run name was taken while this run ran; writing {out_dir}",
                  file=sys.stderr)
        os.makedirs(out_dir, exist_ok=True)
        write_hdf5(os.path.join(out_dir, "result.h5"), data, attrs, summary)
        write_summary(os.path.join(out_dir, "summary.json"), summary)
    except OSError as err:
        print(f"error: cannot write the result in {out_dir}: {err}", file=sys.stderr)
        return 1
    print(render(summary))
    print(f"\n  result: {out_dir}/result.h5, {out_dir}/summary.json")
    if data.errors:
        print(f"error: {data.errors[0]}", file=sys.stderr)
        return 1
    return 0


def _calibration_summary(per_rank: list | None) -> dict[str, Any] | None:
    """All ranks calibrated at once: all their bytes over the slowest rank's time."""
    per_rank = [c for c in per_rank or [] if c]
    if not per_rank:
        return None
    out = {"block_bytes": per_rank[0]["block_bytes"], "io_depth": per_rank[0]["io_depth"],
           "ranks": len(per_rank)}
    total = sum(c["bytes"] for c in per_rank)
    for op in ("read", "write"):
        slowest = max(c["bytes"] / c[f"{op}_gbps"] for c in per_rank)
        out[f"{op}_gbps"] = round(total / slowest, 4)
    return out
