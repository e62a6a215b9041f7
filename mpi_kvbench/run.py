"""The pipeline of one run, one call per stage: config -> topology -> tiers -> trace ->
phases -> reductions -> result. Every rank runs it; rank 0 also writes the result.

Failure: a rank that fails during set-up makes every rank raise the same error (they
agree by allgather before going on). A rank that fails during the measured phase, a
signal (SIGINT, SIGTERM, SIGHUP) on any rank, or the watchdog tells the others to stop
(they check between requests and while waiting), and every rank still takes part in
the reductions, so rank 0 keeps a partial result marked ``complete: false``. A rank that
must leave anywhere else ends the whole job (MPI Abort) rather than leave the others
waiting. The exit status names the cause, the same on every rank (``errors``).
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mpi_kvbench import __version__
from mpi_kvbench.calibrate import calibrate
from mpi_kvbench.config import Config
from mpi_kvbench.context import RankContext
from mpi_kvbench.devstats import DeviceWindow
from mpi_kvbench.distribute import replica_requests
from mpi_kvbench.engine import Engine, EngineSettings, StopReason, disagg
from mpi_kvbench.engine.fill import Filled, fill_device
from mpi_kvbench.environment import describe
from mpi_kvbench.errors import CONFIG, FAILED, OK, ConfigError, RunFailed
from mpi_kvbench.footprint import Footprint, process_age_s
from mpi_kvbench.interrupt import Interrupts
from mpi_kvbench.interrupt import name as signal_name
from mpi_kvbench.interrupt import status as signal_status
from mpi_kvbench.iotrace import IoTraceLog, rank_path
from mpi_kvbench.mpi.comm import Comm, check_launch, topology, world
from mpi_kvbench.mpi.reduce import collect, group_latency
from mpi_kvbench.progress import Console, Progress
from mpi_kvbench.registry import POLICIES, WORKLOADS
from mpi_kvbench.results import validation
from mpi_kvbench.results.collected import Collected
from mpi_kvbench.results.hdf5 import attributes, write_hdf5, write_summary
from mpi_kvbench.results.summary import VERIFY_FAILED, RunFacts, render, summarize, verify_failure
from mpi_kvbench.tiers import open_tiers
from mpi_kvbench.tiers.base import Tier
from mpi_kvbench.workloads.base import Request


def engine_settings(cfg: Config) -> EngineSettings:
    e, io = cfg.engine, cfg.io
    return EngineSettings(
        geometry=cfg.geometry, decode_mode=e.decode_mode, decode_batch=e.decode_batch,
        promotion=e.promotion, prefill_tokens_per_s=e.prefill_tokens_per_s,
        time_per_output_token_ms=e.time_per_output_token_ms, high_watermark=e.high_watermark,
        low_watermark=e.low_watermark, io_depth=io.io_depth, payload=io.payload,
        payload_spare_bytes=io.payload_spare_mb << 20, verify=io.verify,
        max_batch=e.max_batch, scheduling=e.scheduling,
        watchdog_s=cfg.run.watchdog_s)


def policy_factory(cfg: Config):
    """Makes one eviction policy (per tier) with the configured parameters."""
    return functools.partial(POLICIES.load(cfg.engine.policy), cfg.policy_params)


def agree(comm: Comm, exc: BaseException | None, signals: Interrupts | None = None) -> None:
    """Raises the same RunFailed on every rank when any rank failed or got a signal."""
    mine = None
    if exc is not None:
        mine = (f"rank {comm.rank}: {exc}", CONFIG if isinstance(exc, ConfigError) else FAILED)
    elif signals is not None and signals.received:
        mine = (f"rank {comm.rank}: stopped by {signal_name(signals.received)} during set-up",
                signal_status(signals.received))
    failures = [f for f in comm.allgather(mine) if f]
    if failures:
        message, status = min(failures, key=lambda f: f[1])   # a mistake outranks a signal
        if comm.size == 1:
            message = message.split(": ", 1)[1]
        raise RunFailed(message, status)


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
    console: Console = field(default_factory=lambda: Console(False))   # rank 0's live output
    signals: Interrupts = field(default_factory=Interrupts)
    devices: DeviceWindow | None = None   # the first rank of a node: its storage disks' counters
    trace: IoTraceLog | None = None     # the I/O trace log (--io-trace-log)
    filled: Filled | None = None          # this rank's device fill (run.precondition_device_fills)
    footprint: Footprint = field(default_factory=Footprint)   # set-up times, memory

    @property
    def decode(self) -> bool:
        k = self.cfg.engine.prefill_groups
        return bool(k) and not disagg.is_prefill(self.ctx, k)


@dataclass
class Phase:
    """How the measured phase went on this rank."""

    elapsed_ns: int = 0
    wall_ns: tuple[int, int] = (0, 0)     # Unix time of its start and end
    error: str | None = None              # why it ended early on this rank
    interrupted: bool = False             # ... a signal, not a failure


def execute(cfg: Config, command_line: str, quiet: bool = False) -> int:
    """Runs the benchmark on every rank; returns the process exit status."""
    footprint = Footprint(setup_s={"imports": process_age_s()})
    footprint.mark("imports")
    comm = world()
    check_launch(comm.size, dict(os.environ))
    with Interrupts() as signals:
        run = _start(cfg, comm, command_line)
        run.console = Console(comm.rank == 0 and not quiet)
        run.footprint = footprint
        footprint.lap("start")
        run.signals = signals
        signals.leave = functools.partial(_forget, run)
        comm.watch(lambda: signals.received and f"{signal_name(signals.received)} on rank {comm.rank}")
        try:
            _set_up(run)
            phase = _measure(run)
            data = _reduce(run, phase)
            _tear_down(run)
            status = _report(run, data, phase)
        except RunFailed:
            _close(run)
            raise
        except BaseException as err:   # noqa: BLE001 - leaving alone: the others must not wait
            _leave_alone(run, err)
            return FAILED
    if run.engine is not None and run.engine.stalled:   # a thread is stuck in the device
        comm.exit_now(status)
    return status


def _leave_alone(run: Run, err: BaseException) -> None:
    """This rank cannot go on with the others: one line, its scratch removed, and every
    rank ended (returns only in a world of one rank)."""
    print(f"error: rank {run.comm.rank}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    _forget(run)
    run.comm.abort(FAILED)


def _forget(run: Run) -> None:
    """Removes what this rank still has named on disk; for the ways out that skip tear-down."""
    for tier in run.tiers:
        try:
            tier.unlink()
            tier.cleanup()
        except Exception:   # noqa: BLE001, S110 - leaving anyway; remove what can be removed
            pass


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
    agree(comm, check_result_path(run.out_dir) if comm.rank == 0 else None)
    return run


def check_result_path(out_dir: str) -> ConfigError | None:
    """Whether the result can be written at ``out_dir``, checked before the run rather
    than found out after it (the directory itself is made only to write)."""
    if _holds_result(out_dir):
        return ConfigError(f"run.run_name: {out_dir} already holds a result; choose another"
                           " --run-name")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        return ConfigError(f"run.run_name: {out_dir} is a file, not a folder; choose another"
                           " --run-name")
    if len(os.path.abspath(out_dir).encode()) > 3900:
        return ConfigError("run.results_dir: the result path is too long for the file system;"
                           " give a shorter --results-dir")
    probe = os.path.abspath(out_dir)
    while not os.path.isdir(probe):   # the deepest folder that exists must take new entries
        if os.path.lexists(probe):
            return ConfigError(f"run.results_dir: {probe} is a file, not a folder; give another"
                               " --results-dir")
        probe = os.path.dirname(probe)
    if not os.access(probe, os.W_OK | os.X_OK):
        return ConfigError(f"run.results_dir: {probe} is not writable; give a writable"
                           " --results-dir")
    return None


def _set_up(run: Run) -> None:
    """Calibration, tiers, engine and this rank's requests; every rank agrees on failure."""
    cfg, comm, ctx = run.cfg, run.comm, run.ctx
    one_writer = cfg.model.kind == "mla" and cfg.kv.mla_mode == "one_writer" and ctx.tp_size > 1
    object_bytes = cfg.geometry.object_bytes
    say = run.console.line
    say(f"set-up: {comm.size} ranks, opening tiers, reading the workload")
    fp = run.footprint
    exc = None
    try:
        run.workload = WORKLOADS.load(cfg.workload_kind)(cfg.workload, cfg.run.seed)
        if comm.rank == 0:   # reads a trace's first pass: a bad one fails before any tier opens
            if getattr(cfg.workload, "trace", ""):
                say(f"trace: reading {cfg.workload.trace}")
                run.workload.on_progress = run.console.bar("trace")
            check_window(run.workload.info(), cfg)
        fp.lap("workload")
        storage = [t for t in cfg.tiers if t.kind == "storage"]
        if cfg.run.calibrate and storage:
            say(f"calibration: {cfg.run.calibrate_gb:g} GB per rank, written then read")
            comm.barrier()   # every rank calibrates at once, as they will run
            run.calibration = calibrate(
                storage[0].params, ctx, object_bytes, cfg.io.io_depth,
                min(storage[0].capacity_bytes, int(cfg.run.calibrate_gb * 1e9)))
            fp.lap("calibration")
        run.tiers = open_tiers(cfg.tiers, ctx, object_bytes, one_writer=one_writer,
                               group_bcast=run.group.bcast)
        fp.lap("tiers")
        fp.mark("tiers")
    except Exception as err:   # noqa: BLE001 - every rank must hear of it
        exc = err
    agree(comm, exc, run.signals)
    fp.lap("sync")
    for tier in run.tiers:   # a TP group's ranks must plan alike: the smallest capacity rules
        tier.limit_capacity(run.group.allreduce(tier.capacity_bytes, "min"))
    _say_capped(run)
    run.devices = _device_window(run)
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
        fp.lap("engine")
        fp.mark("engine")
        run.requests = replica_requests(run.workload, ctx, comm, k or None, cfg.kv.chunk_tokens)
        fp.lap("trace_distribution")
        if cfg.workload_kind == "replay":   # rank r carries out recorded log r
            run.engine.load_log(run.workload.load(comm.rank, comm.size))
    except Exception as err:   # noqa: BLE001
        exc = err
    agree(comm, exc, run.signals)
    for tier in run.tiers:   # every rank has opened what it reads of the others' files
        tier.unlink()
    comm.barrier()
    for tier in run.tiers:
        tier.cleanup()
    run.calibration = comm.gather(run.calibration)
    fp.lap("sync")
    _banner(run)


