"""A suite under a real ``mpirun``: two options x two trials in one MPI job, and its
suite.json checked against figures recomputed here from the four run directories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import pytest
import yaml
from test_mpirun import MINI, MPIRUN, gb, mpirun

pytestmark = pytest.mark.skipif(MPIRUN is None, reason="no mpirun: pip install -e '.[mpi]'")

REQUESTS = 3     # per TP group and run


def suite_file(tmp: Path) -> Path:
    """Two options on the 1 KiB-per-token model in 512-token chunks (512 KiB objects):
    storage only, and a few objects of DRAM above it; chatbot users only."""
    common = {"run": {"duration_s": 0, "max_requests": REQUESTS},
              "kv.chunk_tokens": 512, "tiers.hbm.capacity_gb": 0, "io.io_depth": 4,
              "tiers.storage.capacity_gb": float(gb(32)),
              "workload.templates": {"chatbot": 1, "coding": 0, "document": 0}}
    doc = {"name": "pair", "trials": 2, "pause_s": 0, "set": common,
           "runs": [{"name": "storage-only", "set": {"tiers.dram.capacity_gb": 0, "workload.users": 4}},
                    {"name": "with-dram", "set": {"tiers.dram.capacity_gb": float(gb(4)),
                                                  "workload.users": 6}}]}
    path = tmp / "pair.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def recompute(values: list[float]) -> dict[str, float]:
    """Mean, min, max, sample stdev and CV, written out here apart from the module's."""
    n = len(values)
    mean = sum(values) / n
    stdev = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {"mean": mean, "min": min(values), "max": max(values), "stdev": stdev,
            "cv": 0.0 if min(values) == max(values) else stdev / mean}


def test_two_options_two_trials_in_one_job(tmp_path: Path) -> None:
    proc, _ = mpirun(2, "suite", str(suite_file(tmp_path)), *MINI, "--results-dir", str(tmp_path / "res"),
                     "--cache-dir", str(tmp_path / "cache" / "{rank}"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "res" / "pair"
    doc = json.loads((out / "suite.json").read_text())
    assert doc["complete"] and doc["rules"]["pass"] and doc["world_size"] == 2
    assert doc["runs_planned"] == doc["runs_done"] == 4
    pids = set()
    for option, users in (("storage-only", 4), ("with-dram", 6)):
        summaries = []
        for trial in (1, 2):
            run_dir = out / f"{option}-trial{trial}"
            summary = json.loads((run_dir / "summary.json").read_text())
            with h5py.File(run_dir / "result.h5", "r") as f:
                pids.add(tuple(json.loads(e)["pid"] for e in f["ranks/environment"][()]))
                assert yaml.safe_load(f.attrs["config_yaml"])["workload"]["users"] == users
            assert summary["complete"] and summary["world_size"] == 2
            assert summary["requests_completed"] == 2 * REQUESTS
            summaries.append(summary)
        o = doc["options"][option]
        assert [t["trial"] for t in o["trials"]] == [1, 2]
        assert [t["run_dir"] for t in o["trials"]] == [str(out / f"{option}-trial{t}") for t in (1, 2)]
        # the aggregates equal those recomputed from the two summaries
        for name, path in (("storage_throughput_tokens_per_s", ("storage_throughput_tokens_per_s",)),
                           ("storage_throughput_gbps", ("storage_throughput_gbps",)),
                           ("requests_per_s", ("requests_per_s",)),
                           ("storage_write_gbps", ("tiers", "storage", "write_gbps")),
                           ("request_e2e_p95_ms", ("latency_ms", "group_e2e", "p95")),
                           ("request_e2e_p99_ms", ("latency_ms", "group_e2e", "p99"))):
            values = []
            for s in summaries:
                for key in path:
                    s = s[key]
                values.append(s)
            assert [t["figures"][name] for t in o["trials"]] == values
            agg = o["aggregate"][name]
            assert agg["n"] == 2
            for stat, value in recompute(values).items():
                assert agg[stat] == pytest.approx(value, rel=1e-12, abs=1e-12), (option, name, stat)
            if name.endswith("_ms"):
                assert o["worst_trial"][name] == {"value": max(values),
                                                  "trial": 1 + values.index(max(values))}
        tokens_cv = o["aggregate"]["storage_throughput_tokens_per_s"]["cv"]
        gbps_cv = o["aggregate"]["storage_throughput_gbps"]["cv"]
        assert o["stable"] == (max(tokens_cv, gbps_cv) <= doc["cv_threshold"])
    # one MPI job: the same two processes ran all four runs
    assert len(pids) == 1 and len(next(iter(pids))) == 2
    # the runs as a sheet too (export): one row per run, in the suite's order
    if (out / "suite.xlsx").exists():
        import openpyxl
        rows = list(openpyxl.load_workbook(out / "suite.xlsx")["runs"].values)
    else:
        rows = [r.split(",") for r in (out / "suite.csv").read_text().splitlines()]
    col = list(rows[0]).index("run_name")
    assert [r[col] for r in rows[1:]] == [f"{o}-trial{t}" for o in ("storage-only", "with-dram")
                                          for t in (1, 2)]
