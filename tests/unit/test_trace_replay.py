"""A trace replayed end to end: the hit ratio the run reports is the one the trace promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mpi_kvbench.workloads.mooncake import prefix_reuse

RECORDS = [(0, 1500, [1, 2, 3]), (100, 1200, [1, 2, 9]), (200, 2048, [1, 2, 3, 4]),
           (250, 700, [5, 6]), (300, 3000, [1, 2, 3, 4, 7, 8])]


def test_reported_hit_ratio_equals_the_trace_prefix_reuse(tmp_path: Path) -> None:
    """An unbounded cache (a null tier with room for everything) must hit exactly the
    reuse the hash ids promise, computed without the chunk-key code."""
    lines = [json.dumps({"timestamp": t, "input_length": n, "output_length": 16, "hash_ids": h})
             for t, n, h in RECORDS]
    lines.insert(2, '{"timestamp": 150, "input_length": ')      # a broken line, skipped
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "res"
    proc = subprocess.run(
        [sys.executable, "-m", "mpi_kvbench", "--workload", "mooncake", "--trace", str(path),
         "--model", "tiny-1b", "--chunk-tokens", "128", "--duration", "0", "--gpu-mem-gb", "0",
         "--cpu-mem-gb", "0", "--storage-capacity-gb", "1000", "--set", "tiers.storage.kind=null",
         "--trace-speedup", "1000", "--results-dir", str(out), "--run-name", "mc"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "mc" / "summary.json").read_text())
    assert summary["requests_completed"] == 5
    expected = prefix_reuse([(n, h) for _, n, h in RECORDS], 128)
    assert summary["prefix_hit_ratio"] == pytest.approx(expected, abs=1e-6)
    assert summary["prefix_hit_ratio"] > 0.3
