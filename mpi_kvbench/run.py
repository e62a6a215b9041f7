"""The pipeline of one run, one call per stage: config -> topology -> tiers -> trace ->
phases -> reductions -> result. Every rank runs it; rank 0 also writes the result.

Failure: a rank that fails during set-up makes every rank raise the same error (they
agree by allgather before going on). A rank that fails during the measured phase tells
the others to stop (they check between requests and while waiting), and every rank
still takes part in the reductions, so rank 0 keeps a partial result marked
``complete: false`` and the run exits non-zero.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mpi_kvbench.calibrate import calibrate
from mpi_kvbench.config import Config
from mpi_kvbench.context import RankContext
from mpi_kvbench.distribute import replica_requests
from mpi_kvbench.engine import Engine, EngineSettings, StopReason, disagg
from mpi_kvbench.environment import describe
from mpi_kvbench.errors import ConfigError, RunFailed
from mpi_kvbench.iotrace import IoTraceLog, rank_path
from mpi_kvbench.mpi.comm import Comm, topology, world
from mpi_kvbench.mpi.reduce import collect, group_latency
from mpi_kvbench.progress import Progress
from mpi_kvbench.registry import POLICIES, WORKLOADS
from mpi_kvbench.results.collected import Collected
from mpi_kvbench.results.hdf5 import attributes, write_hdf5, write_summary
from mpi_kvbench.results.summary import RunFacts, render, summarize
from mpi_kvbench.tiers import open_tiers
from mpi_kvbench.tiers.base import Tier
from mpi_kvbench.workloads.base import Request


def engine_settings(cfg: Config) -> EngineSettings:
    e, io = cfg.engine, cfg.io
    return EngineSettings(
        geometry=cfg.geometry, decode_mode=e.decode_mode, decode_batch=e.decode_batch,
        promotion=e.promotion, prefill_tokens_per_s=e.prefill_tokens_per_s,
        time_per_output_token_ms=e.time_per_output_token_ms, high_watermark=e.high_watermark,
        low_watermark=e.low_watermark, io_depth=io.io_depth, payload=io.payload, verify=io.verify,
        max_batch=e.max_batch, scheduling=e.scheduling)


def policy_factory(cfg: Config):
    """Makes one eviction policy (per tier) with the configured parameters."""
    return functools.partial(POLICIES.load(cfg.engine.policy), cfg.policy_params)


def agree(comm: Comm, exc: BaseException | None) -> None:
    """Raises the same RunFailed on every rank when any rank failed."""
    mine = None if exc is None else (f"rank {comm.rank}: {exc}", isinstance(exc, ConfigError))
    failures = [f for f in comm.allgather(mine) if f]
    if failures:
        message, config = failures[0]
        if comm.size == 1:
            message = message.split(": ", 1)[1]
        raise RunFailed(message, config)


def _holds_result(out_dir: str) -> bool:
    return any(os.path.exists(os.path.join(out_dir, f)) for f in ("result.h5", "summary.json"))


@dataclass
class Run:
    """What every stage of one run shares, on one rank."""

    cfg: Config
    comm: Comm
    group: Comm                # this rank's TP group
    ctx: RankContext
    out_dir: str
    run_name: str
    started: datetime
    command_line: str
    tiers: list[Tier] = field(default_factory=list)
    sources: list[Tier] = field(default_factory=list)   # other ranks' files this rank reads
    engine: Engine | None = None
    handoff: disagg.Handoff | None = None
    workload: Any = None
    requests: Iterator[Request] = iter(())
    calibration: list | None = None
    trace: IoTraceLog | None = None     # the I/O trace log (--io-trace-log)

    @property
    def decode(self) -> bool:
        k = self.cfg.engine.prefill_groups
        return bool(k) and not disagg.is_prefill(self.ctx, k)


@dataclass
class Phase:
    """How the measured phase went on this rank."""

    elapsed_ns: int = 0
    wall_ns: tuple[int, int] = (0, 0)     # Unix time of its start and end
    error: str | None = None


def execute(cfg: Config, command_line: str) -> int:
    """Runs the benchmark on every rank; returns the process exit status."""
    run = _start(cfg, world(), command_line)
    try:
        _set_up(run)
        phase = _measure(run)
        data = _reduce(run, phase)
        _tear_down(run)
    finally:
        _close(run)
    return _report(run, data, phase)


def _start(cfg: Config, comm: Comm, command_line: str) -> Run:
    """Run id, topology, and the checks that need the world size."""
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
    return run


def _set_up(run: Run) -> None:
    """Calibration, tiers, engine and this rank's requests; every rank agrees on failure."""
    cfg, comm, ctx = run.cfg, run.comm, run.ctx
    one_writer = cfg.model.kind == "mla" and cfg.kv.mla_mode == "one_writer" and ctx.tp_size > 1
    object_bytes = cfg.geometry.object_bytes
    exc = None
    try:
        storage = [t for t in cfg.tiers if t.kind == "storage"]
        if cfg.run.calibrate and storage:
            comm.barrier()   # every rank calibrates at once, as they will run
            run.calibration = calibrate(
                storage[0].params, ctx, object_bytes, cfg.io.io_depth,
                min(storage[0].capacity_bytes, int(cfg.run.calibrate_gb * 1e9)))
        run.tiers = open_tiers(cfg.tiers, ctx, object_bytes, one_writer=one_writer,
                               group_bcast=run.group.bcast)
        run.workload = WORKLOADS.load(cfg.workload_kind)(cfg.workload, cfg.run.seed)
    except Exception as err:   # noqa: BLE001 - every rank must hear of it
        exc = err
    agree(comm, exc)
    for tier in run.tiers:   # a TP group's ranks must plan alike: the smallest capacity rules
        tier.limit_capacity(run.group.allreduce(tier.capacity_bytes, "min"))
    try:
        k = cfg.engine.prefill_groups
        write_level = 0
        if k:
            run.sources = disagg.open_sources(comm, ctx, k, run.tiers)
            if disagg.is_prefill(ctx, k):
                run.handoff = disagg.Handoff(comm, ctx, k)
                write_level = [t.level for t in run.tiers].index("storage")
        run.trace = open_trace(run)
        run.engine = Engine(engine_settings(cfg), run.tiers, policy_factory(cfg),
                            write_level=write_level, sources=run.sources, on_prefilled=run.handoff,
                            trace=run.trace)
        run.requests = replica_requests(run.workload, ctx, comm, k or None, cfg.kv.chunk_tokens)
        if cfg.workload_kind == "replay":   # rank r carries out recorded log r
            run.engine.load_log(run.workload.load(comm.rank, comm.size))
    except Exception as err:   # noqa: BLE001
        exc = err
    agree(comm, exc)
    run.calibration = comm.gather(run.calibration)


