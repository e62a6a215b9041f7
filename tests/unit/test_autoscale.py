"""Autoscaling: the search against predicates whose answer is known exactly, then a real
QoS autoscale on a null tier with an injected latency, whose answer is worked out by hand.

The device of the real one: a null storage tier that takes ``LATENCY_MS`` per operation,
one operation at a time (``--io-depth 1``), behind a server that takes one request at a
time (``engine.max_batch=1``). Each request of the Mooncake trace below is one 512-token
block, one chunk: one write, so a request's service time is one operation. Requests are
``GAP_MS`` apart in the trace, ``GAP_MS / speedup`` apart in the run: arrivals are
regular, not random, so a request waits for nobody while the gap is longer than the
service and the queue grows by (service - gap) per request once it is shorter. The SLO,
interactive P95 <= ``TARGET_MS`` over 20 requests, passes while ``speedup <= GAP_MS /
LATENCY_MS`` = 5.66 and fails clearly above: the search from speedup 2 doubles to 4
(gap 71 ms against 50 ms of service) and 8 (35 ms: the queue grows 15 ms or more per
request, the P95 request waits 250 ms or more), and the bracket [4, 8] is the answer at
the resolution asked. The loads tried sit 1.4 times either side of the boundary, so a
loaded machine (later wake-ups, longer service) does not move the answer.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from mpi_kvbench.autoscale import Point, Search
from mpi_kvbench.errors import ConfigError


def run_search(search: Search, measure) -> list[float]:
    order = []
    while (load := search.next_load()) is not None:
        order.append(load)
        verdict, tput = measure(load)
        search.record(Point(load, verdict, tput, {}))
    return order


@pytest.mark.parametrize("answer", [1, 5, 37, 63, 64, 100])
def test_qos_finds_the_largest_passing_whole_load(answer: int) -> None:
    s = Search("qos", 1, 100, 1, integer=True)
    order = run_search(s, lambda x: ("PASS" if x <= answer else "FAIL", 0.0))
    assert s.found() == answer
    lo, hi = s.bracket()
    assert lo == answer and hi == (None if answer == 100 else answer + 1)
    # doubling to the first failure, then bisection: about 2 log2(answer) runs, no repeats
    assert len(order) == len(set(order)) <= 2 * math.ceil(math.log2(max(answer, 2))) + 2


def test_qos_goes_down_when_even_the_start_fails() -> None:
    s = Search("qos", 64, 1024, 1, integer=True)
    order = run_search(s, lambda x: ("PASS" if x <= 10 else "FAIL", 0.0))
    assert order[:4] == [64, 32, 16, 8] and s.found() == 10 and s.bracket() == (10, 11)


def test_qos_fractional_loads_stop_at_the_resolution() -> None:
    s = Search("qos", 1.0, 100.0, 0.25)
    run_search(s, lambda x: ("PASS" if x <= 7.3 else "FAIL", 0.0))
    lo, hi = s.bracket()
    assert lo <= 7.3 < hi and hi - lo <= 0.25 and s.found() == lo


def test_not_enough_samples_is_not_a_pass() -> None:
    s = Search("qos", 1, 8, 1, integer=True)
    run_search(s, lambda x: ("NOT ENOUGH SAMPLES" if x > 2 else "PASS", 0.0))
    assert s.found() == 2


def test_capacity_finds_the_knee() -> None:
    # throughput grows linearly to 40 users, then stays: the knee is the smallest load
    # within 5% of the plateau, 40 / 1.05 = 38.1 -> 39
    s = Search("capacity", 1, 1024, 1, margin=0.05, integer=True)
    order = run_search(s, lambda x: ("PASS", 100.0 * min(x, 40)))
    assert order[:7] == [1, 2, 4, 8, 16, 32, 64]
    assert s.found() == 39 and s.bracket() == (38, 39)


def test_capacity_still_growing_at_the_limit() -> None:
    s = Search("capacity", 1, 16, 1, integer=True)
    run_search(s, lambda x: ("PASS", float(x)))
    assert s.found() == 16 and "limit" in s.why


@pytest.mark.parametrize("kw", [dict(start=0), dict(start=8, limit=4), dict(resolution=0),
                                dict(start=1.5, integer=True)])
def test_bad_searches_are_refused(kw: dict) -> None:
    args = {"mode": "qos", "start": 1, "limit": 8, "resolution": 1, "integer": False, **kw}
    with pytest.raises(ConfigError):
        Search(**args)


LATENCY_MS = 50
GAP_MS = 283
REQUESTS = 20
TARGET_MS = 200


def test_qos_autoscale_on_a_slow_null_device(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps({"timestamp": i * GAP_MS, "input_length": 512,
                                         "output_length": 8, "hash_ids": [1000 + i]}) + "\n"
                             for i in range(REQUESTS)))
    proc = subprocess.run(
        [sys.executable, "-m", "mpi_kvbench", "autoscale", "--mode", "qos",
         "--key", "workload.speedup", "--start", "2", "--limit", "64", "--resolution", "4",
         "--workload", "mooncake", "--trace", str(trace), "--model", "tiny-1b",
         "--chunk-tokens", "512", "--gpu-mem-gb", "0", "--cpu-mem-gb", "0",
         "--storage-capacity-gb", "100", "--set", "tiers.storage.kind=null",
         "--set", f"tiers.storage.latency_us={LATENCY_MS * 1000}", "--io-depth", "1",
         "--set", "engine.max_batch=1", "--set", "workload.qos_mix={interactive: 1, responsive: 0, batch: 0}",
         "--set", f"qos.targets_ms.interactive={{p95: {TARGET_MS}}}", "--duration", "0",
         "--results-dir", str(tmp_path / "res"), "--suite-name", "a"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "res" / "a" / "autoscale.json").read_text())
    boundary = GAP_MS / LATENCY_MS                       # 5.66: the gap equals the service
    doublings = [2 * 2**k for k in range(6) if 2 * 2**k <= 64]
    want = max(x for x in doublings if x <= boundary)    # 4
    assert doc["order"] == [2, 4, 8] and doc["found"] == want and doc["bracket"] == [want, 2 * want]
    curve = {c["load"]: c for c in doc["curve"]}
    assert [curve[x]["verdict"] for x in (2, 4, 8)] == ["PASS", "PASS", "FAIL"]
    for c in curve.values():   # every step served the whole trace, one write each
        summary = json.loads((Path(c["run_dir"]) / "summary.json").read_text())
        assert summary["requests_completed"] == REQUESTS
        assert summary["tiers"]["storage"]["write_ops"] == REQUESTS
    assert curve[8]["request_e2e_p95_ms"] > TARGET_MS >= curve[4]["request_e2e_p95_ms"]
