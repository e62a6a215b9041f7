"""Results into pandas, for notebooks: ``load("results/run/result.h5")`` and go.

The console table and summary.json carry the headlines; this module reaches the rest of
``result.h5`` (per-rank histograms, counters, time series, environment) without anyone
having to learn the HDF5 layout (docs/RESULTS.md). Percentiles are recomputed from the
stored bucket counts with :func:`mpi_kvbench.metrics.percentile`, the function summary.json
uses, so a notebook and the summary never disagree.

pandas is an optional dependency (``pip install 'mpi_kvbench[analysis]'``); matplotlib is
needed only by :func:`plot_report`.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import yaml

from mpi_kvbench import SCHEMA_VERSION
from mpi_kvbench.metrics import EDGES, PERCENTILES, percentile
from mpi_kvbench.results import names as mn

if TYPE_CHECKING:
    import pandas as pd

PathLike = str | os.PathLike


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as err:   # pragma: no cover - depends on the environment
        raise ImportError("mpi_kvbench.analysis needs pandas: pip install 'mpi_kvbench[analysis]'"
                          " (or pip install pandas)") from err
    return pandas


@dataclass
class _Hist:
    """The merged histogram arrays (small) and where the per-rank ones are (read lazily:
    they grow with ranks x histograms x 3585 buckets)."""

    path: str
    names: list[str]
    merged: np.ndarray            # [H, B]
    min_ns: np.ndarray            # [H]
    max_ns: np.ndarray
    sum_ns: np.ndarray
    world_size: int
    detail: str = "full"          # run.per_rank_detail: "summary" stores no per-rank counts

    def rows(self, name: str) -> list[int]:
        """The stored histograms ``name`` stands for: itself, or every ``name.<anything>``
        (as summary.json pools ``storage.read.*`` into ``storage.read``)."""
        rows = mn.pooled_rows(self.names, name)
        if not rows:
            raise KeyError(f"no histogram {name!r} in {self.path}; there are: {', '.join(self.names)}")
        return rows

    def per_rank(self, rank: int) -> np.ndarray:
        """[H, B] counts of one rank."""
        if not 0 <= rank < self.world_size:
            raise IndexError(f"rank {rank} out of range: the run had {self.world_size} ranks")
        if self.detail != "full":
            raise KeyError(f"{self.path} holds no per-rank bucket counts (run.per_rank_detail:"
                           f" {self.detail}); per-rank percentiles are in Result.percentiles")
        with h5py.File(self.path, "r") as f:
            return f["histograms/per_rank"][rank]


@dataclass
class Result:
    """One run's result.h5 as plain Python and pandas objects."""

    path: str
    attrs: dict[str, Any]
    config: str
    summary: dict[str, Any]
    #: One row per rank (index ``rank``), one column per counter.
    counters: pd.DataFrame
    #: The counters summed over ranks (the ``counters/merged`` dataset).
    counters_merged: pd.Series
    #: Long format: histogram, rank ("all" or int), tier, op, phase, rollup, count, mean_ms,
    #: min_ms, p50_ms ... p9999_ms, max_ms.
    percentiles: pd.DataFrame
    #: Long format: rank, second (start of the 1-s bin), series, value.
    timeseries: pd.DataFrame
    #: One row per rank from ``ranks/environment`` (nested keys flattened with "."), plus
    #: ``elapsed_s``, the rank's measured phase.
    environment: pd.DataFrame
    errors: list[str] = field(default_factory=list)
    #: Width of a time-series bin (s).
    interval_s: float = 1.0
    _hist: _Hist | None = field(default=None, repr=False)

    @property
    def run_name(self) -> str:
        return str(self.attrs.get("run_name", os.path.basename(os.path.dirname(self.path))))

    @property
    def tiers(self) -> list[str]:
        """The tier names, top (fastest) first."""
        return list(self.summary.get("tiers", {}))


# -- loading ------------------------------------------------------------------------------

