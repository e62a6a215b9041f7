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

from mpi_kvbench import suite
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
    stamp = comm.bcast(f"{started:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}" if comm.rank == 0 else None)
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
        print(f"\n  suite: {path}", flush=True)
    comm.barrier()
    return status


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
