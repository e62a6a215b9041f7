"""A suite's runs, one after another, in one MPI job: the world is started once and each
run sets up and tears down its own tiers, scratch files and trace distribution
(``run.execute``). Rank 0 rewrites ``suite.json`` after every run, so a suite stopped
half-way keeps what it measured.

A run that fails, or a signal, ends the suite (its status is the suite's): trials after
a failure would not be the trials the suite planned. A signal during a pause between
runs ends the suite at the pause's end, on every rank alike.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from datetime import UTC, datetime

from mpi_kvbench import config as cfgmod
from mpi_kvbench import export, suite
from mpi_kvbench.autoscale import Point, Search
from mpi_kvbench.errors import OK, ConfigError, RunFailed
from mpi_kvbench.interrupt import Interrupts
from mpi_kvbench.interrupt import status as signal_status
from mpi_kvbench.mpi.comm import Comm, world
from mpi_kvbench.results import trials
from mpi_kvbench.run import agree, check_result_path, execute

SUITE_FILE = "suite.json"


def execute_suite(req: suite.Request, command_line: str) -> int:
    """Plans the suite on every rank alike, runs it, and returns the exit status."""
    suite.plan(req, "check")   # a mistake is one line before MPI starts
    comm = world()
    started = datetime.now(UTC)
    stamp = _stamp(comm, started)
    plan = suite.plan(req, stamp)   # the same input on every rank: the same error everywhere
    agree(comm, check_plan(plan, comm.size) if comm.rank == 0 else None)
    path = os.path.join(plan.directory, SUITE_FILE)
    records: list[dict] = []
    status = OK
    say = print if comm.rank == 0 else (lambda *a, **k: None)
    say(f"suite {plan.name} ({plan.mode}): {len(plan.runs)} runs into {plan.directory}", flush=True)
    if comm.rank == 0:
        os.makedirs(plan.directory, exist_ok=True)
    with Interrupts() as signals:
        for i, planned in enumerate(plan.runs):
            if i and plan.pause_s:
                status = pause(comm, signals, plan.pause_s)
                if status:
                    break
            say(f"\nsuite {plan.name}: run {i + 1}/{len(plan.runs)}: {planned.option},"
                f" trial {planned.trial}", flush=True)
            error = None
            try:
                status = execute(planned.cfg, f"{command_line}  # {planned.option} trial {planned.trial}")
            except RunFailed as err:
                status, error = err.status, str(err)
                say(f"error: {err}", file=sys.stderr, flush=True)
            records.append({"option": planned.option, "trial": planned.trial,
                            "run_dir": planned.run_dir, "exit_status": status, "error": error})
            if comm.rank == 0:
                trials.write(path, _document(plan, records, comm, started, command_line))
            if status:
                break
    if comm.rank == 0:
        doc = _document(plan, records, comm, started, command_line)
        trials.write(path, doc)
        print("\n" + trials.render(doc), flush=True)
        plot = None
        if plan.sweep and doc["curve"]:
            c = doc["curve"]
            plot = plot_curve([x["value"] for x in c], [x["storage_throughput_tokens_per_s"] for x in c],
                              [None] * len(c), None, plan.sweep["key"],
                              os.path.join(plan.directory, "sweep.png"))
        sheet = export_sheet(plan.directory, [r["run_dir"] for r in records if r["exit_status"] == 0])
        print(f"\n  suite: {path}" + "".join(f", {p}" for p in (plot, sheet) if p), flush=True)
    comm.barrier()
    return status


def _stamp(comm: Comm, started: datetime) -> str:
    """Rank 0's time and random suffix, on every rank: names a suite or search without one."""
    return comm.bcast(f"{started:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}" if comm.rank == 0 else None)


def export_sheet(directory: str, run_dirs: list[str]) -> str | None:
    """Every run as one row of suite.xlsx (sheets runs and trials; suite.csv without
    openpyxl), through ``export``; a warning, not a failure, when it cannot be written."""
    if not run_dirs:
        return None
    for kind in ("xlsx", "csv"):
        target = os.path.join(directory, f"suite.{kind}")
        try:
            export.export(run_dirs, **{f"{kind}_path": target}, force=True)
            return target
        except ConfigError as err:
            if kind == "csv" or "openpyxl" not in str(err):
                print(f"warning: suite.{kind}: {err}", file=sys.stderr)
                return None
    return None


def _document(plan: suite.Plan, records: list[dict], comm: Comm, started: datetime,
              command_line: str) -> dict:
    return trials.build(plan.info(), records, comm.size, started.isoformat(),
                        datetime.now(UTC).isoformat(), command_line)


def check_plan(plan: suite.Plan, world_size: int) -> ConfigError | None:
    """What would fail later, found before the first run: a TP that does not divide the
    world, a suite file or a run folder already there (never overwritten)."""
    if os.path.exists(os.path.join(plan.directory, SUITE_FILE)):
        return ConfigError(f"suite: {plan.directory} already holds a {SUITE_FILE}; give another"
                           " --suite-name")
    for planned in plan.runs:
        tp = planned.cfg.kv.tensor_parallel
        if world_size % tp:
            return ConfigError(f"kv.tensor_parallel={tp} in {planned.option} does not divide the"
                               f" {world_size} ranks; start a multiple of {tp} ranks")
        err = check_result_path(planned.run_dir)
        if err is not None:
            return err
    return None