def _banner(run: Run) -> None:
    """Rank 0's live summary of what will run: ranks, nodes, model, tiers, paths, file systems."""
    if not run.console.enabled:
        return
    cfg, ctx = run.cfg, run.ctx
    say = run.console.line
    say(f"mpi_kvbench {__version__}: {ctx.world_size} ranks on {ctx.nodes} node(s), TP"
        f" {ctx.tp_size} x {ctx.replicas}, model {cfg.model.name},"
        f" {cfg.geometry.object_bytes / 1e6:.2f} MB objects, workload {cfg.workload_kind}")
    for tier in run.tiers:
        info = tier.info()
        where = f" at {info['path']}" if info.get("path") else ""
        fs = f" ({info['fs_type']})" if info.get("fs_type") else ""
        say(f"tier {tier.level}: {tier.name}, {tier.capacity_bytes / 1e9:.3f} GB per rank,"
            f" {tier.slots} slots{where}{fs}")
    skips = run.workload.info().get("skip_reasons")   # the trace's own report, most first
    if skips:
        say("trace rows skipped: " + ", ".join(
            f"{n} x {why}" for why, n in sorted(skips.items(), key=lambda kv: -kv[1])))
    stop = [f"{cfg.run.duration_s:g} s" if cfg.run.duration_s else "",
            f"{cfg.run.max_requests} requests per TP group" if cfg.run.max_requests else ""]
    say(f"results: {os.path.abspath(run.out_dir)}; stops after "
        + (" or ".join(x for x in stop if x) or "the trace ends"))


