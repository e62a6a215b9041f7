"""Typed, validated configuration: defaults <- YAML file <- command-line overrides.

The defaults of the core sections live in one place, the packaged ``default.yaml``: the
section dataclasses below have no defaults of their own, so a key missing there is an
error, not a silent second value. Plug-ins (tiers, policies, workloads) keep their
defaults in their own ``Params``. Every mistake becomes a ConfigError whose one line
names the field and the fix; nothing is created or written before the whole
configuration has been validated.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mpi_kvbench.context import system_dir
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.layout import Geometry
from mpi_kvbench.metrics import PERCENTILES
from mpi_kvbench.models import MLA_MODES, ModelSpec, resolve
from mpi_kvbench.params import (
    at_most,
    build_dataclass,
    choice,
    clean,
    did_you_mean,
    non_negative,
    plain_name,
    positive,
    unknown,
)
from mpi_kvbench.registry import POLICIES, TIERS, WORKLOADS, Registry
from mpi_kvbench.results import validation

TIER_LEVELS = ("hbm", "dram", "object", "storage")
PATH_FIELDS = {"{rank}", "{local_rank}", "{node}", "{host}", "{group}", "{run_id}"}
QOS_CLASSES = ("interactive", "responsive", "batch")   # as workloads/qos.py draws them
MAX_CAPACITY_GB = 1e6      # a petabyte per rank: above any real tier, below an overflow


class Loader(yaml.SafeLoader):
    """YAML as written today: ``1e9`` and ``1e-5`` are numbers (YAML 1.1 wants a dot, as in
    ``1.0e+9``, and reads them as strings otherwise)."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def parse_yaml(text: Any) -> Any:
    return yaml.load(text, Loader=Loader)   # noqa: S506 - a SafeLoader subclass


@dataclass(frozen=True)
class RunSection:
    seed: int
    duration_s: float
    max_requests: int
    warmup_s: float
    stonewall: bool
    results_dir: str
    run_name: str
    calibrate: bool
    calibrate_gb: float
    precondition: float
    watchdog_s: float
    io_trace_log: str
    precondition_device_fills: float
    validation_trace: str
    validation_tolerance: float
    per_rank_detail: str

    def check(self) -> None:
        non_negative(self, "run", ("duration_s", "max_requests", "warmup_s", "watchdog_s", "seed",
                                   "precondition_device_fills"))
        choice(self, "run", "per_rank_detail", ("full", "summary"))
        positive(self, "run", ("calibrate_gb",))
        if not 0 <= self.precondition <= 1:
            raise ConfigError(f"run.precondition={self.precondition}: give a share of the storage"
                              " capacity between 0 and 1")
        plain_name("run.run_name", self.run_name, allow_empty=True)   # "": a UTC timestamp
        positive(self, "run", ("validation_tolerance",))
        if self.validation_trace:
            validation.read(self.validation_trace)   # a bad file fails before the run
        if "\0" in self.results_dir:
            raise ConfigError("run.results_dir: the path holds a NUL byte; give a plain path")




@dataclass(frozen=True)
class ModelSection:
    name: str


@dataclass(frozen=True)
class KVSection:
    chunk_tokens: int
    tensor_parallel: int
    mla_mode: str
    layout: str

    def check(self) -> None:
        positive(self, "kv", ("chunk_tokens", "tensor_parallel"))
        at_most(self, "kv", {"chunk_tokens": 1 << 20, "tensor_parallel": 1 << 16})
        choice(self, "kv", "mla_mode", MLA_MODES)
        choice(self, "kv", "layout", ("chunk", "layer"))


@dataclass(frozen=True)
class EngineSection:
    decode_mode: str
    decode_batch: int
    prefill_tokens_per_s: float
    time_per_output_token_ms: float
    promotion: str
    policy: str
    policy_params: dict
    high_watermark: float
    low_watermark: float
    prefill_groups: int
    max_batch: int
    scheduling: str

    def check(self) -> None:
        choice(self, "engine", "decode_mode", ("end", "reference"))
        positive(self, "engine", ("max_batch",))
        choice(self, "engine", "scheduling", ("fifo", "priority"))
        non_negative(self, "engine", ("prefill_groups",))
        choice(self, "engine", "promotion", ("none", "hbm"))
        positive(self, "engine", ("decode_batch",))
        at_most(self, "engine", {"max_batch": 1 << 16, "decode_batch": 1 << 20,
                                 "prefill_groups": 1 << 16})
        non_negative(self, "engine", ("prefill_tokens_per_s", "time_per_output_token_ms"))
        if not 0 < self.low_watermark <= self.high_watermark <= 1:
            raise ConfigError(
                "engine.low_watermark/high_watermark: need 0 < low <= high <= 1"
                f" (got {self.low_watermark}, {self.high_watermark})")