def result_path(path: PathLike) -> str:
    """``path`` itself when it is a file, else ``path/result.h5`` (a run directory)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, "result.h5")
    if not os.path.isfile(p):
        raise FileNotFoundError(f"no result at {os.fspath(path)} (expected a result.h5 or its run directory)")
    return p


def _strings(ds: h5py.Dataset) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[()]]


def _attr(key: str, value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        if value[:1] in ("{", "[") or value in ("true", "false", "null"):
            # write_hdf5 stores every attribute that is not a str or a number as JSON
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return value
    return value


def load(path: PathLike) -> Result:
    """Loads a result.h5 (or the run directory that holds one) into a :class:`Result`."""
    pd = _pandas()
    p = result_path(path)
    with h5py.File(p, "r") as f:
        attrs = {k: _attr(k, v) for k, v in f.attrs.items()}
        version = attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            warnings.warn(f"{p}: schema_version {version}, this reader knows {SCHEMA_VERSION}",
                          stacklevel=2)
        h = f["histograms"]
        hist = _Hist(p, _strings(h["names"]), h["merged"][()], h["merged_min_ns"][()],
                     h["merged_max_ns"][()], h["merged_sum_ns"][()], int(f["ranks/elapsed_ns"].shape[0]),
                     "full" if "per_rank" in h else str(attrs.get("per_rank_detail", "summary")))
        c = f["counters"]
        counter_names = _strings(c["names"])
        counters = pd.DataFrame(c["per_rank"][()], columns=counter_names,
                                index=pd.RangeIndex(hist.world_size, name="rank"))
        counters_merged = pd.Series(c["merged"][()], index=counter_names, name="merged")
        t = f["timeseries"]
        interval_s = float(t.attrs.get("interval_s", 1.0))
        if "per_rank" in t:
            timeseries = _timeseries(pd, _strings(t["names"]), t["per_rank"][()], interval_s)
        else:   # per_rank_detail: summary: the merged series alone, as rank -1
            timeseries = _timeseries(pd, _strings(t["names"]), t["merged"][()][None], interval_s)
            timeseries["rank"] = -1
        env = [json.loads(e) for e in _strings(f["ranks/environment"])]
        elapsed = f["ranks/elapsed_ns"][()]
        errors = _strings(f["errors"]) if "errors" in f else []
    summary = attrs.get("summary") or {}
    environment = pd.json_normalize(env) if env else pd.DataFrame()
    environment["elapsed_s"] = elapsed / 1e9
    environment.index = pd.RangeIndex(len(environment), name="rank")
    tiers = list(summary.get("tiers", {})) or mn.guess_tiers(hist.names)
    return Result(p, attrs, str(attrs.get("config_yaml", "")), summary, counters, counters_merged,
                  _percentiles(pd, hist, tiers), timeseries, environment, errors, interval_s, hist)


def _timeseries(pd: Any, names: list[str], data: np.ndarray, interval_s: float) -> pd.DataFrame:
    n, s, t = data.shape
    rank, series, second = np.meshgrid(np.arange(n), np.arange(s), np.arange(t), indexing="ij")
    return pd.DataFrame({
        "rank": rank.ravel(),
        "second": second.ravel() * interval_s,
        "series": pd.Categorical.from_codes(series.ravel(), categories=names) if names
        else pd.Categorical([]),
        "value": data.ravel(),
    })


# -- histograms and percentiles -----------------------------------------------------------

def _row(counts: np.ndarray, lo: float, hi: float, total_ns: float) -> dict[str, float]:
    """count, mean, min, percentiles and max (ms) of one histogram with its exact min, max
    and sum (``lo``, ``hi``, ``total_ns``, in ns)."""
    n = int(counts.sum())
    out: dict[str, float] = {"count": n}
    if n == 0:
        return out | {k: math.nan for k in ("mean_ms", "min_ms", *(f"{p}_ms" for p in PERCENTILES),
                                              "max_ms")}
    out["mean_ms"] = total_ns / n / 1e6
    out["min_ms"] = lo / 1e6
    for key, q in PERCENTILES.items():
        out[f"{key}_ms"] = percentile(counts, q, lo, hi) / 1e6
    out["max_ms"] = hi / 1e6
    return out


def _merged_stats(hist: _Hist, rows: list[int]) -> tuple[np.ndarray, float, float, float]:
    """Counts, min, max and sum of the pooled rows, as summary.json's Histogram sum makes them."""
    counts = hist.merged[rows].sum(axis=0)
    return counts, float(hist.min_ns[rows].min()), float(hist.max_ns[rows].max()), \
        float(hist.sum_ns[rows].sum())