MAX_SPAN_S = 86_400   # a replay longer than a day at --duration 0 is a mistake, not a plan


def check_window(info: dict, cfg: Config) -> None:
    """Refuses a trace that would run for days when the run has no other limit."""
    span = info.get("span_s")
    if span is None or cfg.run.duration_s or cfg.run.max_requests:
        return
    speedup = info.get("speedup") or 1.0
    wall = span * info.get("replay_cycles", 1) / speedup
    if info.get("request_rate", 0) <= 0 and wall > MAX_SPAN_S:
        raise ConfigError(f"workload.trace: replaying it takes {wall / 86400:.1f} days at"
                          f" speedup {speedup:g} and run.duration_s=0 waits for the end; give"
                          " --trace-speedup, --duration or --max-requests")


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
        if run.cfg.run.precondition_device_fills > 0:
            _fill_device(run)
        if run.cfg.run.precondition > 0:
            run.console.line(f"preconditioning: filling {run.cfg.run.precondition:.0%} of the"
                             " storage tier (not measured)")
            run.engine.precondition(run.cfg.run.precondition, stop=run.comm.stop_requested,
                                    progress=run.console.bar("preconditioning (rank 0, objects)"))
            run.footprint.lap("precondition")
        if run.cfg.workload_kind == "replay":
            run.engine.prime()
        _warm_up(run)
        start = time.perf_counter_ns()
        phase = _measured_phase(run)
    except BaseException as err:   # noqa: BLE001 - the others must stop and the result be kept
        phase.error = f"rank {run.comm.rank}: {type(err).__name__}: {err}"
        run.comm.notify_stop(phase.error)
        phase.elapsed_ns = phase.elapsed_ns or time.perf_counter_ns() - start
        phase.wall_ns = (phase.wall_ns[0] or time.time_ns(), time.time_ns())
    if run.signals.received and phase.error is None:
        phase.error = f"rank {run.comm.rank}: stopped by {signal_name(run.signals.received)}"
        phase.interrupted = True
    return phase