@dataclass(frozen=True)
class IOSection:
    io_depth: int
    payload: str
    payload_spare_mb: int
    verify: bool

    def check(self) -> None:
        positive(self, "io", ("io_depth",))
        non_negative(self, "io", ("payload_spare_mb",))
        at_most(self, "io", {"io_depth": 1024})   # one thread each
        choice(self, "io", "payload", ("fresh", "reuse"))


@dataclass(frozen=True)
class QosSection:
    """SLO targets per QoS class, checked against the TP-group latency of ``metric``."""

    metric: str
    targets_ms: dict

    def check(self) -> None:
        choice(self, "qos", "metric", ("e2e", "prefill_storage"))
        for cls, targets in self.targets_ms.items():
            if cls not in QOS_CLASSES:
                raise ConfigError(f"qos.targets_ms.{cls}: unknown QoS class;"
                                  f" {did_you_mean(cls, QOS_CLASSES)}")
            if not isinstance(targets, dict):
                raise ConfigError(f"qos.targets_ms.{cls}: expected a mapping like {{p95: 50, p99: 100}}")
            for pct, ms in targets.items():
                if pct not in PERCENTILES:
                    raise unknown(f"qos.targets_ms.{cls}.{pct}", pct, PERCENTILES)
                if isinstance(ms, bool) or not isinstance(ms, int | float) or not 0 < ms < math.inf:
                    raise ConfigError(f"qos.targets_ms.{cls}.{pct}={ms!r}: give a target in ms > 0")


@dataclass(frozen=True)
class TierSpec:
    """One tier level: its plug-in kind, capacity per rank, and the plug-in's own params."""

    level: str
    kind: str
    capacity_bytes: int
    params: Any


@dataclass(frozen=True)
class Config:
    run: RunSection
    model: ModelSpec
    kv: KVSection
    engine: EngineSection
    io: IOSection
    qos: QosSection
    workload_kind: str
    workload: Any
    tiers: tuple[TierSpec, ...]
    policy_params: Any               # the eviction policy's own Params
    raw: dict = field(repr=False)

    @property
    def geometry(self) -> Geometry:
        """What one object is on one rank, from model, chunk size, TP and layout."""
        return Geometry(self.model, self.kv.chunk_tokens, self.kv.tensor_parallel, self.kv.layout)

    @property
    def text(self) -> str:
        """The resolved configuration as YAML, stored in the result: every setting in
        force, plug-in defaults included."""
        resolved = dict(self.raw)
        resolved["workload"] = {"kind": self.workload_kind, **dataclasses.asdict(self.workload)}
        resolved["engine"] = {**self.raw["engine"],
                              "policy_params": dataclasses.asdict(self.policy_params)}
        resolved["tiers"] = {**self.raw["tiers"], **{
            t.level: {"kind": t.kind, "capacity_gb": t.capacity_bytes / 1e9,
                      **dataclasses.asdict(t.params)} for t in self.tiers}}
        return yaml.safe_dump(resolved, sort_keys=False)


SECTIONS = {"run": RunSection, "model": ModelSection, "kv": KVSection,
            "engine": EngineSection, "io": IOSection, "qos": QosSection}
TOP_KEYS = (*SECTIONS, "models", "workload", "tiers")


def default_dict() -> dict:
    text = resources.files("mpi_kvbench").joinpath("default.yaml").read_text()
    return parse_yaml(text)


def shipped_configs() -> dict[str, Any]:
    """The workload files installed with the package, by name (``mlperf-option1``)."""
    folder = resources.files("mpi_kvbench").joinpath("configs")
    return {f.name.removesuffix(".yaml"): f for f in sorted(folder.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".yaml")} if folder.is_dir() else {}


