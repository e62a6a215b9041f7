"""Prefix routing end to end: four ranks under mpirun replay a Mooncake trace whose
requests come in prefix families, and the hit ratio the run reports is the one the
hash ids promise for the groups the router chose (an unbounded cache per group)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from mpi_kvbench.registry import WORKLOADS
from mpi_kvbench.routing import Router
from mpi_kvbench.workloads.mooncake import prefix_reuse

MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="no mpirun: pip install -e '.[mpi]'")
CHUNK = 256


def family_records(families: int = 8, per_family: int = 5) -> list[dict]:
    """Each family: 3 shared 512-token blocks, then 2 of the request's own; shuffled rounds."""
    rng = random.Random(9)
    order = []
    for _ in range(per_family):
        order += rng.sample(range(families), families)
    return [{"timestamp": 5 * t, "input_length": 2500, "output_length": 8,
             "hash_ids": [100 * f, 100 * f + 1, 100 * f + 2, 10_000 + 2 * t, 10_001 + 2 * t]}
            for t, f in enumerate(order)]


def expected_hit_ratio(records: list[dict], groups: list[int]) -> float:
    """From the hash ids alone (``prefix_reuse`` per group), not from the chunk-key code."""
    hits = lookups = 0
    for g in set(groups):
        mine = [r for r, h in zip(records, groups, strict=True) if h == g]
        chunks = sum(r["input_length"] // CHUNK for r in mine)
        hits += prefix_reuse(mine, CHUNK) * chunks
        lookups += chunks
    return hits / lookups


def test_prefix_routing_reports_the_hit_ratio_of_its_groups(tmp_path: Path) -> None:
    records = family_records()
    trace = tmp_path / "mc.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in records))
    params = WORKLOADS.params("mooncake", {"trace": str(trace)}, "workload")
    reqs = list(WORKLOADS.load("mooncake")(params, 42).requests())
    router = Router("prefix", 4, CHUNK)
    groups = [router.route(r) for r in reqs]
    expected = expected_hit_ratio(records, groups)
    one_group = prefix_reuse(records, CHUNK)
    assert expected == pytest.approx(one_group)            # each family stays on one group
    assert expected_hit_ratio(records, [i % 4 for i in range(len(records))]) < 0.7 * one_group

    proc = subprocess.run(
        [MPIRUN, "-n", "4", sys.executable, "-m", "mpi_kvbench", "--workload", "mooncake",
         "--trace", str(trace), "--duration", "0", "--trace-speedup", "1000000",
         "--set", "workload.routing=prefix", "--model", "tiny-1b", "--chunk-tokens", str(CHUNK),
         "--gpu-mem-gb", "0", "--cpu-mem-gb", "0", "--storage-capacity-gb", "1000",
         "--set", "tiers.storage.kind=null", "--io-depth", "1",
         "--results-dir", str(tmp_path / "res"), "--run-name", "prefix"],
        cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "res" / "prefix"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests_completed"] == len(records)
    assert summary["prefix_hit_ratio"] == pytest.approx(expected, abs=1e-6)
    with h5py.File(out / "result.h5", "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f["counters/names"][()]]
        done = f["counters/per_rank"][()][:, names.index("requests_completed")]
        assert json.loads(f.attrs["workload_info"])["routing"] == "prefix"
    assert list(done) == [groups.count(g) for g in range(4)]
