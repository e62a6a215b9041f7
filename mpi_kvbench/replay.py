"""``python -m mpi_kvbench replay LOG...``: a run whose work is recorded I/O trace logs.

The configuration is the recorded run's own (stored beside each log), so the model, object
size, tiers and ``io_depth`` are the same; what changes: the workload is ``replay`` (rank r
carries out log r), the storage tier lives at ``--cache-dir``, tiers the recording ran as
``null`` (trace mode) get their real kind back, and nothing is warmed up or preconditioned.
"""

from __future__ import annotations

import argparse
import os
import shlex

import yaml

from mpi_kvbench import config as cfgmod
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.iotrace import meta_path, read_meta
from mpi_kvbench.run import execute


def replay_config(args: argparse.Namespace) -> cfgmod.Config:
    """The recorded run's configuration, made a replay of ``args.logs`` at ``--cache-dir``."""
    for log in args.logs:
        if not os.path.isfile(log):
            raise ConfigError(f"replay {log}: no such file; give the --io-trace-log files of a run")
    meta = read_meta(args.logs[0])
    if not meta.get("config"):
        raise ConfigError(f"{args.logs[0]}: {meta_path(args.logs[0])} (the recorded configuration)"
                          " is missing; keep the .json the run wrote beside each log")
    recorded = yaml.safe_load(meta["config"])
    levels = {lv: sec for lv, sec in (recorded.get("tiers") or {}).items() if isinstance(sec, dict)}
    tiers: dict = {lv: {"kind": lv} for lv, sec in levels.items() if sec.get("kind") == "null"}
    tiers.setdefault("storage", {})["path"] = args.cache_dir
    run = {"duration_s": 0, "max_requests": 0, "warmup_s": 0, "precondition": 0, "calibrate": False,
           "stonewall": False, "run_name": args.run_name or "", "io_trace_log": args.io_trace_log or ""}
    if args.results_dir:
        run["results_dir"] = args.results_dir
    over = {"run": run, "engine": {"prefill_groups": 0}, "tiers": tiers,
            "workload": {"kind": "replay", "timing": args.timing,
                         "logs": {i: os.path.abspath(p) for i, p in enumerate(args.logs)}}}
    if args.io_depth is not None:
        over["io"] = {"io_depth": args.io_depth}
    return cfgmod.load(None, [recorded, over, *[cfgmod.parse_set(i) for i in args.set]])


def cmd_replay(args: argparse.Namespace, argv: list[str]) -> int:
    return execute(replay_config(args), shlex.join(["python", "-m", "mpi_kvbench", *argv]))
