"""Open loop: latency is measured from the intended arrival, so overload shows as queueing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# a device with a fixed 20 ms per operation, one at a time: about 1-2 requests per second
SLOW_DEVICE = ["--model", "tiny-1b", "--gpu-mem-gb", "0", "--cpu-mem-gb", "0",
               "--storage-capacity-gb", "100", "--set", "tiers.storage.kind=null",
               "--set", "tiers.storage.latency_us=20000", "--io-depth", "1", "--users", "8"]


def run(tmp: Path, name: str, rate: float) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "mpi_kvbench", *SLOW_DEVICE, "--request-rate", str(rate),
         "--duration", "6", "--results-dir", str(tmp), "--run-name", name],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads((tmp / name / "summary.json").read_text())


def test_queueing_grows_when_offered_load_exceeds_the_device(tmp_path: Path) -> None:
    light = run(tmp_path, "light", 0.3)
    heavy = run(tmp_path, "heavy", 30)
    assert light["requests_completed"] >= 1 and heavy["requests_completed"] >= 2
    lq = light["latency_ms"]["request_queue"]["p50"]
    hq = heavy["latency_ms"]["request_queue"]["p50"]
    # under overload the backlog grows for the whole run: the median request waited
    # seconds; at a light load it hardly waits
    assert hq > 1000
    assert hq > 5 * max(lq, 100.0)
    assert heavy["latency_ms"]["request_e2e"]["p50"] > light["latency_ms"]["request_e2e"]["p50"]
    # nothing but the null tier's injected latency moved: no bytes were really written
    assert heavy["tiers"]["storage"]["write_ops"] > 0
