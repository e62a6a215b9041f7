"""End-of-run reductions: every rank's metrics into one data set on rank 0.

Nothing here runs on the per-request path. Histograms, counters and time series are
merged by MPI reductions (exact pooled percentiles); per-rank detail is gathered in full
or as a few figures per rank (``run.per_rank_detail``). The cost grows with ranks x
buckets in full detail and with ranks x histograms in summary, never with the number of
requests: a TP group's per-request maximum is taken inside the group first and only its
histogram travels.
"""

from __future__ import annotations

import numpy as np

from mpi_kvbench.metrics import N_BUCKETS, PERCENTILES, Histogram, Metrics, percentile
from mpi_kvbench.mpi.comm import Comm
from mpi_kvbench.results import names
from mpi_kvbench.results.collected import Collected, RequestLog
from mpi_kvbench.workloads.qos import QOS_CLASSES


def group_latency(group: Comm, log: RequestLog, metrics: Metrics) -> None:
    """Adds the TP group's per-request latency (max over its shards) to the leader's metrics.

    Every rank of a group serves the same requests; those that all of them completed are
    matched by request index and compared element-wise (one gather inside the group).
    """
    shards = group.gather(log.arrays())
    if group.rank != 0:
        return
    common = shards[0][0]
    for idx, *_ in shards[1:]:
        common = np.intersect1d(common, idx)
    worst = np.zeros((2, common.size), dtype=np.int64)
    qos = np.zeros(common.size, dtype=np.int8)
    for idx, s_e2e, s_prefill, s_qos in shards:
        by_index = np.argsort(idx)
        order = by_index[np.searchsorted(idx, common, sorter=by_index)]
        worst[0] = np.maximum(worst[0], s_e2e[order])
        worst[1] = np.maximum(worst[1], s_prefill[order])
        qos = s_qos[order]
    for i, what in enumerate(names.GROUP_METRICS):
        metrics.hist.setdefault(names.group(what), Histogram()).record_many(worst[i])
        for c in np.unique(qos):
            metrics.hist.setdefault(names.group_qos(QOS_CLASSES[c], what), Histogram()).record_many(
                worst[i][qos == c])
    metrics.add(names.group("requests_completed"), int(common.size))


DETAILS = ("full", "summary")   # run.per_rank_detail


def collect(comm: Comm, metrics: Metrics, elapsed_ns: int, env: dict,
            error: str | None, detail: str = "full") -> Collected | None:
    """Reduces every rank's metrics to rank 0; returns the data there, None elsewhere.

    Bucket counts and time series are merged by MPI reductions of numpy buffers
    (tree-shaped in every MPI library); each histogram's min, max and sum and the counters
    are gathered per rank in either detail, so rank 0 merges those itself (reducing them
    as well would only send them twice). What is kept per rank depends on ``detail``:
    ``full`` gathers every rank's bucket counts [H, B] and series [S, T] (rank 0
    receives N times that);
    ``summary`` gathers per rank only each histogram's count, min, max, sum and
    percentiles (computed on the rank, from its own counts) and the counters, which is
    a few KiB per rank whatever the run length.
    """
    kinds = (metrics.hist, metrics.counters, metrics.series)
    every = comm.union((k, n) for k, names_ in enumerate(kinds) for n in names_)   # one level walk
    hist_names, counter_names, series_names = ([n for k, n in every if k == i] for i in range(3))

    empty = Histogram()
    hs = [metrics.hist.get(n, empty) for n in hist_names]
    h = len(hs)
    counts = np.stack([x.counts for x in hs]) if hs else np.zeros((0, N_BUCKETS), np.int64)
    mins = np.array([x.min_ns for x in hs], dtype=np.int64)
    maxs = np.array([x.max_ns for x in hs], dtype=np.int64)
    sums = np.array([x.sum_ns for x in hs], dtype=np.int64)
    mine = np.array([metrics.counters.get(n, 0) for n in counter_names], dtype=np.int64)
    c = mine.size
    # few collectives, each one buffer: SUM of the bucket counts; one gather of every
    # per-rank int64 (min, max, sum, counters), which rank 0 merges itself
    total = comm.reduce_array(counts.ravel(), "sum")
    rows = comm.gather_array(np.concatenate([mins, maxs, sums, mine, counts.sum(axis=1),
                                             [elapsed_ns]]).astype(np.int64))
    length = comm.allreduce(max((a.size for a in metrics.series.values()), default=0), op="max")
    series = np.zeros((len(series_names), length))
    for i, n in enumerate(series_names):
        if n in metrics.series:
            used = metrics.series[n][:length]
            series[i, : used.size] = used
    peaks = np.array([n in names.SERIES_MAX for n in series_names], dtype=bool)
    series_sum = comm.reduce_array(series, "sum")
    series_max = comm.reduce_array(series[peaks], "max") if peaks.any() else None
    per_rank = series_all = rank_pcts = None
    if detail == "full":
        per_rank = comm.gather_array(counts)
        series_all = comm.gather_array(series)
    else:
        rank_pcts = comm.gather_array(rank_percentiles(counts, mins, maxs))
    gathered = comm.gather((env, error))
    if comm.rank != 0:
        return None
    merged = total.reshape(h, N_BUCKETS)
    rank_min, rank_max, rank_sum = rows[:, :h], rows[:, h:2 * h], rows[:, 2 * h:3 * h]
    counters, rank_count, elapsed = rows[:, 3 * h:3 * h + c], rows[:, 3 * h + c:-1], rows[:, -1]
    mmin, mmax, msum = rank_min.min(axis=0), rank_max.max(axis=0), rank_sum.sum(axis=0)
    merged_series = series_sum
    if series_max is not None:
        merged_series[peaks] = series_max
    last = _trim(merged_series[None] if series_all is None else series_all)
    return Collected(hist_names, merged, mmin, mmax, msum, per_rank, rank_min, rank_max, rank_sum,
                     counter_names, counters, series_names,
                     None if series_all is None else series_all[:, :, :last], elapsed,
                     [e for e, _ in gathered], [x for _, x in gathered if x], detail,
                     rank_count if detail != "full" else None, rank_pcts,
                     merged_series[:, :last])


def rank_percentiles(counts: np.ndarray, mins: np.ndarray, maxs: np.ndarray) -> np.ndarray:
    """[H, P] float64: each histogram's percentiles (ns) of ``metrics.PERCENTILES``, as
    ``metrics.percentile`` gives them clamped to the exact min and max; NaN when empty."""
    out = np.full((counts.shape[0], len(PERCENTILES)), np.nan)
    for i, row in enumerate(counts):
        if row.any():
            out[i] = [percentile(row, q, mins[i], maxs[i]) for q in PERCENTILES.values()]
    return out


def _trim(series: np.ndarray) -> int:
    """Drops trailing seconds that no rank touched."""
    if series.shape[-1] == 0:   # nothing recorded on any rank (a stop before the first second)
        return 0
    used = np.nonzero(series.reshape(-1, series.shape[-1]).any(axis=0))[0]
    return int(used[-1]) + 1 if used.size else 0
