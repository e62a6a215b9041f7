"""Command line: ``run`` (the default), ``models``, ``calibrate``, ``suite``, ``sweep``,
``autoscale``, ``datasize``.

Flags override the config file, which overrides the packaged defaults. Any mistake is
one line on stderr, ``error: ...``, and exit status 2, printed once (by rank 0 under MPI).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings

from mpi_kvbench import __version__
from mpi_kvbench.errors import ConfigError, RunFailed

# flag -> config key; a flag left unset changes nothing
RUN_FLAGS = {
    "model": "model.name",
    "duration": "run.duration_s",
    "max_requests": "run.max_requests",
    "seed": "run.seed",
    "results_dir": "run.results_dir",
    "run_name": "run.run_name",
    "cache_dir": "tiers.storage.path",
    "gpu_mem_gb": "tiers.hbm.capacity_gb",
    "cpu_mem_gb": "tiers.dram.capacity_gb",
    "storage_capacity_gb": "tiers.storage.capacity_gb",
    "tensor_parallel": "kv.tensor_parallel",
    "chunk_tokens": "kv.chunk_tokens",
    "io_depth": "io.io_depth",
    "workload": "workload.kind",          # before the workload's own keys: a new kind resets them
    "trace": "workload.trace",
    "trace_speedup": "workload.speedup",
    "replay_cycles": "workload.replay_cycles",
    "users": "workload.users",
    "request_rate": "workload.request_rate",
    "precondition": "run.precondition",
    "prefill_groups": "engine.prefill_groups",
    "validation_trace": "run.validation_trace",
}


def launch_rank() -> int:
    """This process's rank from the launcher's environment, without starting MPI."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:   # one line, not usage + message
        raise ConfigError(f"{message} (see --help)")


