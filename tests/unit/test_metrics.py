"""Latency histograms: bucket layout, exact merging, percentiles, vectorised bucketing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpi_kvbench import metrics
from mpi_kvbench.metrics import EDGES, N_BUCKETS, OVERFLOW, Histogram, bucket_index, bucket_indices

US, S = 1_000, 1_000_000_000


def test_edges_are_strictly_increasing_and_start_at_zero() -> None:
    assert EDGES.shape == (N_BUCKETS + 1,)
    assert EDGES[0] == 0
    assert np.all(np.diff(EDGES) > 0)
    assert EDGES[OVERFLOW] == 2**37                      # end of the regular buckets (137 s)


def test_relative_width_at_most_one_percent_from_1us_to_100s() -> None:
    lo, hi = EDGES[:-1], EDGES[1:]
    # every bucket that holds any value in [1 us, 100 s]
    sel = (hi > US) & (lo <= 100 * S)
    assert sel.sum() > 2000
    width = (hi - lo)[sel] / np.maximum(lo[sel], US)
    assert width.max() <= 0.01
    # the whole range is covered by regular buckets
    assert EDGES[OVERFLOW] > 100 * S


def random_values(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.concatenate([
        rng.integers(0, 2**38, n),
        2 ** rng.integers(0, 38, n),                     # powers of two: edges
        2 ** rng.integers(1, 38, n) - 1,                 # just below them
        EDGES[rng.integers(0, len(EDGES), n)],           # every kind of edge
        EDGES[rng.integers(1, len(EDGES), n)] - 1,
        rng.lognormal(np.log(1e6), 3, n).astype(np.int64),
    ]).astype(np.int64)


def test_every_value_lands_in_the_bucket_that_contains_it() -> None:
    values = random_values(np.random.default_rng(1), 5000)
    for v in values:
        i = bucket_index(int(v))
        if v >= 2**37:
            assert i == OVERFLOW
        else:
            assert EDGES[i] <= v < EDGES[i + 1], (v, i)


def test_small_and_negative_values() -> None:
    assert bucket_index(0) == 0
    assert bucket_index(-5) == 0
    assert [bucket_index(v) for v in (7, 8, 1023, 1024)] == [0, 1, 127, 128]
    assert bucket_index(2**37 - 1) == OVERFLOW - 1
    assert bucket_index(2**37) == OVERFLOW
    assert bucket_index(10**15) == OVERFLOW


def test_vectorised_equals_scalar() -> None:
    values = np.concatenate([
        random_values(np.random.default_rng(2), 20000),
        np.arange(-10, 5000),
        [2**37 - 1, 2**37, 2**37 + 1, 138 * S, 10**12, 2**53 + 1, 2**62, 2**63 - 1],
        np.array([-(2**40), -1]),
    ]).astype(np.int64)
    vec = bucket_indices(values)
    assert vec.dtype.kind in "iu"
    assert vec.tolist() == [bucket_index(int(v)) for v in values]


def test_record_many_equals_record() -> None:
    values = random_values(np.random.default_rng(3), 2000)
    a, b = Histogram(), Histogram()
    for v in values:
        a.record(int(v))
    b.record_many(values)
    assert np.array_equal(a.counts, b.counts)
    assert (a.min_ns, a.max_ns, a.sum_ns) == (b.min_ns, b.max_ns, b.sum_ns)
    b.record_many(np.array([], dtype=np.int64))
    assert np.array_equal(a.counts, b.counts) and b.count == len(values)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**38), max_size=60), st.lists(st.integers(0, 2**38), max_size=60))
def test_merging_equals_recording_everything_in_one(xs: list[int], ys: list[int]) -> None:
    a, b, both = Histogram(), Histogram(), Histogram()
    for v in xs:
        a.record(v)
        both.record(v)
    for v in ys:
        b.record(v)
        both.record(v)
    m = a + b
    assert np.array_equal(m.counts, both.counts)
    assert m.count == len(xs) + len(ys)
    assert m.sum_ns == sum(xs) + sum(ys)
    if xs or ys:
        assert m.min_ns == min(xs + ys) and m.max_ns == max(xs + ys)
    # merging does not disturb its inputs
    assert a.count == len(xs) and b.count == len(ys)


def _samples(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if kind == "lognormal":
        x = rng.lognormal(np.log(500 * US), 1.5, n)
    elif kind == "bimodal":
        x = np.concatenate([rng.normal(50 * US, 5 * US, n // 2), rng.normal(20e6, 2e6, n - n // 2)])
    elif kind == "pareto":
        x = (rng.pareto(1.5, n) + 1) * 10 * US
    else:
        x = rng.uniform(1 * US, 100 * S, n)
    return np.clip(x, US, 100 * S).astype(np.int64)   # the layout's accurate range


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["lognormal", "bimodal", "pareto", "uniform"])
@pytest.mark.parametrize("n", [1, 7, 1000, 20011])
def test_percentiles_within_one_percent_of_numpy(kind: str, seed: int, n: int) -> None:
    x = _samples(kind, np.random.default_rng(seed), n)
    h = Histogram()
    h.record_many(x)
    for q in (50, 95, 99, 99.9):
        want = float(np.percentile(x, q, method="inverted_cdf"))
        got = h.percentile(q)
        assert abs(got - want) <= 0.01 * want, (q, got, want)


def test_percentile_of_empty_histogram_is_nan_and_clamped_to_min_max() -> None:
    assert np.isnan(Histogram().percentile(50))
    h = Histogram()
    h.record(123_456)
    for q in (0, 50, 100):
        assert h.percentile(q) == 123_456                # one sample: itself, not a bucket middle
    h = Histogram()
    h.record(200 * S)                                    # overflow bucket: clamped to the max
    assert h.percentile(99) == 200 * S


def test_percentile_function_on_merged_counts() -> None:
    rng = np.random.default_rng(9)
    parts = [rng.lognormal(np.log(2e6), 1, 3000).astype(np.int64) + US for _ in range(4)]
    hs = []
    for p in parts:
        h = Histogram()
        h.record_many(p)
        hs.append(h)
    counts = sum(h.counts for h in hs)
    pooled = np.concatenate(parts)
    for q in (50, 99, 99.9):
        want = float(np.percentile(pooled, q, method="inverted_cdf"))
        assert abs(metrics.percentile(counts, q) - want) <= 0.01 * want
        # the max of per-rank percentiles is not the pooled one in general; ours is pooled
        merged = hs[0] + hs[1] + hs[2] + hs[3]
        assert merged.percentile(q) == pytest.approx(
            metrics.percentile(counts, q, merged.min_ns, merged.max_ns))


def test_metrics_counters_and_series() -> None:
    m = metrics.Metrics()
    m.add("x")
    m.add("x", 4)
    assert m.counters["x"] == 5
    m.tick("b", 0.5, 10)
    m.tick("b", 0.9, 5)
    m.tick("b", 130.2, 1)                                # grows past the first allocation
    assert m.series["b"][0] == 15 and m.series["b"][130] == 1 and m.series["b"].sum() == 16
    m.peak("q", 3.1, 7)
    m.peak("q", 3.7, 2)
    assert m.series["q"][3] == 7
    m.record("lat", 5000)
    m.record("lat", 7000)
    assert m.hist["lat"].count == 2 and m.hist["lat"].sum_ns == 12000


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(US, 100 * S), min_size=1, max_size=300),
       st.sampled_from([50, 95, 99, 99.9, 99.99, 0, 100, 33.3]))
def test_percentile_of_any_samples(xs: list[int], q: float) -> None:
    h = Histogram()
    for v in xs:
        h.record(v)
    want = float(np.percentile(np.array(xs), q, method="inverted_cdf"))
    assert abs(h.percentile(q) - want) <= 0.01 * want


@pytest.mark.parametrize("n", [0, 1, 7])
def test_record_zeros_is_record_of_zero_n_times(n: int) -> None:
    fast, slow = Histogram(), Histogram()
    fast.record(5_000)
    slow.record(5_000)
    fast.record_zeros(n)
    for _ in range(n):
        slow.record(0)
    assert np.array_equal(fast.counts, slow.counts)
    assert (fast.min_ns, fast.max_ns, fast.sum_ns) == (slow.min_ns, slow.max_ns, slow.sum_ns)