def _fill_device(run: Run) -> None:
    """Every rank at once writes its storage tier's space ``precondition_device_fills``
    times over, sequentially (``engine.fill``); rank 0 shows a bar."""
    storage = [t for t in run.tiers if t.level == "storage"]
    if not storage:
        return
    tier, fills = storage[0], run.cfg.run.precondition_device_fills
    run.comm.barrier()
    run.console.line(f"device fill: writing {fills:g} x {tier.slots * tier.object_bytes / 1e9:.3f} GB"
                     f" per rank sequentially, {run.comm.size} ranks (not measured)")
    run.filled = fill_device(tier, fills, run.cfg.io.io_depth, stop=run.comm.stop_requested,
                             progress=run.console.bar("device fill (rank 0, blocks)"))


def _warm_up(run: Run) -> None:
    """Serves requests, unmeasured, for ``run.warmup_s`` seconds (fills the cache)."""
    if run.cfg.run.warmup_s <= 0:
        return
    run.console.line(f"warm-up: {run.cfg.run.warmup_s:g} s, not measured")
    run.comm.barrier()
    t0 = time.perf_counter_ns()
    run.engine.start_phase(t0)
    run.engine.replay(run.requests, t0 + int(run.cfg.run.warmup_s * 1e9),
                      stop=run.comm.stop_requested)
    run.footprint.lap("warmup")


