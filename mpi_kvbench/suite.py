"""A suite: several runs and their trials, planned before anything runs, and the MLPerf
rules that a CLOSED submission must keep.

Planning resolves every run's configuration up front (defaults <- the run's config file
<- the suite's overrides <- the run's overrides <- the command line), so a mistake in
the fifth run is found before the first one starts. No MPI here: ``campaign`` runs the
plan in one MPI job and ``results.trials`` aggregates what it measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from mpi_kvbench import config as cfgmod
from mpi_kvbench.config import Config
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.params import build_dataclass, choice, non_negative, plain_name, positive

MLPERF_MODES = ("closed", "open")
MLPERF_OPTIONS = {f"option{k}": f"mlperf-option{k}.yaml" for k in (1, 2, 3)}
MLPERF_SEED = 42
MLPERF_TRIALS = 3
CV_THRESHOLD = 0.05       # a trial set whose headline varies more is flagged unstable
MLPERF_PAUSE_S = 10.0     # between runs, so one run's write-back does not land in the next
# What CLOSED leaves to the submitter: where the storage and the results are, and how the
# device is prepared and watched. Everything else the option files and the rules fix.
CLOSED_FREE = ("run.results_dir", "run.run_name", "run.calibrate", "run.calibrate_gb",
               "run.precondition", "run.precondition_device_fills", "run.watchdog_s",
               "tiers.storage.path")


@dataclass(frozen=True)
class SuiteRunSection:
    """One entry of a suite file's ``runs:`` list."""

    name: str
    config: str = ""          # YAML file, relative to the suite file
    set: dict = field(default_factory=dict)   # overrides, nested or dotted keys
    trials: int = 0           # 0: the suite's

    def check(self) -> None:
        non_negative(self, "runs[]", ("trials",))
        plain_name("runs[].name", self.name)


@dataclass(frozen=True)
class SuiteSection:
    """A suite file's top level, besides its ``runs:`` list."""

    name: str = ""            # the suite's folder under run.results_dir; "" = the file's stem
    trials: int = 1
    pause_s: float = 0.0
    cv_threshold: float = CV_THRESHOLD
    config: str = ""          # a base YAML file for runs that name none
    set: dict = field(default_factory=dict)   # overrides for every run
    order: str = "grouped"    # grouped: a run's trials together; interleaved: trial 1 of each, ...

    def check(self) -> None:
        positive(self, "suite", ("trials", "cv_threshold"))
        non_negative(self, "suite", ("pause_s",))
        choice(self, "suite", "order", ("grouped", "interleaved"))


@dataclass(frozen=True)
class Request:
    """What the command line asked for: a suite file or an MLPerf mode, and what to change."""

    suite_file: str | None = None
    mlperf: str | None = None
    overrides: list[dict] = field(default_factory=list)   # the command line's, every run
    trials: int | None = None
    pause_s: float | None = None
    cv_threshold: float | None = None
    name: str | None = None
    configs_dir: str | None = None
    sweep: tuple[str, list] | None = None   # (config key, values): one option per value
    config: str | None = None                # sweep and autoscale: the YAML file every run reads


@dataclass(frozen=True)
class PlannedRun:
    option: str
    trial: int                # 1-based
    cfg: Config

    @property
    def run_dir(self) -> str:
        return os.path.join(self.cfg.run.results_dir, self.cfg.run.run_name)


@dataclass(frozen=True)
class Plan:
    name: str
    mode: str                 # "closed", "open" (MLPerf), "suite" (a suite file) or "sweep"
    directory: str            # where the runs and suite.json go
    runs: list[PlannedRun]
    pause_s: float
    cv_threshold: float
    options: dict[str, dict]  # per option: its config file, overrides and trials
    deviations: list[dict]    # from the MLPerf reference (closed/open), else []
    sweep: dict | None = None  # {"key", "values"} of a sweep

    def info(self) -> dict[str, Any]:
        """The plan as suite.json records it."""
        out = {"suite": self.name, "mode": self.mode, "directory": self.directory,
               "pause_s": self.pause_s, "cv_threshold": self.cv_threshold,
               "options": self.options, "deviations": self.deviations}
        return {**out, "sweep": self.sweep} if self.sweep else out


