"""Command line: ``run`` (the default), ``models``, ``configs``, ``calibrate``, ``export``,
``checkpoint``, ``suite``, ``sweep``, ``autoscale``, ``datasize``.

Flags override the config file, which overrides the packaged defaults. Any mistake is
one line on stderr, ``error: ...``, and exit status 2, printed once (by rank 0 under MPI).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import json
import math
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
    "io_trace_log": "run.io_trace_log",
    "validation_trace": "run.validation_trace",
}


def command_line(argv: list[str]) -> str:
    """The command as the result records it: the arguments after ``python -m mpi_kvbench``."""
    return shlex.join(["python", "-m", "mpi_kvbench", *argv])


def launch_rank() -> int:
    """This process's rank from the launcher's environment, without starting MPI."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


COMMANDS = ("run", "models", "configs", "calibrate", "export", "checkpoint", "replay",
            "export-fio", "suite", "sweep", "autoscale", "datasize")


class Parser(argparse.ArgumentParser):
    """One-line errors; no abbreviated flags (``--dur`` would silently mean ``--duration``
    and break when a flag is added); a mistyped flag gets the closest real one."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:   # one line, not usage + message
        if message.startswith("unrecognized arguments: "):
            flag = message.split(": ", 1)[1].split()[0].split("=")[0]
            command = getattr(self, "_command", None)
            if flag.startswith("--") and command and flag in self.flags(every=True):
                raise ConfigError(f"{flag}: not a flag of the {command} command"
                                  f" (see `mpi_kvbench {command} --help`)")
            flags = self.flags()
            close = [f for f in flags if f.startswith(flag)] if flag.startswith("--") else []
            close = close if len(close) == 1 else difflib.get_close_matches(flag, flags, n=1)
            if close:
                raise ConfigError(f"{flag}: unknown flag; did you mean {close[0]}? (see --help)")
        raise ConfigError(f"{message} (see --help)")

    def parse_known_args(self, args=None, namespace=None):   # noqa: ANN001, ANN201 - argparse's
        self._command = next((a for a in args or () if not a.startswith("-")), None)
        return super().parse_known_args(args, namespace)

    def flags(self, every: bool = False) -> list[str]:
        """Every long flag of this parser and of the command being parsed (``every``, or
        before a command is known: of every command), so a hint offers only a flag that
        the command takes."""
        out = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        for a in self._actions:
            if isinstance(a, argparse._SubParsersAction):
                chosen = None if every else a.choices.get(getattr(self, "_command", None))
                for sub in [chosen] if chosen else a.choices.values():
                    out += sub.flags()
        return sorted(set(out))


def integer(text: str) -> int:
    """An int flag that also takes ``1e5``-style integral numbers."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def number(text: str) -> float:
    """A float flag: NaN and infinity are refused here, where the flag can be named."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number")
    return value


def _defaults() -> dict[str, object]:
    """flag -> its value in the packaged defaults (or the synthetic workload's), for --help."""
    import dataclasses

    from mpi_kvbench.config import default_dict
    from mpi_kvbench.registry import WORKLOADS

    raw = default_dict()
    workload = {f.name: f.default for f in dataclasses.fields(WORKLOADS.load(raw["workload"]["kind"]).Params)}
    out: dict[str, object] = {}
    for flag, key in RUN_FLAGS.items():
        node: object = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None and key.startswith("workload."):
            node = workload.get(key.split(".", 1)[1])
        if node is not None and node != "" and node is not dataclasses.MISSING:
            out[flag] = node
    return out


def _with_defaults(parser: argparse.ArgumentParser) -> None:
    """Appends ``(default X)`` to each run flag's help, from default.yaml."""
    try:
        defaults = _defaults()
    except Exception:   # noqa: BLE001 - help must print even with a broken install
        return
    for action in parser._actions:
        if action.dest in defaults and action.help and "default" not in action.help:
            action.help += f" (default {defaults[action.dest]})"


def build_parser() -> Parser:
    p = Parser(prog="mpi_kvbench", description="Storage under LLM KV-cache offload, on MPI.",
               epilog="Commands: run (the default), models, configs, calibrate;"
                      " `mpi_kvbench COMMAND --help` for each.")
    p.add_argument("--version", action="version", version=f"mpi_kvbench {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=Parser)

    run = sub.add_parser("run", help="run the benchmark (the default command)")
    run.add_argument("--config", help="YAML workload file, or a shipped one by name (see `configs`)")
    run.add_argument("--model", help="model key (see `models`)")
    run.add_argument("--duration", type=number, metavar="SECONDS", help="measured phase length")
    run.add_argument("--max-requests", type=integer, metavar="N", help="requests per TP group")
    run.add_argument("--seed", type=integer, help="trace and placement seed")
    run.add_argument("--results-dir", metavar="DIR", help="where runs land (default results/)")
    run.add_argument("--run-name", metavar="NAME", help="run folder name (default a timestamp)")
    run.add_argument("--cache-dir", metavar="PATH_TEMPLATE",
                     help="storage tier path; {rank} {local_rank} {node} {host} {group} {run_id}")
    run.add_argument("--gpu-mem-gb", type=number, metavar="X", help="HBM tier per rank")
    run.add_argument("--cpu-mem-gb", type=number, metavar="X", help="DRAM tier per rank")
    run.add_argument("--storage-capacity-gb", type=number, metavar="X", help="storage tier per rank")
    run.add_argument("--tensor-parallel", type=integer, metavar="T", help="ranks per TP group")
    run.add_argument("--chunk-tokens", type=integer, metavar="N", help="tokens per KV chunk")
    run.add_argument("--io-depth", type=integer, metavar="N", help="concurrent I/O per rank")
    run.add_argument("--workload", metavar="NAME",
                     help="request source: synthetic, sharegpt, burstgpt, mooncake, azure")
    run.add_argument("--trace", metavar="PATH", help="trace file the workload reads")
    run.add_argument("--trace-speedup", type=number, metavar="X", help="replay X times faster")
    run.add_argument("--replay-cycles", type=integer, metavar="N", help="replay the trace N times")
    run.add_argument("--request-rate", type=number, metavar="PER_S",
                     help="open loop: Poisson arrivals at this rate (requests/s, all groups)")
    run.add_argument("--users", type=integer, metavar="N", help="synthetic closed-loop users")
    run.add_argument("--precondition", type=number, nargs="?", const=0.9, metavar="SHARE",
                     help="fill this share of the storage tier before measuring (default 0.9)")
    run.add_argument("--prefill-groups", type=integer, metavar="K",
                     help="disaggregated serving: K TP groups prefill, the others decode")
    run.add_argument("--io-trace-log", metavar="PATH",
                     help="CSV of every measured operation, per rank ({rank}; .zst compresses)")
    run.add_argument("--trace-only", action="store_true",
                     help="trace mode: every tier kind null, no device I/O (with --io-trace-log)")
    run.add_argument("--validation-trace", metavar="FILE",
                     help="compare the hit ratio with a recorded one (docs/RESULTS.md)")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="any config key; repeatable")
    run.add_argument("--quiet", action="store_true",
                     help="no live output (banner, phases, progress) on rank 0; the summary still prints")
    _with_defaults(run)

    models = sub.add_parser("models", help="list the model catalogue")
    models.add_argument("--tensor-parallel", type=integer, default=1, metavar="T")
    models.add_argument("--config", help="also list the models this YAML file defines")
    models.add_argument("--json", action="store_true", help="print JSON")

    sub.add_parser("configs", help="list the workload files shipped with the package (--config NAME)")

    cal = sub.add_parser("calibrate", help="raw O_DIRECT bandwidth of a path")
    cal.add_argument("--cache-dir", required=True, metavar="PATH")
    cal.add_argument("--config", help="YAML file (object size and io_depth come from it)")
    cal.add_argument("--size-gb", type=number, default=1.0, help="GB to write, then read (default 1.0)")
    cal.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    cal.add_argument("--json", action="store_true", help="print JSON")

    exp = sub.add_parser("export", help="runs to one CSV/XLSX table, with trial statistics")
    exp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (or their result.h5)")
    exp.add_argument("--csv", metavar="FILE", help="one row per run; trials go to FILE_trials.csv")
    exp.add_argument("--xlsx", metavar="FILE", help="sheets 'runs' and 'trials' (needs openpyxl)")
    exp.add_argument("--force", action="store_true",
                     help="export runs of different world size, model or configuration together")
    exp.add_argument("--overwrite", action="store_true", help="replace existing output files")
    ck = sub.add_parser("checkpoint", help="streaming checkpoint write + restore (every rank)")
    ck.add_argument("--config", help="YAML file; its checkpoint: section")
    ck.add_argument("--target", help="file or s3")
    ck.add_argument("--size-gb", type=float, metavar="X", help="checkpoint shard per rank")
    ck.add_argument("--path", metavar="PATH_TEMPLATE", help="file target directory")
    ck.add_argument("--results-dir", metavar="DIR")
    ck.add_argument("--run-name", metavar="NAME")
    ck.add_argument("--set", action="append", default=[], metavar="checkpoint.KEY=VALUE",
                    help="any checkpoint key (checkpoint.s3.bucket=...); repeatable")

    rep = sub.add_parser("replay", help="replay recorded --io-trace-log files (one rank per log)")
    rep.add_argument("logs", nargs="+", metavar="LOG", help="the run's logs, one per rank")
    rep.add_argument("--cache-dir", required=True, metavar="PATH_TEMPLATE",
                     help="storage tier path; {rank} {local_rank} {node} {host} {group} {run_id}")
    rep.add_argument("--timing", choices=("asap", "recorded"), default="asap",
                     help="as fast as possible (default) or at the recorded times")
    rep.add_argument("--io-depth", type=int, metavar="N", help="concurrent I/O per rank (default: recorded)")
    rep.add_argument("--results-dir", metavar="DIR")
    rep.add_argument("--run-name", metavar="NAME")
    rep.add_argument("--io-trace-log", metavar="PATH", help="record the replay's own log")
    rep.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")

    fio = sub.add_parser("export-fio", help="fio iolog files and job file of logs' storage I/O")
    fio.add_argument("logs", nargs="+", metavar="LOG", help="--io-trace-log files, one per rank")
    fio.add_argument("--out", required=True, metavar="DIR", help="where job.fio and the iologs go")
    fio.add_argument("--target", metavar="DIR", help="where fio's data files go (default DIR/data)")
    fio.add_argument("--ioengine", default="libaio", help="fio ioengine (default libaio)")

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
    if getattr(args, "trace_only", False):   # trace mode: the same plans, no device I/O
        out.append({"tiers": {level: {"kind": "null"} for level in ("hbm", "dram", "storage")}})
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


def cmd_configs() -> int:
    """The shipped workload files by name, with the first line of their header comment."""
    from mpi_kvbench.config import shipped_configs

    for name, f in shipped_configs().items():
        first = next((line.lstrip("# ").strip() for line in f.read_text().splitlines()
                      if line.startswith("#") and line.lstrip("# ").strip()), "")
        print(f"{name:22} {first}")
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
    if int(args.size_gb * 1e9) < geo.object_bytes:   # else the tier names its capacity_gb
        raise ConfigError(f"--size-gb {args.size_gb:g}: less than one object ({geo.object_bytes / 1e9:g}"
                          f" GB with {cfg.model.name} and kv.chunk_tokens={cfg.kv.chunk_tokens});"
                          " give more, or a smaller kv.chunk_tokens")
    # the config's storage settings (allow_memory, o_direct, max_free_share), as a run's
    # own calibration takes them; the path is --cache-dir's either way
    spec = next((t for t in cfg.tiers if t.kind == "storage"), None)
    params = spec.params if spec else StorageTier.Params(path=args.cache_dir)
    result = calibrate(params, RankContext(run_id=f"cal{os.getpid()}"), geo.object_bytes, cfg.io.io_depth,
                       int(args.size_gb * 1e9))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['path']} ({result['fs_type']}, O_DIRECT {result['o_direct']}):"
              f" write {result['write_gbps']:.3f} GB/s, read {result['read_gbps']:.3f} GB/s"
              f" with {result['block_bytes'] / 2**20:.2f} MiB blocks, depth {result['io_depth']}")
    return 0