def _percentiles(pd: Any, hist: _Hist, tiers: Sequence[str]) -> pd.DataFrame:
    """Every row uses the exact min/max/sum the file stores (merged, and per rank)."""
    names = hist.names
    groups = [(n, [i]) for i, n in enumerate(names)] + [(r, hist.rows(r)) for r in mn.rollups(names, tiers)]
    records = []
    merged = {}
    for name, rows in groups:
        merged[name] = _merged_stats(hist, rows)
        counts, lo, hi, total = merged[name]
        records.append({"histogram": name, "rank": "all", **_row(counts, lo, hi, total)})
    with h5py.File(hist.path, "r") as f:
        mins, maxs, sums = (f[f"histograms/per_rank_{k}_ns"][()] for k in ("min", "max", "sum"))
        if hist.detail != "full":
            records += _summary_rows(f, groups, len(names), mins, maxs, sums)
        ds = f["histograms/per_rank"] if hist.detail == "full" else None
        for rank in range(hist.world_size if ds is not None else 0):
            mine = ds[rank]
            for name, rows in groups:
                stats = _row(mine[rows].sum(axis=0), float(mins[rank, rows].min()),
                             float(maxs[rank, rows].max()), float(sums[rank, rows].sum()))
                records.append({"histogram": name, "rank": rank, **stats})
    df = pd.DataFrame.from_records(records)
    split = [mn.split(n, tiers) for n in df["histogram"]]
    df.insert(2, "tier", [s[0] for s in split])
    df.insert(3, "op", [s[1] for s in split])
    df.insert(4, "phase", [s[2] for s in split])
    df.insert(5, "rollup", df["histogram"].isin([g[0] for g in groups[len(names):]]))
    df["count"] = df["count"].astype("int64")
    return df


def _summary_rows(f: h5py.File, groups: list, n_names: int, mins: np.ndarray, maxs: np.ndarray,
                  sums: np.ndarray) -> list[dict]:
    """Per-rank rows from ``per_rank_detail: summary``: count, mean, min and max are exact;
    percentiles are the stored ones (those of the rank's own counts, as full detail gives
    them) and NaN for a rollup, whose pooled counts the file does not hold per rank."""
    count = f["histograms/per_rank_count"][()]
    pcts = f["histograms/per_rank_percentiles_ns"][()]
    keys = [k.decode() if isinstance(k, bytes) else str(k)
            for k in f["histograms/per_rank_percentiles_ns"].attrs["percentiles"]]
    records = []
    for rank in range(count.shape[0]):
        for g, (name, rows) in enumerate(groups):
            n = int(count[rank, rows].sum())
            row: dict[str, Any] = {"histogram": name, "rank": rank, "count": n}
            if n == 0:
                row |= {k: math.nan for k in ("mean_ms", "min_ms", *(f"{p}_ms" for p in PERCENTILES),
                                              "max_ms")}
            else:
                row["mean_ms"] = float(sums[rank, rows].sum()) / n / 1e6
                row["min_ms"] = float(mins[rank, rows].min()) / 1e6
                for j, key in enumerate(keys):
                    row[f"{key}_ms"] = pcts[rank, rows[0], j] / 1e6 if g < n_names else math.nan
                row["max_ms"] = float(maxs[rank, rows].max()) / 1e6
            records.append(row)
    return records


def histogram_counts(result: Result, histogram: str, rank: int | str = "all") -> np.ndarray:
    """Bucket counts of ``histogram`` (pooled over ``histogram.*`` when not stored itself)
    merged over ranks, or of one rank; bucket b spans ``EDGES[b]`` to ``EDGES[b + 1]`` ns."""
    hist = _need_hist(result)
    rows = hist.rows(histogram)
    if rank == "all":
        return hist.merged[rows].sum(axis=0)
    return hist.per_rank(int(rank))[rows].sum(axis=0)


def cdf(result: Result, histogram: str, rank: int | str = "all") -> pd.DataFrame:
    """The latency CDF: at each non-empty bucket's upper edge, the fraction of samples at
    or below it (exact, unlike a percentile's bucket midpoint). Merged, edges are clamped
    to the exact min/max, so the curve ends at the true maximum."""
    counts = histogram_counts(result, histogram, rank)
    nz = np.nonzero(counts)[0]
    fraction = np.cumsum(counts[nz]) / counts.sum() if len(nz) else np.array([], float)
    return _pandas().DataFrame({"latency_ms": _upper_ms(result, histogram, rank, nz),
                                "fraction": fraction})


