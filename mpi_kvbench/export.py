"""Runs into one spreadsheet: ``python -m mpi_kvbench export RUN_DIR... --csv FILE | --xlsx FILE``.

One row per run: a few facts of the run (directory, id, start, configuration hash, seed),
every figure of its summary.json, flattened to dotted column names (``tiers.storage.
read_gbps``, ``latency_ms.group_e2e.p99``), then the resolved configuration (``config.
tiers.hbm.capacity_gb``), so the file holds what summary.json holds and what produced it.
When several runs share a configuration, the trials table gives mean, min, max, sample
standard deviation and CV of every figure: the spread a reader must see before believing a
difference between two configurations.

Trials only mean something when the runs measured the same thing, so runs that differ in
world size, model or configuration are refused unless ``force``. The configuration hash is
of result.h5's ``config_yaml`` without the keys that only name or place a run
(:data:`RUN_ONLY_KEYS`); the seed counts (a new seed is a new workload).

Plain csv and openpyxl, no pandas: exporting must work where the analysis extra is not
installed but openpyxl is (and CSV needs nothing at all).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import yaml

from mpi_kvbench.errors import ConfigError
from mpi_kvbench.results.hdf5 import atomic_write
from mpi_kvbench.results.trials import spread

#: Config keys that name or place a run and do not change what it measures.
RUN_ONLY_KEYS = (("run", "run_name"), ("run", "results_dir"))
#: Columns that say what a run was, not what it measured: no trial statistics for them.
FACT_COLUMNS = frozenset({"schema_version", "seed", "world_size", "tensor_parallel", "replicas",
                          "nodes", "bytes_per_token_per_rank", "object_bytes",
                          "disaggregated.prefill_groups"})
#: Leaves whose summary.json name carries no unit; the column gets one.
UNIT_SUFFIX = {"batch_occupancy_mean": "_requests", "batch_occupancy_max": "_requests"}
#: Columns before the summary's: where the row came from.
RUN_COLUMNS = ("run_dir", "run_id", "start_time", "config_hash", "seed")
TRIAL_COLUMNS = ("config_hash", "model", "world_size", "runs", "figure", "n", "mean", "min", "max",
                 "stdev", "cv")
STATS = ("mean", "min", "max", "stdev", "cv")

Scalar = str | int | float | bool | None


@dataclass
class Run:
    """One run directory, read: its row of the runs table and what identifies its config."""

    path: str
    row: dict[str, Scalar]

    @property
    def key(self) -> tuple[Any, Any, Any]:
        return self.row.get("model"), self.row.get("world_size"), self.row.get("config_hash")


def config_hash(config_yaml: str) -> str:
    """Short SHA-256 of the resolved configuration without :data:`RUN_ONLY_KEYS`, key order
    ignored: equal for trials of one configuration, whatever they were named."""
    cfg = yaml.safe_load(config_yaml) or {}
    for section, key in RUN_ONLY_KEYS:
        if isinstance(cfg.get(section), dict):
            cfg[section].pop(key, None)
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(summary: dict[str, Any]) -> dict[str, Scalar]:
    """summary.json as one flat mapping: nested keys joined with ``.``, list items as
    ``[i]`` (per rank, per group), lists of text (``errors``) joined with ``; ``."""
    out: dict[str, Scalar] = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[name] = "; ".join(value)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{name}[{i}]")
        else:
            leaf = name.rpartition(".")[2]
            out[name + UNIT_SUFFIX.get(leaf, "")] = value

    walk(summary, "")
    return out


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    return value.item() if hasattr(value, "item") else value


def _h5(path: str) -> str:
    return os.path.join(path, "result.h5") if os.path.isdir(path) else path


def read_run(path: str) -> Run:
    """The run in directory ``path`` (or its result.h5): the run's facts and its summary."""
    h5 = _h5(path)
    if not os.path.isfile(h5):
        raise ConfigError(f"{path}: no result.h5 there; give run directories (<results-dir>/<run-name>)")
    try:
        with h5py.File(h5, "r") as f:
            attrs = {k: _attr(f.attrs[k]) for k in ("run_id", "start_time", "seed", "config_yaml",
                                                      "summary") if k in f.attrs}
    except OSError as err:
        raise ConfigError(f"{path}: result.h5 cannot be read ({err}); give a finished run") from None
    if "summary" not in attrs or "config_yaml" not in attrs:
        raise ConfigError(f"{path}: result.h5 has no summary or config; give a finished run")
    summary = json.loads(attrs["summary"])
    row: dict[str, Scalar] = {
        "run_dir": os.path.dirname(os.path.abspath(h5)),
        "run_id": attrs.get("run_id"),
        "start_time": attrs.get("start_time"),
        "config_hash": config_hash(attrs["config_yaml"]),
        "seed": attrs.get("seed"),
    }
    row.update(flatten(summary))
    # the settings (capacities, users, rates, ...): a spreadsheet of configurations needs them
    row.update({f"config.{k}": v for k, v in flatten(yaml.safe_load(attrs["config_yaml"]) or {}).items()})
    return Run(path, row)