def cmd_checkpoint(args: argparse.Namespace, argv: list[str]) -> int:
    from mpi_kvbench import config as cfgmod
    from mpi_kvbench.checkpoint import settings
    from mpi_kvbench.checkpoint.run import execute

    section = dict((cfgmod.read_yaml(args.config).get("checkpoint") or {}) if args.config else {})
    overs = [cfgmod.parse_set(item) for item in args.set]
    for item, over in zip(args.set, overs, strict=True):
        if set(over) != {"checkpoint"}:
            raise ConfigError(f"--set {item!r}: the checkpoint command takes checkpoint.KEY=VALUE")
    overs += [{"checkpoint": {f: getattr(args, f)}} for f in ("target", "size_gb", "path",
                                                              "results_dir", "run_name")
              if getattr(args, f) is not None]
    for over in overs:   # settings.build checks every key; s3 keys merge one by one
        for key, value in over["checkpoint"].items():
            old = section.get(key)
            section[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) \
                else value
    s = settings.build(section)
    return execute(s, command_line(argv))


def cmd_suite(args: argparse.Namespace, argv: list[str]) -> int:
    from mpi_kvbench.campaign import execute_suite
    from mpi_kvbench.suite import Request

    req = Request(suite_file=args.suite_file, mlperf=args.mlperf, overrides=overrides(args),
                  trials=args.trials, pause_s=args.pause, cv_threshold=args.cv_threshold,
                  name=args.suite_name, configs_dir=args.configs_dir)
    return execute_suite(req, command_line(argv))