def read_yaml(path: str) -> dict:
    """A YAML file by path, or a shipped config by name (``--config mlperf-option1``)."""
    if "\0" in path:
        raise ConfigError(f"--config {path!r}: holds a NUL byte; remove it")
    shipped = shipped_configs()
    if not os.path.exists(path) and os.sep not in path and path.removesuffix(".yaml") in shipped:
        text = shipped[path.removesuffix(".yaml")].read_text()
    else:
        try:
            with open(path, "rb") as fh:
                text = fh.read().decode()
        except FileNotFoundError:
            raise ConfigError(f"--config {path}: no such file; give the path of a YAML file or a"
                              f" shipped config ({did_you_mean(path, shipped)}; see `python -m"
                              " mpi_kvbench configs`)") from None
        except IsADirectoryError:
            raise ConfigError(f"--config {path}: is a directory; give the path of a YAML file") from None
        except OSError as exc:
            raise ConfigError(f"--config {path}: cannot read it ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--config {path}: is not UTF-8 text; give a YAML file") from None
    try:
        data = parse_yaml(text) or {}
    except (yaml.YAMLError, RecursionError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"--config {path}:{where} is not valid YAML; fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping of sections")
    return data


def merge(base: dict, over: dict, where: str = "") -> dict:
    """Deep-merges ``over`` into a copy of ``base``; unknown keys are refused with a hint."""
    out = dict(base)
    for key, value in over.items():
        name = f"{where}{key}"
        free = where.startswith(("models.", "tiers.", "workload.", "qos.targets_ms.",
                                 "engine.policy_params."))
        if key not in base and not free:
            raise unknown(name, key, base)
        old = base.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            if value.get("kind") not in (None, old.get("kind")):
                old = _accepted_by(value["kind"], old, where)
            out[key] = merge(old, value, f"{name}.")
        else:
            out[key] = value
    return out


def _accepted_by(kind: str, old: dict, where: str) -> dict:
    """On a change of plug-in kind, keeps the old settings the new kind also takes."""
    registry = TIERS if where == "tiers." else WORKLOADS if where == "" else None
    try:
        fields = {f.name for f in dataclasses.fields(registry.load(kind).Params)}
    except (AttributeError, ConfigError):
        return {}
    keep = fields | ({"capacity_gb"} if registry is TIERS else set())
    return {k: v for k, v in old.items() if k in keep}


def parse_set(item: str) -> dict:
    """``section.key=value`` -> nested dict; the value is parsed as YAML (numbers, bools)."""
    key, sep, value = item.partition("=")
    if not sep or not key or "." not in key:
        raise ConfigError(f"--set {item!r}: write it as section.key=value, e.g. io.io_depth=16")
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    try:
        parsed = parse_yaml(value) if value else ""
    except (yaml.YAMLError, RecursionError):
        parsed = value
    node[parts[-1]] = value if parsed is None else parsed   # "null" is the null tier, not None
    return out


def load(path: str | None = None, overrides: list[dict] | None = None) -> Config:
    """Defaults, then the file, then each override; returns a validated Config."""
    raw = default_dict()
    if path:
        raw = merge(raw, read_yaml(path))
    for over in overrides or []:
        raw = merge(raw, over)
    return validate(raw)