def check_same(runs: Sequence[Run]) -> None:
    """Refuses runs that are not trials of one configuration (ConfigError, one line)."""
    first = runs[0]
    for run in runs[1:]:
        for field in ("world_size", "model", "config_hash"):
            if run.row.get(field) != first.row.get(field):
                raise ConfigError(
                    f"{run.path}: {field} {run.row.get(field)} differs from {first.row.get(field)}"
                    f" of {first.path}; export trials of one configuration, or pass --force")


def _number(v: Scalar) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return None if math.isnan(v) else float(v)


def trials(runs: Sequence[Run]) -> list[dict[str, Scalar]]:
    """One row per figure per configuration that has two runs or more."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.key, []).append(run)
    rows = []
    for (model, world_size, chash), group in groups.items():
        if len(group) < 2:
            continue
        for col in _columns(r.row for r in group):
            if (col in FACT_COLUMNS or col in RUN_COLUMNS or col.startswith("config.")
                    or col.endswith("target_ms")):
                continue
            values = [x for x in (_number(r.row.get(col)) for r in group) if x is not None]
            if not values:
                continue
            rows.append({"config_hash": chash, "model": model, "world_size": world_size,
                         "runs": len(group), "figure": col, **spread(values)})
    return rows


def _columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The union of the rows' keys in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def trials_csv_path(csv_path: str) -> str:
    """``runs.csv`` -> ``runs_trials.csv``, next to it."""
    return os.path.splitext(csv_path)[0] + "_trials.csv"


def _write_csv(path: str, columns: Sequence[str], rows: Sequence[dict[str, Scalar]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(columns), restval="")
            w.writeheader()
            for row in rows:   # floats as repr: they read back to the same double
                w.writerow({k: "" if v is None else v for k, v in row.items()})
    atomic_write(path, write)


def _openpyxl() -> Any:
    """openpyxl, an optional dependency: only --xlsx needs it."""
    try:
        import openpyxl
    except ImportError:   # pragma: no cover - depends on the environment
        raise ConfigError("--xlsx: openpyxl is not installed; pip install openpyxl, or use --csv") from None
    return openpyxl


def _write_xlsx(path: str, sheets: dict[str, tuple[Sequence[str], Sequence[dict[str, Scalar]]]]) -> None:
    openpyxl = _openpyxl()
    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for title, (columns, rows) in sheets.items():
        ws = wb.create_sheet(title)
        ws.append(list(columns))
        for row in rows:
            ws.append([row.get(c) for c in columns])
        ws.freeze_panes = "B2"   # the header row and the first column stay in view
        ws.column_dimensions["A"].width = 40
    atomic_write(path, wb.save)


def export(paths: Sequence[str], csv_path: str | None = None, xlsx_path: str | None = None,
           force: bool = False, overwrite: bool = False) -> list[str]:
    """Writes the runs table (and the trials table when a configuration has several runs)
    to CSV and/or XLSX; returns the files written. Checks everything before writing."""
    if not paths:
        raise ConfigError("export: no run directory given; name one or more runs")
    if not csv_path and not xlsx_path:
        raise ConfigError("export: no output given; pass --csv FILE or --xlsx FILE")
    if xlsx_path and not xlsx_path.lower().endswith(".xlsx"):
        raise ConfigError(f"--xlsx {xlsx_path}: the name must end in .xlsx")
    if xlsx_path:
        _openpyxl()   # fail before reading anything
    seen: dict[str, str] = {}
    for p in paths:
        real = os.path.realpath(_h5(p))
        if real in seen:
            raise ConfigError(f"{p}: the same run as {seen[real]}; give each run once")
        seen[real] = p
    runs = [read_run(p) for p in paths]
    if not force:
        check_same(runs)
    trial_rows = trials(runs)
    targets = [p for p in (csv_path, xlsx_path) if p]
    if csv_path and trial_rows:
        targets.append(trials_csv_path(csv_path))
    for t in targets:
        flag = "--xlsx" if t == xlsx_path else "--csv"
        if os.path.exists(t) and not overwrite:
            raise ConfigError(f"{flag}: {t} exists; choose a new name, or pass --overwrite to replace it")
        parent = os.path.dirname(os.path.abspath(t))
        if not os.path.isdir(parent):
            raise ConfigError(f"{flag}: {parent} is not a directory; create it first")
    rows = [r.row for r in runs]
    columns = _columns(rows)
    written = []
    if csv_path:
        _write_csv(csv_path, columns, rows)
        written.append(csv_path)
        if trial_rows:
            _write_csv(trials_csv_path(csv_path), TRIAL_COLUMNS, trial_rows)
            written.append(trials_csv_path(csv_path))
    if xlsx_path:
        sheets = {"runs": (columns, rows)}
        if trial_rows:
            sheets["trials"] = (TRIAL_COLUMNS, trial_rows)
        _write_xlsx(xlsx_path, sheets)
        written.append(xlsx_path)
    return written