def _measured_phase(run: Run) -> Phase:
    """Every rank starts at one barrier and serves until its share, the deadline or a stop."""
    cfg, comm, engine = run.cfg, run.comm, run.engine
    comm.quiet_barrier()
    if run.devices is not None:
        run.devices.start()
    if run.trace is not None:
        run.trace.start()
    run.footprint.lap("sync")
    start, wall_start = time.perf_counter_ns(), time.time_ns()
    engine.start_phase(start)
    deadline = start + int(cfg.run.duration_s * 1e9) if cfg.run.duration_s else None
    run.console.line("measured phase: started" + (f", {cfg.run.duration_s:g} s"
                                                   if cfg.run.duration_s else ""))
    progress = Progress(run.console, start, cfg.run.duration_s)
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
    run.console.line(f"measured phase: done on rank 0 after {elapsed / 1e9:.1f} s; collecting results")
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
    if run.devices is not None:   # every rank's I/O of the window is done
        run.devices.stop()
    group_latency(run.group, engine.recorder.log, engine.metrics)
    for name, value in run.footprint.counters().items():
        engine.metrics.add(name, value)
    env = describe(run.ctx, comm.library, [t.info() for t in run.tiers])
    env["device_io"] = run.devices.result() if run.devices is not None else None
    data = collect(comm, engine.metrics, phase.elapsed_ns, env, phase.error,
                   run.cfg.run.per_rank_detail)
    phase.wall_ns = (comm.allreduce(phase.wall_ns[0], "min"), comm.allreduce(phase.wall_ns[1], "max"))
    run.filled = comm.gather(run.filled)   # per rank, on rank 0
    return data


def _tear_down(run: Run) -> None:
    """Closes everything, then, once every rank has, removes what ranks made for each other."""
    _close(run)
    run.comm.drain()
    for tier in run.tiers:
        tier.cleanup()


def _close(run: Run) -> None:
    """Idempotent: also the clean-up after a failed set-up. One part failing to close
    does not keep the others open, nor the result from being written."""
    parts = [run.engine] if run.engine is not None else []
    parts += [run.trace] if run.trace is not None else []
    for part in (*parts, *run.sources, *run.tiers):
        try:
            part.close()
        except Exception as err:   # noqa: BLE001 - a warning: the measurement is done
            print(f"warning: rank {run.comm.rank}: closing {getattr(part, 'level', 'the engine')}:"
                  f" {type(err).__name__}: {err}", file=sys.stderr)


def _report(run: Run, data: Collected | None, phase: Phase) -> int:
    """Rank 0 writes the result; every rank exits with the status of the run's cause: a
    rank's failure (1), else the signal that stopped it (128 + N), else 0."""
    comm = run.comm
    failed = comm.allreduce(int(phase.error is not None and not phase.interrupted), "max")
    signum = comm.allreduce(run.signals.received, "max")
    status = FAILED if failed else signal_status(signum) if signum else OK
    if comm.rank != 0:
        return comm.bcast(None)
    try:
        wrote = _write(run, data, phase)   # always: a failed run keeps its partial result
        status = status or wrote
    except BaseException as err:   # noqa: BLE001 - the others wait for the status below
        print(f"error: rank 0: {type(err).__name__}: {err}", file=sys.stderr)
        status = status or FAILED
    comm.bcast(status)
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
        qos_metric=cfg.qos.metric, qos_targets_ms=cfg.qos.targets_ms, verify=cfg.io.verify,
        device_fill=device_fill(cfg.run.precondition_device_fills, cfg.geometry.object_bytes,
                                run.filled))


def device_fill(fills: float, block_bytes: int, per_rank: list[Filled | None] | None) -> dict | None:
    """The device fill over all ranks: their bytes over the slowest rank's time (they
    started at one barrier); None when none was asked."""
    done = [f for f in per_rank or [] if f is not None]
    if not fills or not done:
        return None
    total, slowest = sum(f.bytes for f in done), max(f.elapsed_ns for f in done)
    return {"fills": fills, "bytes": total, "blocks": sum(f.blocks for f in done),
            "block_bytes": block_bytes, "seconds": round(slowest / 1e9, 4),
            "gbps": round(total / slowest, 4) if slowest else None,
            "bytes_per_rank": [f.bytes for f in done]}


