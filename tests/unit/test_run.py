"""A complete short run on one rank (`python -m mpi_kvbench` as a subprocess): the result
files exist, agree with each other, and the run cleans up after itself.

The run is bounded by a request count, not by seconds, so a loaded machine makes it
slower but never smaller: the same requests, the same operations."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

TIERS = ("hbm", "dram", "storage")
PCTS = {"p50": 50, "p95": 95, "p99": 99, "p999": 99.9, "p9999": 99.99}
OBJ = 256 * 24_576    # tiny-1b, 256-token chunks: 6 MiB objects
REQUESTS = 6          # enough to fill HBM and DRAM, demote to storage and read back from all three
# tiers of a few objects, so the run is a few dozen storage operations, eight at a time: on a
# disk another job keeps busy one can take a good part of a second
ARGS = ["--duration", "0", "--max-requests", str(REQUESTS),
        "--model", "tiny-1b", "--chunk-tokens", "256", "--io-depth", "8",
        "--gpu-mem-gb", str(3 * OBJ / 1e9), "--cpu-mem-gb", str(6 * OBJ / 1e9),
        "--storage-capacity-gb", str(40 * OBJ / 1e9),
        "--set", "workload.users=3",
        "--set", "workload.templates={chatbot: 1, coding: 0, document: 0}",
        "--set", "io.verify=true"]


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpi_kvbench", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)   # a guard against hangs


def strings(ds) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in ds[()]]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Run:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.results = root / "results"
        self.cache = root / "cache"
        self.proc = cli(root, "--results-dir", str(self.results), "--run-name", "r",
                        "--cache-dir", str(self.cache), *ARGS)
        self.dir = self.results / "r"
        assert self.proc.returncode == 0, self.proc.stderr[-3000:]
        self.summary = json.loads((self.dir / "summary.json").read_text())
        with h5py.File(self.dir / "result.h5", "r") as f:
            self.counter_names = strings(f["counters/names"])
            self.per_rank = f["counters/per_rank"][()]
            self.counters_merged = f["counters/merged"][()]
            self.hist_names = strings(f["histograms/names"])
            self.merged = f["histograms/merged"][()]
            self.hist_per_rank = f["histograms/per_rank"][()]
            self.hmin = f["histograms/merged_min_ns"][()]
            self.hmax = f["histograms/merged_max_ns"][()]
            self.edges = f["histograms/bucket_edges_ns"][()]
            self.elapsed = f["ranks/elapsed_ns"][()]
            self.env = [json.loads(e) for e in strings(f["ranks/environment"])]
            self.series_names = strings(f["timeseries/names"])
            self.series = f["timeseries/per_rank"][()]
            self.attrs = dict(f.attrs)

    def counter(self, name: str) -> int:
        if name not in self.counter_names:
            return 0
        return int(self.per_rank[:, self.counter_names.index(name)].sum())

    def hist_rows(self, prefix: str) -> list[int]:
        return [i for i, n in enumerate(self.hist_names) if n.startswith(prefix)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    return Run(tmp_path_factory.mktemp("run"))


def test_the_run_writes_both_files_and_nothing_else(run: Run) -> None:
    assert sorted(p.name for p in run.dir.iterdir()) == ["result.h5", "summary.json"]
    assert "result:" in run.proc.stdout
    assert run.summary["complete"] is True and run.summary["errors"] == []


def test_summary_has_the_documented_keys(run: Run) -> None:
    s = run.summary
    for key in ("world_size", "tensor_parallel", "replicas", "nodes", "model",
                "bytes_per_token_per_rank", "object_bytes", "duration_s", "requests_completed",
                "requests_per_s", "prefix_hit_ratio", "o_direct", "hbm_emulated",
                "potential_caching", "storage_throughput_gbps", "tiers", "demotions",
                "latency_ms", "qos", "cpu", "verify", "complete", "errors"):
        assert key in s, key
    assert set(s["tiers"]) == set(TIERS)
    for t in TIERS:
        tier = s["tiers"][t]
        for key in ("read_bytes", "write_bytes", "read_ops", "write_ops", "read_gbps",
                    "write_gbps", "read_gbps_per_rank", "write_gbps_per_rank", "busy_s",
                    "gbps_busy", "chunk_hits", "tokens_from_cache_per_s", "latency_ms"):
            assert key in tier, (t, key)
        for op in ("read", "write"):
            assert set(tier["latency_ms"][op]) == set(PCTS) | {"mean"}
    assert set(s["demotions"]) >= {"count", "bytes", "latency_ms"}
    assert set(s["demotions"]["latency_ms"]) == set(PCTS)
    for key in ("request_e2e", "request_queue", "prefill_storage", "group_e2e",
                "group_prefill_storage"):
        assert set(s["latency_ms"][key]) == set(PCTS)
    assert set(s["cpu"]) >= {"io_path_s_per_gb", "generation_s_per_gb", "payload_stalls"}
    assert set(s["verify"]) == {"enabled", "checked", "mismatches", "stamps_checked",
                                "stamp_mismatches", "slabs_truncated", "verdict"}
    for key in ("read_bytes", "write_bytes", "tool_read_bytes", "tool_write_bytes", "read_ratio",
                "write_ratio", "ratio", "warning", "nodes", "n/a"):
        assert key in s["device_io"], key
    assert s["storage_memory_backed"] is None


def test_facts_of_the_run(run: Run) -> None:
    s = run.summary
    assert (s["world_size"], s["tensor_parallel"], s["replicas"], s["nodes"]) == (1, 1, 1, 1)
    assert s["model"] == "tiny-1b"
    assert s["bytes_per_token_per_rank"] == 24_576 and s["object_bytes"] == OBJ
    assert 0 < s["duration_s"] < 120        # ends at the last completion; generous under load
    assert s["duration_s"] == pytest.approx(run.elapsed.max() / 1e9, abs=1e-3)
    assert s["requests_completed"] == run.counter("requests_completed") == REQUESTS
    assert s["requests_per_s"] == pytest.approx(s["requests_completed"] / s["duration_s"],
                                                rel=1e-3, abs=1e-3)
    storage_env = [t for e in run.env for t in e["tiers"] if t["level"] == "storage"]
    assert len(storage_env) == 1
    assert s["o_direct"] is storage_env[0]["o_direct"]
    if storage_env[0]["fs_type"] in ("ext4", "xfs", "btrfs"):
        assert s["o_direct"] is True
    if not os.path.exists("/proc/driver/nvidia"):
        assert s["hbm_emulated"] is True
    assert run.attrs["world_size"] == 1 and run.attrs["model"] == "tiny-1b"
    assert json.loads(run.attrs["summary"]) == s


def test_counters_in_the_file_equal_the_summary(run: Run) -> None:
    s = run.summary
    assert np.array_equal(run.counters_merged, run.per_rank.sum(axis=0))
    total = 0
    for t in TIERS:
        for op in ("read", "write"):
            nbytes = run.counter(f"{t}.{op}_bytes")
            ops = run.counter(f"{t}.{op}_ops")
            assert s["tiers"][t][f"{op}_bytes"] == nbytes
            assert s["tiers"][t][f"{op}_ops"] == ops
            assert nbytes == ops * OBJ                     # every operation is one object
            total += ops
    assert total > 0
    assert s["tiers"]["storage"]["write_ops"] > 0          # the waterfall reached storage
    lookups = run.counter("chunk_lookups")
    assert s["chunk_lookups"] == lookups
    assert s["prefix_hit_ratio"] == pytest.approx(run.counter("chunk_hits") / lookups, abs=1e-6)
    assert sum(s["tiers"][t]["chunk_hits"] for t in TIERS) == run.counter("chunk_hits")
    assert s["verify"]["checked"] == run.counter("verify_checked") > 0
    assert s["verify"]["mismatches"] == 0
    reads = sum(run.counter(f"{t}.read_ops") for t in TIERS)
    assert 0 < s["verify"]["stamps_checked"] == run.counter("stamp_checked") <= reads
    assert s["verify"]["stamp_mismatches"] == s["verify"]["slabs_truncated"] == 0
    assert s["verify"]["verdict"] == "pass"
    for t, flag in (("hbm", "--gpu-mem-gb"), ("dram", "--cpu-mem-gb"), ("storage", "--storage-capacity-gb")):
        asked = int(float(ARGS[ARGS.index(flag) + 1]) * 1e9)     # the config keeps whole bytes
        tier = s["tiers"][t]
        assert tier["capacity_gb_requested"] == round(asked / 1e9, 6)
        assert tier["slots"] == asked // OBJ                    # nothing cut: a few objects each
        assert tier["capacity_gb_used"] == round(asked // OBJ * OBJ / 1e9, 6)


def test_histograms_count_every_operation(run: Run) -> None:
    s = run.summary
    assert np.array_equal(run.merged, run.hist_per_rank.sum(axis=0))
    assert run.edges.shape[0] == run.merged.shape[1] + 1
    for t in TIERS:
        for op in ("read", "write"):
            rows = run.hist_rows(f"{t}.{op}.")
            assert int(run.merged[rows].sum()) == s["tiers"][t][f"{op}_ops"], (t, op)
    rows = run.hist_rows("demotion.")
    assert int(run.merged[rows].sum()) == s["demotions"]["count"] > 0
    assert s["demotions"]["bytes"] == s["demotions"]["count"] * OBJ
    assert s["demotions"]["count"] == run.counter("demotions")
    e2e = run.hist_rows("request.e2e")
    assert int(run.merged[e2e].sum()) == s["requests_completed"]


def pooled_percentile_ms(run: Run, rows: list[int], q: float) -> float | None:
    counts = run.merged[rows].sum(axis=0)
    n = int(counts.sum())
    if n == 0:
        return None
    rank = max(1, math.ceil(q / 100 * n))
    i = int(np.argmax(np.cumsum(counts) >= rank))
    mid = (run.edges[i] + run.edges[i + 1]) / 2
    lo, hi = run.hmin[rows].min(), run.hmax[rows].max()
    return min(max(mid, lo), hi) / 1e6


def test_percentiles_come_from_the_pooled_histograms(run: Run) -> None:
    s = run.summary
    checked = 0
    for t in TIERS:
        for op in ("read", "write"):
            rows = run.hist_rows(f"{t}.{op}.")
            for key, q in PCTS.items():
                want = pooled_percentile_ms(run, rows, q)
                got = s["tiers"][t]["latency_ms"][op][key]
                if want is None:
                    assert got is None
                else:
                    assert got == pytest.approx(want, abs=2e-4), (t, op, key)
                    checked += 1
    assert checked >= 20
    lat = s["tiers"]["storage"]["latency_ms"]["write"]
    assert lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["p999"] <= lat["p9999"]


def test_rates_are_bytes_over_the_window(run: Run) -> None:
    s = run.summary
    d = s["duration_s"]
    for t in TIERS:
        for op in ("read", "write"):
            nbytes = s["tiers"][t][f"{op}_bytes"]
            assert s["tiers"][t][f"{op}_gbps"] * d * 1e9 == pytest.approx(nbytes, rel=1e-3,
                                                                          abs=1e-4 * d * 1e9)
    st = s["tiers"]["storage"]
    assert s["storage_throughput_gbps"] == pytest.approx(
        (st["read_bytes"] + st["write_bytes"]) / d / 1e9, abs=1e-4)


def test_time_series_add_up_to_the_counters(run: Run) -> None:
    for t in TIERS:
        for op in ("read", "write"):
            name = f"{t}.{op}_bytes"
            if run.counter(name):
                row = run.series_names.index(name)
                assert run.series[:, row].sum() == run.counter(name)
    assert run.series.shape[-1] <= math.ceil(run.summary["duration_s"]) + 1


def test_the_cache_directory_is_removed(run: Run) -> None:
    assert not run.cache.exists()
    assert not list(run.results.rglob("*.tmp-*"))


def test_a_second_run_with_the_same_name_is_refused(run: Run) -> None:
    before = {p.name: (digest(p), p.stat().st_mtime_ns) for p in run.dir.iterdir()}
    proc = cli(run.root, "--results-dir", str(run.results), "--run-name", "r",
               "--cache-dir", str(run.cache), *ARGS)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "run_name" in lines[0]
    assert {p.name: (digest(p), p.stat().st_mtime_ns) for p in run.dir.iterdir()} == before
    assert not run.cache.exists()