def nested(overrides: dict, where: str) -> dict:
    """``{"workload.users": 4}`` and ``{"workload": {"users": 4}}`` alike, as nested dicts."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, like {{workload.users: 4}}")
    out: dict = {}
    for key, value in overrides.items():
        node = out
        *sections, leaf = str(key).split(".")
        for s in sections:
            node = node.setdefault(s, {})
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = _deep(node[leaf], value)
        else:
            node[leaf] = value
    return out


def _deep(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def deviations(reference: Config, actual: Config, option: str) -> list[dict]:
    """Every resolved setting where ``actual`` differs from ``reference``, except the
    ones CLOSED leaves free."""
    ref, act = flatten(yaml_dict(reference)), flatten(yaml_dict(actual))
    out = []
    for key in sorted(set(ref) | set(act)):
        if key.startswith(CLOSED_FREE) or ref.get(key) == act.get(key):
            continue
        out.append({"option": option, "key": key, "reference": ref.get(key), "value": act.get(key)})
    return out


def yaml_dict(cfg: Config) -> dict:
    """The resolved configuration, plug-in defaults included (what the result stores)."""
    return yaml.safe_load(cfg.text)


def _place(cfg_path: str, overrides: list[dict], directory: str, run_name: str) -> Config:
    where = {"run": {"results_dir": directory, "run_name": run_name}}
    return cfgmod.load(cfg_path or None, [*overrides, where])


def plan(req: Request, stamp: str) -> Plan:
    """Every run's configuration, resolved; ``stamp`` names a suite that has no name."""
    if sum(x is not None for x in (req.suite_file, req.mlperf, req.sweep)) != 1:
        raise ConfigError("suite: give a suite file or --mlperf closed|open (one of them)")
    if req.trials is not None and req.trials < 1:
        raise ConfigError(f"--trials {req.trials}: give 1 or more")
    if req.pause_s is not None and req.pause_s < 0:
        raise ConfigError(f"--pause {req.pause_s}: give 0 or more seconds")
    if req.cv_threshold is not None and req.cv_threshold <= 0:
        raise ConfigError(f"--cv-threshold {req.cv_threshold}: give a share above 0, e.g. 0.05")
    if req.name is not None:
        plain_name("--suite-name", req.name)
    base = cfgmod.load(req.config, req.overrides)   # results_dir, and the command line's errors
    if req.mlperf is not None:
        return _plan_mlperf(req, stamp, base.run.results_dir)
    if req.sweep is not None:
        return _plan_sweep(req, stamp, base.run.results_dir)
    return _plan_file(req, stamp, base.run.results_dir)


def _plan_file(req: Request, stamp: str, results_dir: str) -> Plan:
    raw = dict(cfgmod.read_yaml(req.suite_file))
    runs_raw = raw.pop("runs", None)
    if not isinstance(runs_raw, list) or not runs_raw:
        raise ConfigError(f"{req.suite_file}: runs: give a list of runs, each {{name, config, set}}")
    sec = build_dataclass(SuiteSection, raw, "suite")
    here = os.path.dirname(os.path.abspath(req.suite_file))
    name = req.name or sec.name or f"{os.path.splitext(os.path.basename(req.suite_file))[0]}-{stamp}"
    directory = os.path.join(results_dir, name)
    common = nested(sec.set, "suite.set")
    options: dict[str, dict] = {}
    runs: list[PlannedRun] = []
    for i, item in enumerate(runs_raw):
        entry = build_dataclass(SuiteRunSection, item if isinstance(item, dict) else {"?": item},
                                f"runs[{i}]")
        if entry.name in options:
            raise ConfigError(f"runs[{i}].name={entry.name!r}: used twice; give each run its own name")
        path = entry.config or sec.config
        if path and not os.path.isabs(path) and os.path.exists(os.path.join(here, path)):
            path = os.path.join(here, path)   # else a shipped config's name, or the error
        trials = req.trials or entry.trials or sec.trials
        overrides = [common, nested(entry.set, f"runs[{i}].set"), *req.overrides]
        for t in range(1, trials + 1):
            runs.append(PlannedRun(entry.name, t, _place(path, overrides, directory,
                                                         f"{entry.name}-trial{t}")))
        options[entry.name] = {"config": path, "set": entry.set, "trials": trials}
    if sec.order == "interleaved":   # drift over time (a neighbour's load) hits every run alike
        names = list(options)
        runs.sort(key=lambda r: (r.trial, names.index(r.option)))
    return Plan(name, "suite", directory, runs,
                sec.pause_s if req.pause_s is None else req.pause_s,
                req.cv_threshold or sec.cv_threshold, options, [])