def _write(run: Run, data: Collected, phase: Phase) -> int:
    """Rank 0: the console table first (the numbers survive whatever happens next), then
    result.h5 and summary.json, in a fallback folder when the results folder fails. The
    status this adds: FAILED when the result is not where it was asked, VERIFY_FAILED when
    the storage returned wrong data."""
    run_facts = facts(run)
    summary = summarize(data, run_facts)
    checked = _validate(run.cfg, summary)
    print(render(summary) + (f"\n{validation.render(checked)}" if checked else ""), flush=True)
    attrs = attributes(run_facts, summary, phase.wall_ns)
    out_dir = run.out_dir
    if _holds_result(out_dir):   # another run took the name meanwhile: keep both
        out_dir = f"{out_dir}-{run.ctx.run_id}"
        print(f"warning: the run name was taken while this run ran; writing {out_dir}",
              file=sys.stderr)
    written = True
    for where in (out_dir, *fallback_dirs(run.ctx.run_id)):
        try:
            os.makedirs(where, exist_ok=True)
            write_hdf5(os.path.join(where, "result.h5"), data, attrs, summary)
            write_summary(os.path.join(where, "summary.json"), summary)
        except (OSError, ValueError, TypeError) as err:
            print(f"error: cannot write the result in {where}: {err}", file=sys.stderr)
            written = False
            continue
        if where != out_dir:
            print(f"error: the result went to {where} instead", file=sys.stderr)
        print(f"\n  result: {where}/result.h5, {where}/summary.json")
        break
    else:
        print("error: the result could not be written anywhere; the table above is all"
              " that is left", file=sys.stderr)
    for error in data.errors[:1]:
        print(f"error: {error}", file=sys.stderr)
    if summary["verify"]["verdict"] == "fail":
        print(f"error: verify: {verify_failure(summary['verify'])}", file=sys.stderr)
        return VERIFY_FAILED
    return OK if written else FAILED


def _validate(cfg: Config, summary: dict) -> dict | None:
    """--validation-trace: the run's hit ratios against the recorded ones, in the summary."""
    if not cfg.run.validation_trace:
        return None
    try:
        checked = validation.validate(summary, validation.read(cfg.run.validation_trace),
                                      cfg.run.validation_tolerance)
    except ConfigError as err:   # the file changed since the run began: say so, keep the result
        checked = {"verdict": "ERROR", "error": str(err), "tolerance": cfg.run.validation_tolerance,
                   "checks": []}
    summary["validation"] = checked
    return checked


def fallback_dirs(run_id: str) -> list[str]:
    """Where a result goes when its folder cannot take it: the home folder, then the
    temporary folder (a different file system, most often)."""
    leaf = f"mpi_kvbench-{run_id}"
    return [os.path.join(os.path.expanduser("~"), leaf), os.path.join(tempfile.gettempdir(), leaf)]


def _say_capped(run: Run) -> None:
    """One line on rank 0 per tier that got less than asked beyond rounding down to whole
    objects (free space, the TP group's smallest), on the rank that got least."""
    obj = run.cfg.geometry.object_bytes
    for tier in run.tiers:
        got = run.comm.allgather((tier.slots, tier.capped))
        slots, why = min(got, key=lambda g: g[0])
        if run.comm.rank == 0 and (slots + 1) * obj <= tier.requested_bytes:
            print(f"warning: tiers.{tier.level}: {tier.requested_bytes / 1e9:g} GB per rank asked,"
                  f" {slots * obj / 1e9:.3g} GB ({slots} objects) used"
                  f" ({why or 'the smallest of its TP group'})", file=sys.stderr)


def _device_window(run: Run) -> DeviceWindow | None:
    """The first rank of each node watches the disks behind its node's storage tiers."""
    mine = [(i["devices"], i["no_device"]) for i in (t.info() for t in run.tiers) if "devices" in i]
    seen = [s for node, s in run.comm.allgather((run.ctx.node, mine)) if node == run.ctx.node]
    found = [entry for s in seen for entry in s]
    if run.ctx.local_rank != 0 or not found:
        return None
    devices = sorted({d for devs, _ in found for d in devs})
    return DeviceWindow(devices, None if devices else found[0][1])