def pause(comm: Comm, signals: Interrupts, seconds: float) -> int:
    """Waits ``seconds`` (less on a signal), then every rank learns of any signal: its
    exit status, or 0 to go on."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not signals.received:
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))
    signum = comm.allreduce(signals.received, "max")
    return signal_status(signum) if signum else OK


AUTOSCALE_FILE = "autoscale.json"


def execute_autoscale(req: suite.Request, key: str, search: Search, command_line: str) -> int:
    """Measures the loads ``search`` asks for, one run each in this MPI job, with ``key``
    set to the load; rank 0 decides the next load and tells the others."""
    base = cfgmod.load(req.config, req.overrides)   # a mistake is one line before MPI starts
    cfgmod.load(req.config, [*req.overrides, suite.nested({key: search.start}, key)])
    comm = world()
    started = datetime.now(UTC)
    stamp = _stamp(comm, started)
    name = req.name or f"autoscale-{search.mode}-{stamp}"
    directory = os.path.join(base.run.results_dir, name)
    path = os.path.join(directory, AUTOSCALE_FILE)
    agree(comm, ConfigError(f"autoscale: {directory} already holds an {AUTOSCALE_FILE}; give another"
                            " --suite-name") if comm.rank == 0 and os.path.exists(path) else None)
    say = print if comm.rank == 0 else (lambda *a, **k: None)
    status, step = OK, 0
    with Interrupts() as signals:
        while (load := comm.bcast(search.next_load() if comm.rank == 0 else None)) is not None:
            step += 1
            if step > 1 and req.pause_s:
                status = pause(comm, signals, req.pause_s)
                if status:
                    break
            label = f"{load:g}"
            run_name = f"step{step:02d}-{key.rsplit('.', 1)[-1]}-{label}"
            cfg = cfgmod.load(req.config, [*req.overrides, suite.nested({key: int(load) if search.integer
                                                                   else load}, key),
                                     {"run": {"results_dir": directory, "run_name": run_name}}])
            say(f"\nautoscale ({search.mode}): step {step}, {key} = {label}", flush=True)
            try:
                status = execute(cfg, f"{command_line}  # {key}={label}")
            except RunFailed as err:
                status = err.status
                say(f"error: {err}", file=sys.stderr, flush=True)
            if status:
                break
            if comm.rank == 0:
                search.record(point(load, os.path.join(directory, run_name)))
                trials.write(path, autoscale_document(search, key, comm.size, started, command_line))
    if comm.rank == 0:
        doc = autoscale_document(search, key, comm.size, started, command_line)
        os.makedirs(directory, exist_ok=True)
        trials.write(path, doc)
        found, (lo, hi) = doc["found"], doc["bracket"]
        say(f"\nautoscale ({search.mode}): {key} = {found} (bracket [{lo}, {hi}]; {search.why})")
        c = doc["curve"]
        plot = plot_curve([x["load"] for x in c], [x["throughput"] for x in c],
                          [x["passes"] for x in c], found, key, os.path.join(directory, "autoscale.png"))
        say(f"  result: {path}" + (f", {plot}" if plot else ""), flush=True)
    comm.barrier()
    return status


def point(load: float, run_dir: str) -> Point:
    """One measured load, from its run's summary.json."""
    summary = trials.read_summary(run_dir) or {}
    per_class = {cls: {k: c.get("e2e_ms", {}).get(k) for k in ("p95", "p99")}
                 for cls, c in summary.get("qos", {}).items()}
    figures = {**trials.figures(summary), "per_class_e2e_ms": per_class, "run_dir": run_dir}
    return Point(load, summary.get("storage_health", {}).get("verdict", "NO DATA"),
                 figures["storage_throughput_tokens_per_s"] or 0.0, figures)


def autoscale_document(search: Search, key: str, world_size: int, started: datetime,
                       command_line: str) -> dict:
    return {"key": key, **search.result(), "world_size": world_size, "command_line": command_line,
            "started": started.isoformat(), "finished": datetime.now(UTC).isoformat()}


def plot_curve(loads: list, tokens: list, passes: list, found: float | None, key: str,
               out: str) -> str | None:
    """load -> storage tokens/s, passing points marked (None: not judged); None without
    matplotlib or without a numeric load."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not all(isinstance(x, int | float) for x in loads):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(loads, [t or 0.0 for t in tokens], "-", color="grey")
    for ok, marker, label in ((True, "o", "passes"), (False, "x", "does not pass"),
                              (None, ".", None)):
        pts = [(x, t or 0.0) for x, t, p in zip(loads, tokens, passes, strict=True) if p is ok]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker, linestyle="", label=label)
    if found is not None:
        ax.axvline(found, linestyle="--", label=f"found {found:g}")
    ax.set_xlabel(key)
    ax.set_ylabel("storage tokens/s")
    if any(p is not None for p in passes) or found is not None:
        ax.legend()
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out