def _upper_ms(result: Result, histogram: str, rank: int | str, nz: np.ndarray) -> np.ndarray:
    """Upper edges (ms) of the non-empty buckets ``nz``; merged, clamped to the exact min/max."""
    upper = EDGES[nz + 1].astype(float)
    if rank == "all" and len(nz):
        hist = _need_hist(result)
        rows = hist.rows(histogram)
        upper = np.clip(upper, float(hist.min_ns[rows].min()), float(hist.max_ns[rows].max()))
    return upper / 1e6


def _need_hist(result: Result) -> _Hist:
    if result._hist is None:
        raise ValueError("this Result holds no histogram data; use load()")
    return result._hist


# -- tables -------------------------------------------------------------------------------

def tier_table(result: Result | dict[str, Any]) -> pd.DataFrame:
    """One row per tier (top first) from summary['tiers']: bandwidths, ops, busy time,
    hits and the pooled read/write latency percentiles (ms)."""
    pd = _pandas()
    summary = result.summary if isinstance(result, Result) else result
    rows = {}
    for tier, t in summary.get("tiers", {}).items():
        row = {k: v for k, v in t.items() if not isinstance(v, dict | list)}
        for op in mn.OPS:
            for key, value in t.get("latency_ms", {}).get(op, {}).items():
                row[f"{op}_{key}_ms"] = value
        rows[tier] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "tier"
    return df.apply(pd.to_numeric, errors="coerce") if len(df) else df


def headline(summary: dict[str, Any]) -> dict[str, float]:
    """The measured figures of one run, flat, for comparing trials (None becomes NaN)."""
    def num(v: Any) -> float:
        return math.nan if v is None else float(v)

    out = {k: num(summary.get(k)) for k in ("duration_s", "requests_completed", "requests_per_s",
                                            "prefix_hit_ratio", "storage_throughput_gbps",
                                            "storage_throughput_tokens_per_s",
                                            "avg_throughput_tokens_per_s")}
    for tier, t in summary.get("tiers", {}).items():
        for key in ("read_gbps", "write_gbps", "gbps_busy"):
            out[f"{tier}.{key}"] = num(t.get(key))
        for op in mn.OPS:
            for p in ("p50", "p99"):
                out[f"{tier}.{op}_{p}_ms"] = num(t.get("latency_ms", {}).get(op, {}).get(p))
    for key in ("group_e2e", "group_prefill_storage", "request_queue"):
        for p in ("p50", "p99"):
            out[f"{key}_{p}_ms"] = num(summary.get("latency_ms", {}).get(key, {}).get(p))
    out["demotions"] = num(summary.get("demotions", {}).get("count"))
    out["cpu.io_path_s_per_gb"] = num(summary.get("cpu", {}).get("io_path_s_per_gb"))
    return out


def _summary_of(item: Result | PathLike) -> tuple[str, dict[str, Any]]:
    if isinstance(item, Result):
        return item.run_name, item.summary
    p = result_path(item)
    with h5py.File(p, "r") as f:
        summary = _attr("summary", f.attrs["summary"])
    return str(summary.get("run_name") or os.path.basename(os.path.dirname(p))), summary


def _cv(values: pd.Series) -> float:
    v = values.dropna()
    if len(v) < 2:
        return math.nan
    if v.min() == v.max():
        return 0.0   # no spread, even around a mean of 0 (and no float noise from std)
    mean = float(v.mean())
    return float(v.std(ddof=1)) / mean if mean else math.nan


def compare(runs: Iterable[Result | PathLike]) -> pd.DataFrame:
    """Headline figures of several runs (one row each, labelled by run name) followed by
    ``mean``, ``median`` and ``cv`` rows (cv = sample std / mean): trial-to-trial spread."""
    pd = _pandas()
    labels, rows = [], []
    for item in runs:
        name, summary = _summary_of(item)
        label, k = name, 2
        while label in labels:
            label, k = f"{name} ({k})", k + 1
        labels.append(label)
        rows.append(headline(summary))
    df = pd.DataFrame(rows, index=pd.Index(labels, name="run"))
    if df.empty:
        return df
    stats = pd.DataFrame([df.mean(), df.median(), df.apply(_cv)], index=["mean", "median", "cv"])
    return pd.concat([df, stats])


# -- plots --------------------------------------------------------------------------------

def _figure(**kw: Any) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plot_report needs matplotlib: pip install matplotlib") from err
    return Figure(**kw)


