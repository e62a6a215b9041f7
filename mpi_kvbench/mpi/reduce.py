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

    Merged figures travel by MPI reductions of numpy buffers (tree-shaped in every MPI
    library): bucket counts, min, max and sum of every histogram, the counters and the
    time series. What is kept per rank depends on ``detail``: ``full`` gathers every
    rank's bucket counts [H, B] and series [S, T] (rank 0 receives N times that);
    ``summary`` gathers per rank only each histogram's count, min, max, sum and
    percentiles (computed on the rank, from its own counts) and the counters, which is
    a few KiB per rank whatever the run length.
    """
    hist_names = comm.union(metrics.hist)
    counter_names = comm.union(metrics.counters)
    series_names = comm.union(metrics.series)

    empty = Histogram()
    hs = [metrics.hist.get(n, empty) for n in hist_names]
    counts = np.stack([h.counts for h in hs]) if hs else np.zeros((0, N_BUCKETS), np.int64)
    mins = np.array([h.min_ns for h in hs], dtype=np.int64)
    maxs = np.array([h.max_ns for h in hs], dtype=np.int64)
    sums = np.array([h.sum_ns for h in hs], dtype=np.int64)
    merged = comm.reduce_array(counts, "sum")
    mmin, mmax, msum = (comm.reduce_array(mins, "min"), comm.reduce_array(maxs, "max"),
                        comm.reduce_array(sums, "sum"))
    rank_min, rank_max, rank_sum = (comm.gather_array(a) for a in (mins, maxs, sums))
    mine = np.array([metrics.counters.get(n, 0) for n in counter_names], dtype=np.int64)
    counters = comm.gather_array(mine)
    counters_merged = comm.reduce_array(mine, "sum")
    length = comm.allreduce(max((a.size for a in metrics.series.values()), default=0), op="max")
    series = np.zeros((len(series_names), length))
    for i, n in enumerate(series_names):
        if n in metrics.series:
            used = metrics.series[n][:length]
            series[i, : used.size] = used
    peaks = np.array([n in names.SERIES_MAX for n in series_names], dtype=bool)
    series_sum = comm.reduce_array(series, "sum")
    series_max = comm.reduce_array(series, "max") if peaks.any() else series_sum
    per_rank = series_all = rank_count = rank_pcts = None
    if detail == "full":
        per_rank = comm.gather_array(counts)
        series_all = comm.gather_array(series)
    else:
        rank_count = comm.gather_array(counts.sum(axis=1))
        rank_pcts = comm.gather_array(rank_percentiles(counts, mins, maxs))
    elapsed = comm.gather_array(np.array([elapsed_ns], dtype=np.int64))
    envs = comm.gather(env)
    errors = comm.gather(error) if comm.allreduce(int(error is not None), "sum") else []
    if comm.rank != 0:
        return None
    merged_series = np.where(peaks[:, None], series_max, series_sum)
    last = _trim(merged_series[None] if series_all is None else series_all)
    return Collected(hist_names, merged, mmin, mmax, msum, per_rank, rank_min, rank_max, rank_sum,
                     counter_names, counters, series_names,
                     None if series_all is None else series_all[:, :, :last], elapsed[:, 0], envs,
                     [e for e in errors if e], detail, rank_count, rank_pcts, counters_merged,
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
