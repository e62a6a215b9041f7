"""A suite's result, ``suite.json``: per option, every trial's headline figures and their
spread over the trials, from the runs' own ``summary.json`` files (plain data, no MPI).

Spread is the sample standard deviation (n - 1) and the coefficient of variation (CV =
stdev / mean); a trial set whose throughput CV is above the threshold is flagged
unstable, because variability is a result: a mean of three trials that disagree by 14%
says less than its digits suggest. Latencies also get their worst trial, the figure a
service would have lived with.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Any

from mpi_kvbench import SCHEMA_VERSION, __version__
from mpi_kvbench.results.hdf5 import write_summary

# name -> path in summary.json; every one a single number per run
HEADLINE: dict[str, tuple[str, ...]] = {
    "storage_throughput_tokens_per_s": ("storage_throughput_tokens_per_s",),
    "storage_throughput_gbps": ("storage_throughput_gbps",),
    "storage_read_gbps": ("tiers", "storage", "read_gbps"),
    "storage_write_gbps": ("tiers", "storage", "write_gbps"),
    "requests_per_s": ("requests_per_s",),
    "prefix_hit_ratio": ("prefix_hit_ratio",),
    "request_e2e_p95_ms": ("latency_ms", "group_e2e", "p95"),
    "request_e2e_p99_ms": ("latency_ms", "group_e2e", "p99"),
    "storage_read_p95_ms": ("tiers", "storage", "latency_ms", "read", "p95"),
    "storage_read_p99_ms": ("tiers", "storage", "latency_ms", "read", "p99"),
    "storage_write_p95_ms": ("tiers", "storage", "latency_ms", "write", "p95"),
    "storage_write_p99_ms": ("tiers", "storage", "latency_ms", "write", "p99"),
    # the device's own bytes over the tool's (1: only this run's I/O; above: a neighbour's)
    "device_io_ratio": ("device_io", "ratio"),
}
LATENCIES = tuple(k for k in HEADLINE if k.endswith("_ms"))
# the figures whose CV judges a trial set's stability (the headline throughput)
STABILITY = ("storage_throughput_tokens_per_s", "storage_throughput_gbps")


def figures(summary: dict[str, Any]) -> dict[str, float | None]:
    """One run's headline figures; None where the run has no such figure."""
    out: dict[str, float | None] = {}
    for name, path in HEADLINE.items():
        node: Any = summary
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        out[name] = float(node) if isinstance(node, int | float) and not isinstance(node, bool) \
            and math.isfinite(node) else None
    return out


def spread(values: list[float | None]) -> dict[str, Any]:
    """n, mean, min, max, sample stdev and CV of the values that exist."""
    v = [x for x in values if x is not None]
    if not v:
        return {"n": 0, "mean": None, "min": None, "max": None, "stdev": None, "cv": None}
    mean = statistics.fmean(v)
    stdev = statistics.stdev(v) if len(v) > 1 else None
    if stdev is None:
        cv = None
    elif min(v) == max(v):
        cv = 0.0   # no spread, even around a mean of 0
    else:
        cv = stdev / mean if mean else None
    return {"n": len(v), "mean": mean, "min": min(v), "max": max(v), "stdev": stdev, "cv": cv}