def title(result: Result) -> str:
    """What a figure is of: run name, model, ranks (a run name alone is often a timestamp)."""
    a = result.attrs
    tp = a.get("tensor_parallel", 1)
    n = a.get("world_size", len(result.counters))
    return (f"{result.run_name} · {a.get('model', '?')}, {n} rank{'s' if n != 1 else ''}"
            + (f" (TP {tp})" if tp and tp > 1 else ""))


def _plain(axis: Any) -> None:
    """Plain numbers on a log axis ("600", "0.05"), not "6×10²". Minor ticks are labelled
    only when the axis spans less than a decade (then they are the only labels); decided
    when drawn, after autoscaling."""
    from matplotlib.ticker import FuncFormatter

    def minor(v: float, _: Any) -> str:
        lo, hi = sorted(axis.get_view_interval())
        return f"{v:g}" if lo > 0 and hi / lo < 10 else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def _rank_ticks(ax: Any, ranks: np.ndarray) -> None:
    from matplotlib.ticker import MaxNLocator

    if len(ranks) <= 16:
        ax.set_xticks(ranks)
    else:   # every rank would be an unreadable smear of labels
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def tail(result: Result, histogram: str, rank: int | str = "all") -> pd.DataFrame:
    """The latency tail at each non-empty bucket's upper edge (``latency_ms``, clamped to
    the max as in :func:`cdf`): ``slower``, the fraction of samples in that bucket or a
    slower one, i.e. at or above the bucket's lower edge. Drawn as a step ``where="pre"``
    it holds that value over the bucket's span (an upper bound of the exact tail there,
    by at most one bucket), reaches 1/n at the maximum, not 0, and plots on a log scale:
    P99 is where the curve crosses 0.01, P99.9 where it crosses 0.001."""
    counts = histogram_counts(result, histogram, rank)
    nz = np.nonzero(counts)[0]
    at_or_above = np.cumsum(counts[nz][::-1])[::-1]   # exact counts, then one division
    slower = at_or_above / counts.sum() if len(nz) else np.array([], float)
    return _pandas().DataFrame({"latency_ms": _upper_ms(result, histogram, rank, nz), "slower": slower})


def _mark_tail(ax: Any, n_max: int) -> None:
    for q, label in ((0.01, "P99"), (0.001, "P99.9")):
        ax.axhline(q, color="0.5", lw=0.8, ls=":")
        ax.annotate(label, (1.0, q), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                    fontsize="small", color="0.35")
    ax.set_ylim(top=1.2, bottom=min(5e-4, 0.5 / max(1, n_max)))
    ax.set_yscale("log")
    ax.set_xscale("log")
    _plain(ax.xaxis)
    _plain(ax.yaxis)
    ax.grid(True, which="both", alpha=0.25)


def plot_latency(result: Result, ax: Any = None) -> Any:
    """Per-operation latency tail of every tier, all ranks."""
    fig = ax.figure if ax is not None else _figure(figsize=(7.5, 4.5))
    ax = ax or fig.add_subplot()
    colors = _colors(result.tiers)
    n_max = 1
    for tier in result.tiers:
        for op, style in zip(mn.OPS, ("-", "--"), strict=True):
            try:
                t = tail(result, mn.tier_op(tier, op))
            except KeyError:
                continue
            if len(t):
                n_max = max(n_max, int(histogram_counts(result, mn.tier_op(tier, op)).sum()))
                ax.step(t["latency_ms"], t["slower"], style, where="pre", color=colors[tier],
                        lw=2 if tier == "storage" else 1.2, label=f"{tier} {op}")
    _mark_tail(ax, n_max)
    ax.set(xlabel="latency (ms)", ylabel="fraction of operations this slow or slower",
           title=f"{title(result)}\nper-operation latency tail, all ranks")
    if ax.lines:
        ax.legend(fontsize="small", loc="lower left")
    return fig


def qos_targets(result: Result) -> tuple[str, dict[str, dict[str, float]]]:
    """The SLO metric and targets (ms per percentile key, per class) the run judged against."""
    health = result.summary.get("storage_health") or {}
    cfg = yaml.safe_load(result.config) if result.config else {}
    targets = dict((cfg or {}).get("qos", {}).get("targets_ms") or {})
    for cls, c in health.get("classes", {}).items():
        targets[cls] = {k: v["target_ms"] for k, v in c.get("checks", {}).items()}
    metric = health.get("metric") or (cfg or {}).get("qos", {}).get("metric", "e2e")
    return metric, targets


