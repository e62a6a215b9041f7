"""SLO verdicts: PASS/FAIL per QoS class against targets, from merged histograms."""

from __future__ import annotations

import numpy as np

from mpi_kvbench.metrics import Histogram
from mpi_kvbench.mpi.reduce import Collected
from mpi_kvbench.results.summary import storage_health


def collected(samples_ms: dict[str, np.ndarray]) -> Collected:
    names, rows, mins, maxs, sums = [], [], [], [], []
    for cls, ms in samples_ms.items():
        h = Histogram()
        h.record_many((ms * 1e6).astype(np.int64))
        names.append(f"group.qos.{cls}.e2e")
        rows.append(h.counts)
        mins.append(h.min_ns)
        maxs.append(h.max_ns)
        sums.append(h.sum_ns)
    merged = np.stack(rows)
    mins, maxs, sums = np.array(mins), np.array(maxs), np.array(sums)
    return Collected(
        hist_names=names, merged=merged, merged_min_ns=mins, merged_max_ns=maxs,
        merged_sum_ns=sums, per_rank=merged[None], per_rank_min_ns=mins[None],
        per_rank_max_ns=maxs[None], per_rank_sum_ns=sums[None], counter_names=[],
        counters=np.zeros((1, 0), np.int64), series_names=[], series=np.zeros((1, 0, 0)),
        elapsed_ns=np.array([10**9]), env=[{"rank": 0}])


def test_verdict_flips_when_a_target_drops_below_the_measured_percentile() -> None:
    rng = np.random.default_rng(3)
    data = collected({"batch": rng.uniform(10, 100, 5000)})
    measured_p95 = storage_health(data, "e2e", {"batch": {"p95": 1e9}})["classes"]["batch"][
        "checks"]["p95"]["measured_ms"]
    assert 90 < measured_p95 < 97            # uniform(10, 100): P95 is about 95.5 ms
    above = storage_health(data, "e2e", {"batch": {"p95": measured_p95 * 1.02}})
    below = storage_health(data, "e2e", {"batch": {"p95": measured_p95 * 0.98}})
    assert above["verdict"] == "PASS" and above["classes"]["batch"]["verdict"] == "PASS"
    assert below["verdict"] == "FAIL" and below["classes"]["batch"]["checks"]["p95"]["pass"] is False


def test_one_failing_class_fails_the_run_and_rare_percentiles_are_not_judged() -> None:
    rng = np.random.default_rng(4)
    data = collected({"interactive": rng.uniform(1, 10, 50), "batch": rng.uniform(1, 10, 50)})
    health = storage_health(data, "e2e", {"interactive": {"p95": 5, "p9999": 1},
                                          "batch": {"p95": 500}})
    assert health["classes"]["interactive"]["verdict"] == "FAIL"
    assert health["classes"]["batch"]["verdict"] == "PASS"
    assert health["verdict"] == "FAIL"
    # 50 samples cannot support a P99.99: reported, not judged
    assert health["classes"]["interactive"]["checks"]["p9999"]["pass"] is None


def test_classes_without_requests_are_left_out() -> None:
    data = collected({"batch": np.full(100, 5.0)})
    health = storage_health(data, "e2e", {"batch": {"p95": 10}, "interactive": {"p95": 1}})
    assert set(health["classes"]) == {"batch"} and health["verdict"] == "PASS"


def test_a_percentile_is_judged_from_exactly_100_over_100_minus_q_samples() -> None:
    """P95 from 20 samples, P99 from 100, P99.9 from 1,000, P99.99 from 10,000 (what the
    console says), one fewer is not enough: the thresholds as whole numbers, not as
    floating-point quotients (100 / (100 - 99.9) is 1000.0000000000568)."""
    for key, need in (("p95", 20), ("p99", 100), ("p999", 1000), ("p9999", 10_000)):
        for n, judged in ((need - 1, False), (need, True)):
            data = collected({"batch": np.full(n, 5.0)})
            check = storage_health(data, "e2e", {"batch": {key: 10}})["classes"]["batch"][
                "checks"][key]
            assert (check["pass"] is not None) == judged, (key, n)