def _plan_mlperf(req: Request, stamp: str, results_dir: str) -> Plan:
    mode = req.mlperf
    if mode not in MLPERF_MODES:
        raise ConfigError(f"--mlperf {mode}: use closed or open")
    configs = req.configs_dir
    shipped = cfgmod.shipped_configs()
    trials = req.trials or MLPERF_TRIALS
    name = req.name or f"mlperf-{mode}-{stamp}"
    directory = os.path.join(results_dir, name)
    seed = [{"run": {"seed": MLPERF_SEED}}]
    found: list[dict] = []
    if trials != MLPERF_TRIALS:
        found.append({"option": "*", "key": "trials", "reference": MLPERF_TRIALS, "value": trials})
    options: dict[str, dict] = {}
    runs: list[PlannedRun] = []
    for option, filename in MLPERF_OPTIONS.items():
        path = os.path.join(configs, filename) if configs else filename.removesuffix(".yaml")
        if configs and not os.path.isfile(path) or not configs and path not in shipped:
            raise ConfigError(f"--configs-dir {configs or '(the shipped configs)'}: has no {filename};"
                              " give the folder of the MLPerf option files (configs/)")
        reference = cfgmod.load(path, seed)
        planned = [PlannedRun(option, t, _place(path, [*seed, *req.overrides], directory,
                                                f"{option}-trial{t}"))
                   for t in range(1, trials + 1)]
        found += deviations(reference, planned[0].cfg, option)
        runs += planned
        options[option] = {"config": path, "set": {}, "trials": trials}
    if mode == "closed" and found:
        d = found[0]
        raise ConfigError(
            f"--mlperf closed: fixes {d['key']}={d['reference']!r} (got {d['value']!r}"
            f"{'' if d['option'] == '*' else ' in ' + d['option']}); drop the change or use"
            " --mlperf open, which records it")
    pause = MLPERF_PAUSE_S if req.pause_s is None else req.pause_s
    return Plan(name, mode, directory, runs, pause, req.cv_threshold or CV_THRESHOLD, options, found)


def _plan_sweep(req: Request, stamp: str, results_dir: str) -> Plan:
    """One option per value of one config key, in the order given."""
    key, values = req.sweep
    if "." not in key:
        raise ConfigError(f"--key {key!r}: give a config key as section.name, e.g. workload.users")
    if not values:
        raise ConfigError("--values: give one or more values, comma-separated")
    leaf = key.rsplit(".", 1)[-1]
    name = req.name or f"sweep-{leaf}-{stamp}"
    directory = os.path.join(results_dir, name)
    trials = req.trials or 1
    options: dict[str, dict] = {}
    runs: list[PlannedRun] = []
    for value in values:
        option = f"{leaf}-{value}"
        if option in options:
            raise ConfigError(f"--values: {value!r} is given twice; give each value once")
        over = [*req.overrides, nested({key: value}, key)]
        runs += [PlannedRun(option, t, _place(req.config or "", over, directory, f"{option}-trial{t}"))
                 for t in range(1, trials + 1)]
        options[option] = {"config": req.config or "", "set": {key: value}, "trials": trials}
    return Plan(name, "sweep", directory, runs, req.pause_s or 0.0,
                req.cv_threshold or CV_THRESHOLD, options, [], {"key": key, "values": values})