def open_trace(run: Run) -> IoTraceLog | None:
    """This rank's I/O trace log (``run.io_trace_log``), with what replay needs beside it."""
    cfg, ctx = run.cfg, run.ctx
    if not cfg.run.io_trace_log:
        return None
    path = rank_path(cfg.run.io_trace_log, ctx.rank, ctx.expand)
    meta = {"config": cfg.text, "world_size": ctx.world_size, "tp_size": ctx.tp_size,
            "run_id": ctx.run_id, "run_name": run.run_name, "io_depth": cfg.io.io_depth,
            "levels": [t.level for t in run.tiers], "kinds": [t.name for t in run.tiers]}
    return IoTraceLog(path, ctx.rank, ctx.group, cfg.geometry.object_bytes, meta)


def _measure(run: Run) -> Phase:
    """Pre-conditioning, warm-up and the measured phase; a failure is kept, not raised,
    after telling the other ranks to stop."""
    phase = Phase()
    start = time.perf_counter_ns()
    try:
        if run.cfg.run.precondition > 0:
            run.engine.precondition(run.cfg.run.precondition)
        if run.cfg.workload_kind == "replay":
            run.engine.prime()
        _warm_up(run)
        start = time.perf_counter_ns()
        phase = _measured_phase(run)
    except Exception as err:   # noqa: BLE001 - the others must stop and the result be kept
        phase.error = f"rank {run.comm.rank}: {type(err).__name__}: {err}"
        run.comm.notify_stop(phase.error)
        phase.elapsed_ns = phase.elapsed_ns or time.perf_counter_ns() - start
        phase.wall_ns = (phase.wall_ns[0] or time.time_ns(), time.time_ns())
    return phase


def _warm_up(run: Run) -> None:
    """Serves requests, unmeasured, for ``run.warmup_s`` seconds (fills the cache)."""
    if run.cfg.run.warmup_s <= 0:
        return
    run.comm.barrier()
    t0 = time.perf_counter_ns()
    run.engine.start_phase(t0)
    run.engine.replay(run.requests, t0 + int(run.cfg.run.warmup_s * 1e9),
                      stop=run.comm.stop_requested)