def validate(raw: dict) -> Config:
    for key in raw:
        if key not in TOP_KEYS:
            raise unknown(key, key, TOP_KEYS)
    clean(raw, "config")  # NaN, infinity, NUL and 64-bit overflow, wherever they hide
    for key in TOP_KEYS:
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ConfigError(f"{key}={raw[key]!r}: expected a mapping of settings")
    for level, sec in (raw.get("tiers") or {}).items():
        if sec is not None and not isinstance(sec, dict):
            raise ConfigError(f"tiers.{level}={sec!r}: expected a mapping like"
                              " {kind: storage, capacity_gb: 4}")
    sections = {name: build_dataclass(cls, raw.get(name) or {}, name)
                for name, cls in SECTIONS.items()}
    for sec in sections.values():
        if hasattr(sec, "check"):
            sec.check()
    model = resolve(sections["model"].name, raw.get("models") or {})
    kv = sections["kv"]
    model.check_tp(kv.tensor_parallel)

    wl = dict(raw.get("workload") or {})
    wl_kind = wl.pop("kind", "synthetic")
    workload = WORKLOADS.params(_kind(wl_kind, "workload.kind", WORKLOADS), wl, "workload")

    tiers = []
    for level, sec in (raw.get("tiers") or {}).items():   # a mapping: checked above
        if level not in TIER_LEVELS:
            raise unknown(f"tiers.{level}", level, TIER_LEVELS)
        sec = dict(sec or {})
        kind = _kind(sec.pop("kind", level), f"tiers.{level}.kind", TIERS)
        cap = sec.pop("capacity_gb", 0)
        if isinstance(cap, bool) or not isinstance(cap, int | float) or not 0 <= cap <= MAX_CAPACITY_GB:
            raise ConfigError(f"tiers.{level}.capacity_gb={cap!r}: give a size in GB from 0 to"
                              f" {MAX_CAPACITY_GB:g}")
        params = TIERS.params(kind, sec, f"tiers.{level}")
        if cap > 0 and int(cap * 1e9) == 0:
            raise ConfigError(f"tiers.{level}.capacity_gb={cap!r}: less than one byte; give 0 (off)"
                              " or a real size")
        if cap > 0:
            tiers.append(TierSpec(level, kind, int(cap * 1e9), params))
    tiers.sort(key=lambda t: TIER_LEVELS.index(t.level))
    if not tiers:
        raise ConfigError("tiers: every capacity_gb is 0; give at least one tier a capacity")

    run = sections["run"]
    if run.duration_s == 0 and run.max_requests == 0 and wl_kind == "synthetic":
        raise ConfigError("run.duration_s and run.max_requests are both 0 and synthetic users never"
                          " stop: set one of them")
    check_path(run.results_dir, "run.results_dir")
    if run.io_trace_log:
        check_path(run.io_trace_log, "run.io_trace_log")
    for t in tiers:
        if getattr(t.params, "path", ""):
            check_path(t.params.path, f"tiers.{t.level}.path")
    engine = sections["engine"]
    policy = POLICIES.params(_kind(engine.policy, "engine.policy", POLICIES), engine.policy_params,
                             "engine.policy_params")
    return Config(run=run, model=model, kv=kv, engine=engine, io=sections["io"],
                  qos=sections["qos"], workload_kind=wl_kind, workload=workload,
                  tiers=tuple(tiers), policy_params=policy, raw=raw)


def check_path(template: str, name: str) -> None:
    """Refuses system directories, unknown placeholders and paths nobody can write."""
    fields = {f"{{{f}}}" for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    bad = fields - PATH_FIELDS
    if bad:
        raise ConfigError(
            f"{name}={template!r}: unknown placeholder {sorted(bad)[0]}; valid: "
            + ", ".join(sorted(PATH_FIELDS)))
    if "\0" in template:
        raise ConfigError(f"{name}={template!r}: holds a NUL byte; remove it")
    fixed = template.split("{", 1)[0]
    if not fixed:
        fixed = "."
    # realpath: "//etc" and a symlink into /etc are /etc. Each rank checks its expanded
    # path again when it opens its tier ({rank}/.. and per-rank symlinks).
    path = Path(os.path.realpath(os.path.expanduser(fixed)))
    if system_dir(str(path)) or system_dir(os.path.realpath(os.path.expanduser(_sample(template)))):
        raise ConfigError(f"{name}={template!r} is a system directory; choose a directory of your own")
    probe = path
    try:
        while not probe.exists():
            probe = probe.parent
    except OSError as exc:   # e.g. a name longer than the file system allows
        raise ConfigError(f"{name}={template!r}: {exc.strerror}; choose a shorter path") from None
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{name}={template!r}: {probe} is not a writable directory;"
                          " choose one you can write")


def _sample(template: str) -> str:
    """The template as rank 0 of a run would expand it: catches ``{rank}/../../etc``."""
    return template.format(**{f.strip("{}"): "0" for f in PATH_FIELDS})


def _kind(value: Any, where: str, registry: Registry) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}={value!r}: expected a plug-in name")
    if value not in registry.names():
        raise ConfigError(f"{where}={value!r}: unknown {registry.kind} plug-in;"
                          f" {did_you_mean(value, registry.names())}")
    return value
