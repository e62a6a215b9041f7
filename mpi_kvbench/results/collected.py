"""The data a run leaves for the result files: every rank's metrics gathered on rank 0
(``Collected``), and the per-request shard times a rank keeps for the TP-group maximum
(``RequestLog``). Plain arrays: made by the engine and the reductions, read by the
summary and the HDF5 writer.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

import numpy as np

from mpi_kvbench.metrics import Histogram
from mpi_kvbench.results import names


@dataclass
class RequestLog:
    """Per-request shard times of this rank (ns), kept for the TP-group max at the end."""

    index: array = field(default_factory=lambda: array("q"))
    e2e_ns: array = field(default_factory=lambda: array("q"))
    prefill_ns: array = field(default_factory=lambda: array("q"))
    qos: array = field(default_factory=lambda: array("b"))   # index into QOS_CLASSES

    def arrays(self) -> tuple[np.ndarray, ...]:
        """Zero-copy views: index, e2e_ns, prefill_ns (int64) and qos (int8)."""
        return (*(np.frombuffer(a, dtype=np.int64) for a in
                  (self.index, self.e2e_ns, self.prefill_ns)),
                np.frombuffer(self.qos, dtype=np.int8))


@dataclass
class Collected:
    """Everything rank 0 needs to write the result (None elsewhere).

    ``detail`` is ``run.per_rank_detail``: with ``full`` every rank's bucket counts and
    time series are kept (``per_rank``, ``series``); with ``summary`` they are None and
    each rank is kept as its histograms' count, min, max, sum and percentiles
    (``per_rank_count``, ``per_rank_pcts_ns``). The merged figures are the same in both.
    """

    hist_names: list[str]
    merged: np.ndarray                # [H, B] int64
    merged_min_ns: np.ndarray         # [H]
    merged_max_ns: np.ndarray
    merged_sum_ns: np.ndarray
    per_rank: np.ndarray | None       # [N, H, B]; None with detail "summary"
    per_rank_min_ns: np.ndarray       # [N, H]
    per_rank_max_ns: np.ndarray
    per_rank_sum_ns: np.ndarray
    counter_names: list[str]
    counters: np.ndarray              # [N, C]
    series_names: list[str]
    series: np.ndarray | None         # [N, S, T]; None with detail "summary"
    elapsed_ns: np.ndarray            # [N] each rank's measured-phase length
    env: list[dict]
    errors: list[str] = field(default_factory=list)
    detail: str = "full"
    per_rank_count: np.ndarray | None = None     # [N, H] samples per rank and histogram
    per_rank_pcts_ns: np.ndarray | None = None   # [N, H, P] float64, P = metrics.PERCENTILES
    series_merged: np.ndarray | None = None      # [S, T] SUM over ranks (MAX for names.SERIES_MAX)

    def hist(self, name: str) -> Histogram:
        i = self.hist_names.index(name)
        return Histogram(self.merged[i], int(self.merged_min_ns[i]), int(self.merged_max_ns[i]),
                         int(self.merged_sum_ns[i]))

    def counter(self, name: str) -> int:
        if name not in self.counter_names:
            return 0
        return int(self.counters[:, self.counter_names.index(name)].sum())

    def per_rank_counter(self, name: str) -> np.ndarray:
        """One counter of every rank (zeros when no rank counted it)."""
        if name not in self.counter_names:
            return np.zeros(len(self.env), dtype=np.int64)
        return self.counters[:, self.counter_names.index(name)]

    def pooled(self, prefix: str) -> Histogram | None:
        """The merged histograms ``prefix`` and ``prefix.*`` summed (see results.names)."""
        rows = names.pooled_rows(self.hist_names, prefix)
        if not rows:
            return None
        out = Histogram()
        for i in rows:
            out = out + self.hist(self.hist_names[i])
        return out