def plot_qos(result: Result, ax: Any = None) -> Any:
    """Request latency tail of each QoS class (per TP group, the metric the SLOs judge) with
    its targets as crosses at (target, 1 − q): a class meets a target when its curve passes
    below and left of the cross."""
    fig = ax.figure if ax is not None else _figure(figsize=(7.5, 4.5))
    ax = ax or fig.add_subplot()
    metric, targets = qos_targets(result)
    verdicts = (result.summary.get("storage_health") or {}).get("classes", {})
    n_max = 1
    for i, cls in enumerate(result.summary.get("qos", {})):
        color = f"C{i}"
        name = mn.group_qos(cls, metric)
        try:
            t = tail(result, name)
        except KeyError:
            continue
        n = int(histogram_counts(result, name).sum())
        n_max = max(n_max, n)
        verdict = verdicts.get(cls, {}).get("verdict", "no data")
        ax.step(t["latency_ms"], t["slower"], where="pre", color=color, label=f"{cls} ({n}): {verdict}")
        for key, target in targets.get(cls, {}).items():
            ax.plot([target], [1 - PERCENTILES[key] / 100], "x", color=color, ms=8, mew=2)
    _mark_tail(ax, n_max)
    ax.set(xlabel=f"request {metric} latency, per TP group (ms)", ylabel="fraction of requests this slow",
           title=f"{title(result)}\nrequests per QoS class against their SLO targets (x)")
    if ax.lines:
        ax.legend(fontsize="small", loc="lower left")
    return fig


def _window(result: Result) -> float:
    return float(result.environment["elapsed_s"].max()) if len(result.environment) else 0.0


def _over_time(result: Result, series: str) -> tuple[np.ndarray, np.ndarray]:
    """Bin starts and the per-second rate of ``series`` summed over ranks."""
    ts = result.timeseries
    s = ts[ts["series"] == series].groupby("second")["value"].sum()
    return s.index.to_numpy(dtype=float), s.to_numpy(dtype=float)


def _steps(starts: np.ndarray, values: np.ndarray, window: float, interval: float) -> tuple:
    """x, y of a step line that holds each bin's value to its end and stops at the window."""
    end = window if window > 0 else (starts[-1] + interval if len(starts) else 0.0)
    return np.append(starts, end), np.append(values, values[-1] if len(values) else np.nan)


def plot_bandwidth(result: Result, ax: Any = None) -> Any:
    """Bandwidth over the measured phase per tier (thin: read, dashed: write) and the
    storage tier's read + write total (bold); x runs over the whole measured window."""
    fig = ax.figure if ax is not None else _figure(figsize=(7.5, 4.5))
    ax = ax or fig.add_subplot()
    window, colors = _window(result), _colors(result.tiers)
    total = None
    for tier in result.tiers:
        for op, style in zip(mn.OPS, ("-", "--"), strict=True):
            starts, nbytes = _over_time(result, mn.tier_counter(tier, f"{op}_bytes"))
            if not len(starts):
                continue
            gbps = nbytes / _bin_widths(starts, result.interval_s, window) / 1e9
            x, y = _steps(starts, gbps, window, result.interval_s)
            ax.plot(x, y, style, drawstyle="steps-post", color=colors[tier], lw=1, label=f"{tier} {op}")
            if tier == "storage":   # every series has every bin: the two add up bin by bin
                total = gbps if total is None else total + gbps
                total_starts = starts
    if total is not None:
        x, y = _steps(total_starts, total, window, result.interval_s)
        ax.plot(x, y, drawstyle="steps-post", color=colors["storage"], lw=3, label="storage read + write")
    ax.set(xlabel="second of the measured phase", ylabel="GB/s (all ranks)", ylim=(0, None),
           title=f"{title(result)}\nbandwidth over time")
    _share_time(ax, result)
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    return fig


def _share_time(ax: Any, result: Result) -> None:
    """Every time axis spans the same measured window, so figures line up."""
    window = _window(result)
    ax.set_xlim(0, window if window > 0 else None)