def build_parser() -> Parser:
    p = Parser(prog="mpi_kvbench", description="Storage under LLM KV-cache offload, on MPI.")
    p.add_argument("--version", action="version", version=f"mpi_kvbench {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=Parser)

    run = sub.add_parser("run", help="run the benchmark (the default command)")
    run.add_argument("--config", help="YAML workload file (see configs/)")
    run.add_argument("--model", help="model key (see `models`)")
    run.add_argument("--duration", type=float, metavar="SECONDS", help="measured phase length")
    run.add_argument("--max-requests", type=int, metavar="N", help="requests per TP group")
    run.add_argument("--seed", type=int)
    run.add_argument("--results-dir", metavar="DIR", help="where runs land (default results/)")
    run.add_argument("--run-name", metavar="NAME", help="run folder name (default a timestamp)")
    run.add_argument("--cache-dir", metavar="PATH_TEMPLATE",
                     help="storage tier path; {rank} {local_rank} {node} {host} {group} {run_id}")
    run.add_argument("--gpu-mem-gb", type=float, metavar="X", help="HBM tier per rank")
    run.add_argument("--cpu-mem-gb", type=float, metavar="X", help="DRAM tier per rank")
    run.add_argument("--storage-capacity-gb", type=float, metavar="X", help="storage tier per rank")
    run.add_argument("--tensor-parallel", type=int, metavar="T", help="ranks per TP group")
    run.add_argument("--chunk-tokens", type=int, metavar="N", help="tokens per KV chunk")
    run.add_argument("--io-depth", type=int, metavar="N", help="concurrent I/O per rank")
    run.add_argument("--workload", metavar="NAME",
                     help="request source: synthetic, sharegpt, burstgpt, mooncake, azure")
    run.add_argument("--trace", metavar="PATH", help="trace file the workload reads")
    run.add_argument("--trace-speedup", type=float, metavar="X", help="replay X times faster")
    run.add_argument("--replay-cycles", type=int, metavar="N", help="replay the trace N times")
    run.add_argument("--request-rate", type=float, metavar="PER_S",
                     help="open loop: Poisson arrivals at this rate (requests/s, all groups)")
    run.add_argument("--users", type=int, metavar="N", help="synthetic closed-loop users")
    run.add_argument("--precondition", type=float, nargs="?", const=0.9, metavar="SHARE",
                     help="fill this share of the storage tier before measuring (default 0.9)")
    run.add_argument("--prefill-groups", type=int, metavar="K",
                     help="disaggregated serving: K TP groups prefill, the others decode")
    run.add_argument("--validation-trace", metavar="FILE",
                     help="compare the hit ratio with a recorded one (docs/RESULTS.md)")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="any config key; repeatable")

    models = sub.add_parser("models", help="list the model catalogue")
    models.add_argument("--tensor-parallel", type=int, default=1, metavar="T")
    models.add_argument("--config", help="also list the models this YAML file defines")
    models.add_argument("--json", action="store_true", help="print JSON")

    cal = sub.add_parser("calibrate", help="raw O_DIRECT bandwidth of a path")
    cal.add_argument("--cache-dir", required=True, metavar="PATH")
    cal.add_argument("--config", help="YAML file (object size and io_depth come from it)")
    cal.add_argument("--size-gb", type=float, default=1.0, help="bytes to write, then read")
    cal.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    cal.add_argument("--json", action="store_true", help="print JSON")

    st = sub.add_parser("suite", help="several runs and their trials in one MPI job (suite.json)")
    st.add_argument("suite_file", nargs="?", help="YAML suite: runs with overrides, trials, pauses")
    st.add_argument("--mlperf", choices=("closed", "open"),
                    help="the three MLPerf KV-cache options x 3 trials, under the rules")
    st.add_argument("--trials", type=int, metavar="N", help="trials per run (MLPerf: 3)")
    st.add_argument("--pause", type=float, metavar="SECONDS", help="between runs")
    st.add_argument("--cv-threshold", type=float, metavar="SHARE",
                    help="flag a trial set whose throughput CV is above this (default 0.05)")
    st.add_argument("--suite-name", metavar="NAME", help="folder under --results-dir")
    st.add_argument("--configs-dir", metavar="DIR", help="where mlperf-option{1,2,3}.yaml are")

    sw = sub.add_parser("sweep", help="one run per value of a config key, in one MPI job")
    sw.add_argument("--key", required=True, metavar="SECTION.KEY", help="e.g. workload.users")
    sw.add_argument("--values", required=True, metavar="V1,V2,...", help="comma-separated values")

    au = sub.add_parser("autoscale", help="the largest load that passes (qos) or the throughput knee")
    au.add_argument("--mode", choices=("qos", "capacity"), default="qos")
    au.add_argument("--key", default="workload.users", metavar="SECTION.KEY",
                    help="the load: workload.users (default), workload.request_rate, ...")
    au.add_argument("--start", default="1", metavar="X", help="first load (whole: whole loads)")
    au.add_argument("--limit", default="1024", metavar="X", help="largest load to try")
    au.add_argument("--resolution", type=float, metavar="X",
                    help="stop when the bracket is this narrow (default 1, or start/8 for fractions)")
    au.add_argument("--margin", type=float, default=0.05, metavar="SHARE",
                    help="capacity: growth below this ends the climb; the plateau's tolerance")
    for sp in (sw, au):
        sp.add_argument("--config", help="YAML file every run reads (see configs/)")
        sp.add_argument("--trials", type=int, metavar="N", help="trials per value (sweep)")
        sp.add_argument("--pause", type=float, metavar="SECONDS", help="between runs")
        sp.add_argument("--suite-name", metavar="NAME", help="folder under --results-dir")
    for sp in (st, sw, au):   # every run flag, applied to every run
        for action in run._actions:
            if action.dest not in ("help", "config"):
                sp._add_action(action)

    ds = sub.add_parser("datasize", help="KV bytes per token, request and session; tier sizes")
    ds.add_argument("--model", default=None, help="model key (default: the config's)")
    ds.add_argument("--tensor-parallel", type=int, default=1, metavar="T")
    ds.add_argument("--users", type=int, default=1, metavar="N", help="concurrent user sessions")
    ds.add_argument("--ranks", type=int, metavar="N", help="ranks the users spread over (default TP)")
    ds.add_argument("--context-tokens", type=int, metavar="N",
                    help="tokens of one request's context (default: the workload's mean)")
    ds.add_argument("--turns", type=int, metavar="N", help="turns per session (default: workload's)")
    ds.add_argument("--config", help="YAML file (models:, kv:, workload:)")
    ds.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ds.add_argument("--json", action="store_true", help="print JSON")
    return p


def overrides(args: argparse.Namespace) -> list[dict]:
    from mpi_kvbench.config import parse_set

    out = []
    for flag, key in RUN_FLAGS.items():   # typed by argparse already: no text round trip
        value = getattr(args, flag, None)
        if value is not None:
            *sections, leaf = key.split(".")
            for section in reversed(sections):
                value = {leaf: value}
                leaf = section
            out.append({leaf: value})
    return out + [parse_set(item) for item in args.set]


