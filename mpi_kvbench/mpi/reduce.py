"""End-of-run reductions: every rank's metrics into one data set on rank 0.

Nothing here runs on the per-request path. Histograms are summed element-wise (exact
pooled percentiles) and also gathered per rank; counters are gathered per rank (the sum
is the merged figure); time series are gathered per rank, padded to the longest. The
cost grows with ranks x buckets, never with the number of requests: a TP group's
per-request maximum is taken inside the group first and only its histogram travels.
"""

from __future__ import annotations

import numpy as np

from mpi_kvbench.metrics import N_BUCKETS, Histogram, Metrics
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


def collect(comm: Comm, metrics: Metrics, elapsed_ns: int, env: dict,
            error: str | None) -> Collected | None:
    """Reduces every rank's metrics to rank 0; returns the data there, None elsewhere."""
    hist_names = _union(comm, metrics.hist)
    counter_names = _union(comm, metrics.counters)
    series_names = _union(comm, metrics.series)

    empty = Histogram()
    hs = [metrics.hist.get(n, empty) for n in hist_names]
    counts = np.stack([h.counts for h in hs]) if hs else np.zeros((0, N_BUCKETS), np.int64)
    mins = np.array([h.min_ns for h in hs], dtype=np.int64)
    maxs = np.array([h.max_ns for h in hs], dtype=np.int64)
    sums = np.array([h.sum_ns for h in hs], dtype=np.int64)
    merged = comm.reduce_array(counts, "sum")
    mmin, mmax, msum = (comm.reduce_array(mins, "min"), comm.reduce_array(maxs, "max"),
                        comm.reduce_array(sums, "sum"))
    per_rank = comm.gather_array(counts)
    rank_min, rank_max, rank_sum = (comm.gather_array(a) for a in (mins, maxs, sums))
    counters = comm.gather_array(np.array([metrics.counters.get(n, 0) for n in counter_names],
                                          dtype=np.int64))
    length = comm.allreduce(max((a.size for a in metrics.series.values()), default=0), op="max")
    series = np.zeros((len(series_names), length))
    for i, n in enumerate(series_names):
        if n in metrics.series:
            used = metrics.series[n][:length]
            series[i, : used.size] = used
    series_all = comm.gather_array(series)
    elapsed = comm.gather_array(np.array([elapsed_ns], dtype=np.int64))
    envs = comm.gather(env)
    errors = comm.gather(error)
    if comm.rank != 0:
        return None
    last = _trim(series_all)
    return Collected(hist_names, merged, mmin, mmax, msum, per_rank, rank_min, rank_max, rank_sum,
                     counter_names, counters,
                     series_names, series_all[:, :, :last], elapsed[:, 0], envs,
                     [e for e in errors if e])


def _union(comm: Comm, names: dict) -> list[str]:
    return sorted(set().union(*comm.allgather(sorted(names))))


def _trim(series: np.ndarray) -> int:
    """Drops trailing seconds that no rank touched."""
    if series.shape[-1] == 0:   # nothing recorded on any rank (a stop before the first second)
        return 0
    used = np.nonzero(series.reshape(-1, series.shape[-1]).any(axis=0))[0]
    return int(used[-1]) + 1 if used.size else 0