def plot_hit_rates(result: Result) -> Any:
    """Prefix hit ratio over time, and the share of chunk lookups each tier served."""
    pd = _pandas()
    fig = _figure(figsize=(10, 4))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    window = _window(result)
    starts, lookups = _over_time(result, "chunk_lookups")
    if len(starts):
        h_starts, hits = _over_time(result, "chunk_hits")
        hits = pd.Series(hits, index=h_starts).reindex(starts, fill_value=0).to_numpy()
        ratio = np.divide(hits, lookups, out=np.full(len(lookups), np.nan), where=lookups > 0)
        x, y = _steps(starts, ratio, window, result.interval_s)
        ax1.plot(x, y, drawstyle="steps-post")
    ax1.set(xlabel="second of the measured phase", ylabel="chunk hits / lookups", ylim=(0, 1.05),
            title="prefix hit ratio over time")
    _share_time(ax1, result)
    ax1.grid(True, alpha=0.3)
    hits_by_tier = pd.Series({t: result.summary["tiers"][t].get("chunk_hits", 0) for t in result.tiers})
    lookups_total = result.summary.get("chunk_lookups") or 0
    if lookups_total:
        colors = _colors(result.tiers)
        ax2.bar(hits_by_tier.index, hits_by_tier.to_numpy() / lookups_total,
                color=[colors[t] for t in hits_by_tier.index])
    ax2.set(ylabel="share of chunk lookups", title="hits served by tier")
    fig.suptitle(title(result))
    return fig


def plot_per_rank(result: Result) -> Any:
    """Spread over ranks: each rank's bandwidth per tier and op (markers, readable at any
    rank count), and each rank's read P99 per tier."""
    fig = _figure(figsize=(10, 4))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ranks = result.counters.index.to_numpy()
    window, colors = _window(result), _colors(result.tiers)
    for tier in result.tiers:
        for op, marker, style in zip(mn.OPS, ("o", "s"), ("-", "--"), strict=True):
            col = mn.tier_counter(tier, f"{op}_bytes")
            if col in result.counters and window > 0:
                ax1.plot(ranks, result.counters[col].to_numpy() / window / 1e9, style, marker=marker,
                         color=colors[tier], ms=4, lw=0.8, label=f"{tier} {op}")
    ax1.set(xlabel="rank", ylabel="GB/s (measured window)", title="bandwidth per rank", ylim=(0, None))
    _rank_ticks(ax1, ranks)
    ax1.grid(True, alpha=0.3)
    if ax1.lines:
        ax1.legend(fontsize="x-small", ncol=2)
    p = result.percentiles
    for tier in result.tiers:
        name = mn.tier_op(tier, "read")
        rows = p[(p["histogram"] == name) & (p["rank"] != "all")]
        if len(rows) and rows["p99_ms"].notna().any():
            ax2.plot(rows["rank"].astype(int), rows["p99_ms"], marker="o", ms=4, color=colors[tier],
                     label=f"{tier} read P99")
    ax2.set(xlabel="rank", ylabel="ms", yscale="log", title="read P99 per rank")
    _plain(ax2.yaxis)
    _rank_ticks(ax2, ranks)
    ax2.grid(True, which="both", alpha=0.3)
    if ax2.lines:
        ax2.legend(fontsize="x-small")
    fig.suptitle(title(result))
    return fig


def _colors(tiers: Sequence[str]) -> dict[str, str]:
    """One colour per tier in every figure."""
    return {t: f"C{i}" for i, t in enumerate(tiers)}


def plot_report(result: Result, out_dir: PathLike | None = None) -> dict[str, Any]:
    """The first-look figures (latency tail per tier, request latency per QoS class against
    its SLOs, bandwidth over time, hit rates, per-rank spread), as ``{name: Figure}``, and
    written as PNGs into ``out_dir`` when given (then the keys are the PNG paths). Uses no
    pyplot state, so it is safe in a notebook and without a display."""
    figures = {"latency_tail.png": plot_latency(result), "qos_latency.png": plot_qos(result),
               "bandwidth.png": plot_bandwidth(result), "hit_rates.png": plot_hit_rates(result),
               "per_rank.png": plot_per_rank(result)}
    for fig in figures.values():
        fig.tight_layout()
    if out_dir is None:
        return figures
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    return {_save(fig, out_dir, name): fig for name, fig in figures.items()}


def _bin_widths(starts: Any, interval_s: float, window_s: float) -> np.ndarray:
    """Each bin's length in the measured window: the last bin of a run is partial, and
    dividing its bytes by a whole interval would show a false drop at the end."""
    starts = np.asarray(starts, dtype=float)
    if window_s <= 0:
        return np.full(starts.shape, interval_s)
    return np.clip(window_s - starts, 1e-3 * interval_s, interval_s)


def _save(fig: Any, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    return path
