"""Latency histograms, counters and a 1-second time series. Free of MPI.

The histogram layout is fixed and identical on every rank (log-linear, as fio and HDR
histograms do), so merging ranks is an exact element-wise sum and percentiles of the
merged counts are the pooled percentiles.

Layout, in nanoseconds: 128 linear buckets of 8 ns cover [0, 1024); above that every
power of two [2^e, 2^(e+1)) is cut into 128 equal buckets, for e = 10 .. 36, so the top
regular bucket ends at 2^37 ns (137 s); one overflow bucket holds anything longer. A
bucket is at most 1/128 (0.78 %) of its lower edge wide from 1 us up, and a percentile
is reported as the middle of its bucket, so it is within 0.4 % of the true sample there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SUB_BITS = 7
SUB = 1 << SUB_BITS                     # buckets per power of two
LINEAR_NS = 1 << 10                     # below this: linear buckets of 8 ns
MIN_EXP, MAX_EXP = 10, 36
N_BUCKETS = SUB + (MAX_EXP - MIN_EXP + 1) * SUB + 1
OVERFLOW = N_BUCKETS - 1


def bucket_index(value_ns: int) -> int:
    v = max(0, int(value_ns))
    if v < LINEAR_NS:
        return v >> 3
    e = v.bit_length() - 1
    if e > MAX_EXP:
        return OVERFLOW
    return SUB + (e - MIN_EXP) * SUB + ((v >> (e - SUB_BITS)) & (SUB - 1))


def bucket_indices(values_ns: np.ndarray) -> np.ndarray:
    """Vectorised ``bucket_index``."""
    v = np.maximum(np.asarray(values_ns, dtype=np.int64), 0)
    e = np.frexp(np.maximum(v, 1).astype(np.float64))[1].astype(np.int64) - 1
    sub = (v >> np.maximum(e - SUB_BITS, 0)) & (SUB - 1)
    out = SUB + (e - MIN_EXP) * SUB + sub
    out = np.where(v < LINEAR_NS, v >> 3, out)
    return np.where(e > MAX_EXP, OVERFLOW, out)


def bucket_edges() -> np.ndarray:
    """Lower edges of every bucket (the overflow bucket's is 2^37, the end of the regular
    ones) plus a nominal end of the overflow bucket, 2^38 (ns): N_BUCKETS + 1 values."""
    linear = np.arange(SUB, dtype=np.int64) * 8
    logs = [(1 << e) + np.arange(SUB, dtype=np.int64) * (1 << (e - SUB_BITS))
            for e in range(MIN_EXP, MAX_EXP + 1)]
    top = np.array([1 << (MAX_EXP + 1)], dtype=np.int64)
    return np.concatenate([linear, *logs, top, top * 2])


EDGES = bucket_edges()
#: The percentiles every report names: key -> q (0-100).
PERCENTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0, "p999": 99.9, "p9999": 99.99}
MIDPOINTS = (EDGES[:-1] + EDGES[1:]) / 2.0


@dataclass
class Histogram:
    """Counts per bucket plus exact min, max and sum (reduced with MIN, MAX, SUM)."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(N_BUCKETS, dtype=np.int64))
    min_ns: int = np.iinfo(np.int64).max
    max_ns: int = 0
    sum_ns: int = 0

    def record(self, value_ns: int) -> None:
        """One sample (per operation: plain comparisons, not min()/max() calls)."""
        self.counts[bucket_index(value_ns)] += 1
        if value_ns < self.min_ns:
            self.min_ns = value_ns
        if value_ns > self.max_ns:
            self.max_ns = value_ns
        self.sum_ns += value_ns

    def record_many(self, values_ns: np.ndarray) -> None:
        values_ns = np.asarray(values_ns, dtype=np.int64)
        if values_ns.size == 0:
            return
        self.counts += np.bincount(bucket_indices(values_ns), minlength=N_BUCKETS)
        self.min_ns = min(self.min_ns, int(values_ns.min()))
        self.max_ns = max(self.max_ns, int(values_ns.max()))
        self.sum_ns += int(values_ns.sum())

    def record_zeros(self, n: int) -> None:
        """``n`` samples of 0 ns (trace mode's operations), as ``record(0)`` n times."""
        if n > 0:   # no samples leave the minimum alone
            self.counts[0] += n
            self.min_ns = min(self.min_ns, 0)

    def __add__(self, other: Histogram) -> Histogram:
        return Histogram(self.counts + other.counts, min(self.min_ns, other.min_ns),
                         max(self.max_ns, other.max_ns), self.sum_ns + other.sum_ns)

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) in ns: the middle of the bucket of the ceil(q% n)-th sample."""
        return percentile(self.counts, q, self.min_ns, self.max_ns)


def percentile(counts: np.ndarray, q: float, lo: float = 0, hi: float = float("inf")) -> float:
    n = int(counts.sum())
    if n == 0:
        return float("nan")
    rank = max(1, int(np.ceil(q / 100.0 * n)))
    i = int(np.searchsorted(np.cumsum(counts), rank))
    return float(min(max(MIDPOINTS[i], lo), hi))


@dataclass
class Metrics:
    """Everything one rank measures: named histograms, counters and per-second series."""

    hist: dict[str, Histogram] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    series: dict[str, np.ndarray] = field(default_factory=dict)

    def histogram(self, name: str) -> Histogram:
        """The histogram ``name``, made empty the first time it is asked for."""
        h = self.hist.get(name)
        if h is None:
            h = self.hist[name] = Histogram()
        return h

    def record(self, name: str, value_ns: int) -> None:
        self.histogram(name).record(value_ns)

    def add(self, name: str, value: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + value

    def _bins(self, name: str, s: int) -> np.ndarray:
        """The series ``name``, grown (doubling) to hold bin ``s``."""
        arr = self.series.get(name)
        if arr is None or s >= arr.size:
            grown = np.zeros(max(s + 1, 2 * (0 if arr is None else arr.size), 64))
            if arr is not None:
                grown[: arr.size] = arr
            arr = self.series[name] = grown
        return arr

    def tick(self, name: str, second: float, value: float = 1.0) -> None:
        """Adds ``value`` to the 1-second bin that holds ``second`` (phase-relative)."""
        s = max(0, int(second))
        self._bins(name, s)[s] += value

    def peak(self, name: str, second: float, value: float) -> None:
        """Keeps the largest ``value`` seen in its 1-second bin (e.g. the longest wait)."""
        s = max(0, int(second))
        arr = self._bins(name, s)
        if value > arr[s]:
            arr[s] = value