def _measured_phase(run: Run) -> Phase:
    """Every rank starts at one barrier and serves until its share, the deadline or a stop."""
    cfg, comm, engine = run.cfg, run.comm, run.engine
    comm.quiet_barrier()
    if run.trace is not None:
        run.trace.start()
    start, wall_start = time.perf_counter_ns(), time.time_ns()
    engine.start_phase(start)
    deadline = start + int(cfg.run.duration_s * 1e9) if cfg.run.duration_s else None
    progress = Progress(comm.rank == 0, start, cfg.run.duration_s)
    if run.decode:
        why = disagg.decode_loop(engine, comm, cfg.engine.prefill_groups)
    elif cfg.workload_kind == "replay":
        why = engine.replay_log(cfg.workload.timing == "recorded", comm.stop_requested, progress)
    else:
        why = engine.replay(run.requests, deadline, cfg.run.max_requests,
                            stop=comm.stop_requested, progress=progress)
    if run.handoff is not None:
        run.handoff.finish()
    elapsed = time.perf_counter_ns() - start
    progress.done()
    if why is StopReason.SHARE and cfg.run.stonewall:
        comm.notify_stop("stonewall")
    engine.end_phase()
    if run.trace is not None:
        run.trace.close()
    engine.recorder.count("stopped_by_stonewall",
                          int(why is StopReason.STOPPED and comm.stop_requested() == "stonewall"))
    return Phase(elapsed, (wall_start, time.time_ns()))


def _reduce(run: Run, phase: Phase) -> Collected | None:
    """Every rank's figures to rank 0 (None elsewhere)."""
    comm, engine = run.comm, run.engine
    comm.quiet_barrier()
    group_latency(run.group, engine.recorder.log, engine.metrics)
    env = describe(run.ctx, comm.library, [t.info() for t in run.tiers])
    data = collect(comm, engine.metrics, phase.elapsed_ns, env, phase.error)
    phase.wall_ns = (comm.allreduce(phase.wall_ns[0], "min"), comm.allreduce(phase.wall_ns[1], "max"))
    return data


def _tear_down(run: Run) -> None:
    """Closes everything, then, once every rank has, removes what ranks made for each other."""
    _close(run)
    run.comm.drain()
    for tier in run.tiers:
        tier.cleanup()


def _close(run: Run) -> None:
    """Idempotent: also the clean-up after a failed set-up."""
    if run.engine is not None:
        run.engine.close()
    if run.trace is not None:
        try:
            run.trace.close()
        except Exception:   # noqa: BLE001 - a failed run is being closed; its error comes first
            pass
    for tier in (*run.sources, *run.tiers):
        tier.close()


def _report(run: Run, data: Collected | None, phase: Phase) -> int:
    """Rank 0 writes the result and tells the others the exit status."""
    if run.comm.rank != 0:
        return 1 if run.comm.bcast(None) else 0
    status = _write(run, data, phase)
    run.comm.bcast(status)
    return status


def facts(run: Run) -> RunFacts:
    cfg, ctx = run.cfg, run.ctx
    return RunFacts(
        run_name=run.run_name, run_id=ctx.run_id, command_line=run.command_line,
        config_yaml=cfg.text, seed=cfg.run.seed, start_time=run.started.isoformat(),
        tensor_parallel=ctx.tp_size, replicas=ctx.replicas, nodes=ctx.nodes,
        model=cfg.model.name, bytes_per_token_per_rank=cfg.model.bytes_per_token_per_rank(ctx.tp_size),
        object_bytes=cfg.geometry.object_bytes, chunk_tokens=cfg.geometry.chunk_tokens,
        objects_per_chunk=cfg.geometry.objects_per_chunk,
        mla_mode=cfg.kv.mla_mode if cfg.model.kind == "mla" else None, layout=cfg.kv.layout,
        workload=cfg.workload_kind, workload_info=run.workload.info(), payload_mode=cfg.io.payload,
        tiers=[t.level for t in run.tiers], calibration=list(run.calibration or []),
        prefill_groups=cfg.engine.prefill_groups, stonewall=cfg.run.stonewall,
        qos_metric=cfg.qos.metric, qos_targets_ms=cfg.qos.targets_ms)


def _write(run: Run, data: Collected, phase: Phase) -> int:
    """Rank 0: result.h5 and summary.json, then the console table."""
    run_facts = facts(run)
    summary = summarize(data, run_facts)
    out_dir = run.out_dir
    try:
        if _holds_result(out_dir):   # another run took the name meanwhile: keep both
            out_dir = f"{out_dir}-{run.ctx.run_id}"
            print(f"warning: the run name was taken while this run ran; writing {out_dir}",
                  file=sys.stderr)
        os.makedirs(out_dir, exist_ok=True)
        write_hdf5(os.path.join(out_dir, "result.h5"), data,
                   attributes(run_facts, summary, phase.wall_ns), summary)
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
