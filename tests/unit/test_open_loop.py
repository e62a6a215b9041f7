"""Open loop: latency is measured from the intended arrival, so overload shows as queueing.

The "device" is a null storage tier with an injected latency, one operation at a time
(``--io-depth 1``), behind a server that takes one request at a time
(``engine.max_batch=1``): a request's queueing (``request_queue``, from its intended
arrival to its admission) is the time it waits for the requests before it. The service
time is known (operations x latency, at least; a loaded machine only makes it longer) and
large compared with scheduler noise. Both runs are bounded by a request count, and the
seed fixes the arrival times and every request's operations, so the only thing a loaded
machine changes is how late sleeps wake up: a few milliseconds against hundreds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LATENCY_MS = 30
# 1,024-token chunks of chatbot prompts: each request is a few 30 ms operations, about
# 60-100 ms of service, so the device serves 10-15 requests per second
SLOW_DEVICE = ["--model", "tiny-1b", "--chunk-tokens", "1024", "--gpu-mem-gb", "0",
               "--cpu-mem-gb", "0", "--storage-capacity-gb", "100",
               "--set", "tiers.storage.kind=null",
               "--set", f"tiers.storage.latency_us={LATENCY_MS * 1000}", "--io-depth", "1",
               "--set", "engine.max_batch=1", "--users", "8",
               "--set", "workload.templates={chatbot: 1, coding: 0, document: 0}",
               "--seed", "42", "--duration", "0"]
# (requests per second, requests): arrivals ~400 ms apart against ~80 ms of service; and
# 24 arrivals within ~0.1 s against ~2 s of service
LIGHT = (2.5, 5)
HEAVY = (200.0, 24)


def start(tmp: Path, name: str, load: tuple[float, int]) -> subprocess.Popen:
    rate, requests = load
    return subprocess.Popen(
        [sys.executable, "-m", "mpi_kvbench", *SLOW_DEVICE, "--request-rate", str(rate),
         "--max-requests", str(requests), "--results-dir", str(tmp), "--run-name", name],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, tmp: Path, name: str) -> dict:
    _, err = proc.communicate(timeout=300)   # a guard against hangs
    assert proc.returncode == 0, err
    return json.loads((tmp / name / "summary.json").read_text())


def device_ms(summary: dict) -> float:
    """The least time the device spent: every operation took at least the injected latency."""
    storage = summary["tiers"]["storage"]
    return (storage["read_ops"] + storage["write_ops"]) * LATENCY_MS


def test_queueing_grows_when_offered_load_exceeds_the_device(tmp_path: Path) -> None:
    # both at once: the runs mostly sleep, so neither slows the other's device
    procs = {"light": start(tmp_path, "light", LIGHT), "heavy": start(tmp_path, "heavy", HEAVY)}
    try:
        light, heavy = (finish(procs[n], tmp_path, n) for n in ("light", "heavy"))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert light["requests_completed"] == LIGHT[1] and heavy["requests_completed"] == HEAVY[1]
    lq = light["latency_ms"]["request_queue"]["p50"]
    hq = heavy["latency_ms"]["request_queue"]["p50"]
    # under overload the requests arrive nearly at once and each waits for the ones before
    # it: the median one for about half the device's work (a quarter leaves room). At a
    # light load a request hardly waits: the heavy median is over five times the light one
    # (or five operations' latency, should the light one be shorter than one operation)
    assert hq > device_ms(heavy) / 4
    assert hq > 5 * max(lq, LATENCY_MS)
    assert heavy["latency_ms"]["request_e2e"]["p50"] > light["latency_ms"]["request_e2e"]["p50"]
    # the writes reached the storage tier and were counted, operations and bytes, though the
    # null tier does no I/O: its only cost is the injected latency
    storage = heavy["tiers"]["storage"]
    assert storage["write_ops"] > 0
    assert storage["write_bytes"] == storage["write_ops"] * heavy["object_bytes"]