def cmd_sweep(args: argparse.Namespace, argv: list[str]) -> int:
    import yaml

    from mpi_kvbench.campaign import execute_suite
    from mpi_kvbench.suite import Request

    values = [yaml.safe_load(v) for v in args.values.split(",") if v.strip()]
    req = Request(overrides=overrides(args), trials=args.trials, pause_s=args.pause,
                  name=args.suite_name, sweep=(args.key, values), config=args.config)
    return execute_suite(req, command_line(argv))


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
    return execute_autoscale(req, args.key, search, command_line(argv))


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
    return execute(cfg, command_line(argv), quiet=args.quiet)


def one_line(err: BaseException) -> str:
    """The message on one line: control characters from the user's input escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(err))


def cmd_export(args: argparse.Namespace) -> int:
    from mpi_kvbench.export import export

    for path in export(args.runs, args.csv, args.xlsx, force=args.force, overwrite=args.overwrite):
        print(path)
    return 0


def _lazy(module: str, name: str):
    """A command's function, imported only when that command runs."""
    import importlib

    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    parser = build_parser()
    try:
        plain = not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version")
        # help and version: once under mpirun, from rank 0
        hush = contextlib.redirect_stdout(io.StringIO()) if launch_rank() else contextlib.nullcontext()
        try:
            with hush:
                args = parser.parse_args(["run", *argv] if plain else argv)   # run is the default
        except SystemExit as done:   # --help, --version
            return done.code if isinstance(done.code, int) else 0
        commands = {
            "models": lambda: cmd_models(args), "configs": cmd_configs,
            "calibrate": lambda: cmd_calibrate(args), "export": lambda: cmd_export(args),
            "checkpoint": lambda: cmd_checkpoint(args, argv),
            "replay": lambda: _lazy("mpi_kvbench.replay", "cmd_replay")(args, argv),
            "export-fio": lambda: _lazy("mpi_kvbench.fio_export", "cmd_export_fio")(args),
            "suite": lambda: cmd_suite(args, argv), "datasize": lambda: cmd_datasize(args),
            "sweep": lambda: cmd_sweep(args, argv), "autoscale": lambda: cmd_autoscale(args, argv),
        }
        if args.command in commands:
            return commands[args.command]()
        return cmd_run(args, argv)
    except ConfigError as err:
        if launch_rank() == 0:
            print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except RunFailed as err:   # every rank agreed on it; rank 0 says it
        if launch_rank() == 0:
            print(f"error: {one_line(err)}", file=sys.stderr)
        return err.status