def cmd_models(args: argparse.Namespace) -> int:
    from mpi_kvbench import config as cfgmod
    from mpi_kvbench.models import CATALOGUE, resolve

    if args.tensor_parallel < 1:
        raise ConfigError(f"--tensor-parallel {args.tensor_parallel}: give a positive integer")
    user = (cfgmod.read_yaml(args.config).get("models") or {}) if args.config else {}
    rows = []
    for name in [*CATALOGUE, *user]:
        m = resolve(name, user)
        try:
            m.check_tp(args.tensor_parallel)
            per_rank = m.bytes_per_token_per_rank(args.tensor_parallel)
        except ConfigError:
            per_rank = None
        rows.append({"model": name, "kind": m.kind, "layers": m.layers, "kv_heads": m.kv_heads,
                     "head_dim": m.head_dim, "dtype": m.dtype, "bytes_per_token": m.bytes_per_token,
                     "tensor_parallel": args.tensor_parallel, "bytes_per_token_per_rank": per_rank})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':24} {'kind':5} {'bytes/token':>12} {f'per rank @TP{args.tensor_parallel}':>16}")
    for r in rows:
        per = "n/a" if r["bytes_per_token_per_rank"] is None else f"{r['bytes_per_token_per_rank']:,}"
        print(f"{r['model']:24} {r['kind']:5} {r['bytes_per_token']:>12,} {per:>16}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from mpi_kvbench import config as cfgmod
    from mpi_kvbench.calibrate import calibrate
    from mpi_kvbench.context import RankContext
    from mpi_kvbench.tiers.storage import StorageTier

    over = [cfgmod.parse_set(i) for i in args.set]
    cfg = cfgmod.load(args.config, over + [cfgmod.parse_set(f"tiers.storage.path={args.cache_dir}")])
    if args.size_gb <= 0:
        raise ConfigError("--size-gb: give a positive size")
    geo = cfg.geometry
    params = StorageTier.Params(path=args.cache_dir)
    result = calibrate(params, RankContext(run_id=f"cal{os.getpid()}"), geo.object_bytes, cfg.io.io_depth,
                       int(args.size_gb * 1e9))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['path']} ({result['fs_type']}, O_DIRECT {result['o_direct']}):"
              f" write {result['write_gbps']:.3f} GB/s, read {result['read_gbps']:.3f} GB/s"
              f" with {result['block_bytes'] / 2**20:.2f} MiB blocks, depth {result['io_depth']}")
    return 0


def cmd_suite(args: argparse.Namespace, argv: list[str]) -> int:
    from mpi_kvbench.campaign import execute_suite
    from mpi_kvbench.suite import Request

    req = Request(suite_file=args.suite_file, mlperf=args.mlperf, overrides=overrides(args),
                  trials=args.trials, pause_s=args.pause, cv_threshold=args.cv_threshold,
                  name=args.suite_name, configs_dir=args.configs_dir)
    return execute_suite(req, shlex.join(["python", "-m", "mpi_kvbench", *argv]))


def cmd_sweep(args: argparse.Namespace, argv: list[str]) -> int:
    import yaml

    from mpi_kvbench.campaign import execute_suite
    from mpi_kvbench.suite import Request

    values = [yaml.safe_load(v) for v in args.values.split(",") if v.strip()]
    req = Request(overrides=overrides(args), trials=args.trials, pause_s=args.pause,
                  name=args.suite_name, sweep=(args.key, values), config=args.config)
    return execute_suite(req, shlex.join(["python", "-m", "mpi_kvbench", *argv]))


def cmd_autoscale(args: argparse.Namespace, argv: list[str]) -> int:
    import yaml

    from mpi_kvbench.autoscale import Search
    from mpi_kvbench.campaign import execute_autoscale
    from mpi_kvbench.suite import Request

    start, limit = yaml.safe_load(args.start), yaml.safe_load(args.limit)
    for flag, v in (("--start", start), ("--limit", limit)):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{flag} {v!r}: give a number")
    integer = isinstance(start, int) and isinstance(limit, int)
    resolution = args.resolution or (1.0 if integer else start / 8)
    search = Search(args.mode, float(start), float(limit), resolution, args.margin, integer)
    req = Request(overrides=overrides(args), pause_s=args.pause, name=args.suite_name,
                  config=args.config)
    return execute_autoscale(req, args.key, search, shlex.join(["python", "-m", "mpi_kvbench", *argv]))


def cmd_datasize(args: argparse.Namespace) -> int:
    from mpi_kvbench import config as cfgmod
    from mpi_kvbench.datasize import datasize, render

    over = [cfgmod.parse_set(i) for i in args.set]
    if args.model:
        over.append({"model": {"name": args.model}})
    over.append({"kv": {"tensor_parallel": args.tensor_parallel}})
    cfg = cfgmod.load(args.config, over)
    sizes = datasize(cfg, args.users, args.context_tokens, args.turns, args.ranks)
    print(json.dumps(sizes, indent=2) if args.json else render(sizes))
    return 0


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    from mpi_kvbench import config as cfgmod
    from mpi_kvbench.run import execute

    cfg = cfgmod.load(args.config, overrides(args))
    return execute(cfg, shlex.join(["python", "-m", "mpi_kvbench", *argv]))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    parser = build_parser()
    try:
        plain = not argv or argv[0] not in ("run", "models", "calibrate", "-h", "--help",
                                            "--version", "suite", "datasize", "sweep",
                                            "autoscale")
        args = parser.parse_args(["run", *argv] if plain else argv)   # run is the default
        if args.command == "models":
            return cmd_models(args)
        if args.command == "calibrate":
            return cmd_calibrate(args)
        if args.command == "suite":
            return cmd_suite(args, argv)
        if args.command == "datasize":
            return cmd_datasize(args)
        if args.command == "sweep":
            return cmd_sweep(args, argv)
        if args.command == "autoscale":
            return cmd_autoscale(args, argv)
        return cmd_run(args, argv)
    except ConfigError as err:
        if launch_rank() == 0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:   # every rank agreed on it; rank 0 says it
        if launch_rank() == 0:
            print(f"error: {err}", file=sys.stderr)
        return err.status