def read_summary(run_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(run_dir, "summary.json")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def option_result(trials: list[dict[str, Any]], cv_threshold: float) -> dict[str, Any]:
    """One option's trials (each with its ``figures``) and their aggregates."""
    agg = {name: spread([t["figures"].get(name) for t in trials if t.get("figures")])
           for name in HEADLINE}
    worst = {}
    for name in LATENCIES:
        measured = [(t["figures"][name], t["trial"]) for t in trials
                    if t.get("figures") and t["figures"].get(name) is not None]
        if measured:
            value, trial = max(measured)
            worst[name] = {"value": value, "trial": trial}
    judged = [name for name in STABILITY if agg[name]["cv"] is not None]
    unstable = [name for name in judged if agg[name]["cv"] > cv_threshold]
    return {"trials": trials, "aggregate": agg, "worst_trial": worst,
            "stable": (not unstable) if judged else None, "unstable_figures": unstable}


def build(plan: dict[str, Any], records: list[dict[str, Any]], world_size: int,
          started: str, finished: str, command_line: str) -> dict[str, Any]:
    """suite.json from the plan (``Plan.info()``) and each run's record (option, trial,
    run_dir, exit_status, error); the figures are read from the run directories."""
    by_option: dict[str, list[dict[str, Any]]] = {name: [] for name in plan["options"]}
    for rec in records:
        summary = read_summary(rec["run_dir"])
        by_option.setdefault(rec["option"], []).append({
            **rec,
            "complete": bool(summary and summary.get("complete")) and rec["exit_status"] == 0,
            "storage_health": (summary or {}).get("storage_health", {}).get("verdict"),
            "figures": figures(summary) if summary else None,
        })
    options = {name: option_result(trials, plan["cv_threshold"]) for name, trials in by_option.items()}
    planned = sum(o["trials"] for o in plan["options"].values())
    extra = {"curve": curve(plan["sweep"], options)} if plan.get("sweep") else {}
    return {
        **extra,
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        **plan,
        "options": {name: {**plan["options"][name], **options[name]} for name in plan["options"]},
        "world_size": world_size,
        "command_line": command_line,
        "started": started,
        "finished": finished,
        "runs_planned": planned,
        "runs_done": len(records),
        "complete": len(records) == planned and all(
            t["complete"] for o in options.values() for t in o["trials"]),
        "rules": rules(plan, options, planned, len(records)),
    }


def curve(sweep: dict[str, Any], options: dict[str, Any]) -> list[dict[str, Any]]:
    """A sweep's curve: per value, the mean of each headline figure over its trials and
    every trial's storage-health verdict."""
    out = []
    for value, o in zip(sweep["values"], options.values(), strict=True):
        out.append({"value": value, **{k: a["mean"] for k, a in o["aggregate"].items()},
                    "verdicts": [t["storage_health"] for t in o["trials"]]})
    return out


def rules(plan: dict[str, Any], options: dict[str, Any], planned: int, done: int) -> dict[str, Any]:
    """Pass/fail of what the mode requires: every run done and complete; CLOSED also no
    deviation from the MLPerf reference (planning refused those already); OPEN lists them."""
    checks = [
        {"rule": "every planned run ran", "pass": done == planned},
        {"rule": "every run complete (exit status 0, summary complete)",
         "pass": all(t["complete"] for o in options.values() for t in o["trials"])},
    ]
    if plan["mode"] in ("closed", "open"):
        checks.append({"rule": "no deviation from the MLPerf reference configuration",
                       "pass": not plan["deviations"], "judged": plan["mode"] == "closed"})
    judged = [c["pass"] for c in checks if c.get("judged", True)]
    return {"mode": plan["mode"], "pass": all(judged), "checks": checks,
            "deviations": plan["deviations"]}


def write(path: str, doc: dict[str, Any]) -> None:
    """Through a temporary file and a rename (``hdf5.write_summary``, the writer of every
    run's summary.json): a crash leaves the last whole version."""
    write_summary(path, doc)


def render(doc: dict[str, Any]) -> str:
    """The suite's table for the console: per option, the mean and CV of the headline."""
    lines = [f"suite {doc['suite']} ({doc['mode']}): {doc['runs_done']}/{doc['runs_planned']} runs,"
             f" rules {'PASS' if doc['rules']['pass'] else 'FAIL'}",
             f"  {'option':16} {'trials':>6} {'tokens/s':>12} {'cv':>7} {'GB/s':>9} {'cv':>7}"
             f" {'req/s':>9} {'worst e2e p99 ms':>17}  stable"]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    for name, o in doc["options"].items():
        a = o["aggregate"]
        tokens, gbps = a["storage_throughput_tokens_per_s"], a["storage_throughput_gbps"]
        worst = o["worst_trial"].get("request_e2e_p99_ms", {}).get("value")
        stable = {True: "yes", False: "NO", None: "-"}[o["stable"]]
        lines.append(
            f"  {name:16} {len(o['trials']):>6} {num(tokens['mean'], ',.0f'):>12} {pct(tokens['cv']):>7}"
            f" {num(gbps['mean'], '.3f'):>9} {pct(gbps['cv']):>7}"
            f" {num(a['requests_per_s']['mean'], '.2f'):>9} {num(worst, '.3f'):>17}  {stable}")
    for d in doc["rules"]["deviations"]:
        lines.append(f"  deviation: {d['option']}: {d['key']} = {d['value']!r}"
                     f" (reference {d['reference']!r})")
    return "\n".join(lines)
