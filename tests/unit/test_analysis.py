"""mpi_kvbench.analysis against a real (small, one-rank) result: the figures a notebook
reads must be the ones in the HDF5 file and in summary.json."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from mpi_kvbench import analysis  # noqa: E402
from mpi_kvbench.results.summary import PERCENTILES as SUMMARY_PERCENTILES  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("analysis")
    obj = 512 * 24_576    # tiny-1b, 512-token chunks: 12 MiB objects; tiers of a few of them
    # bounded by a request count, not by seconds, and a few dozen storage operations, eight
    # at a time: a loaded machine gives the same run, only slower
    cmd = [sys.executable, "-m", "mpi_kvbench", "--duration", "0", "--max-requests", "8",
           "--model", "tiny-1b", "--chunk-tokens", "512", "--results-dir", str(tmp), "--run-name", "a",
           "--cache-dir", str(tmp / "c"), "--gpu-mem-gb", str(2 * obj / 1e9),
           "--cpu-mem-gb", str(4 * obj / 1e9), "--storage-capacity-gb", str(16 * obj / 1e9),
           "--io-depth", "8", "--users", "6",
           "--set", "workload.templates={chatbot: 1, coding: 0, document: 0}"]
    done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp / "a"


@pytest.fixture(scope="module")
def result(run_dir: Path) -> analysis.Result:
    return analysis.load(run_dir / "result.h5")


def _names(ds: h5py.Dataset) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in ds[()]]


def test_load_reads_the_file_and_the_run_directory(run_dir: Path, result: analysis.Result) -> None:
    by_dir = analysis.load(run_dir)
    assert by_dir.path == result.path == str(run_dir / "result.h5")
    assert by_dir.summary == result.summary
    with open(run_dir / "summary.json") as fh:
        assert result.summary == json.load(fh)
    assert result.attrs["schema_version"] == 1
    assert result.attrs["run_name"] == "a" == result.run_name
    assert "tiny-1b" in result.config and result.config == result.attrs["config_yaml"]
    # JSON attributes (booleans, null, mappings) come back as Python values
    assert result.attrs["o_direct"] in (True, False) and result.attrs["mla_mode"] is None
    assert isinstance(result.attrs["workload_info"], dict)
    assert result.errors == [] and result.attrs["complete"] is True
    with pytest.raises(FileNotFoundError):
        analysis.load(run_dir / "missing")


def test_counters_equal_the_hdf5_datasets(run_dir: Path, result: analysis.Result) -> None:
    with h5py.File(run_dir / "result.h5", "r") as f:
        names = _names(f["counters/names"])
        per_rank = f["counters/per_rank"][()]
        merged = f["counters/merged"][()]
    assert list(result.counters.columns) == names
    assert list(result.counters.index) == list(range(per_rank.shape[0])) == [0]
    np.testing.assert_array_equal(result.counters.to_numpy(), per_rank)
    np.testing.assert_array_equal(result.counters_merged[names].to_numpy(), merged)
    assert result.counters_merged["storage.read_ops"] > 0   # the run did reach storage


@pytest.mark.parametrize("tier", ["hbm", "dram", "storage"])
@pytest.mark.parametrize("op", ["read", "write"])
def test_merged_percentiles_equal_the_summary(result: analysis.Result, tier: str, op: str) -> None:
    p = result.percentiles
    row = p[(p["histogram"] == f"{tier}.{op}") & (p["rank"] == "all")]
    assert len(row) == 1
    row = row.iloc[0]
    assert row["count"] == result.counters_merged[f"{tier}.{op}_ops"]
    expected = result.summary["tiers"][tier]["latency_ms"][op]
    for key in SUMMARY_PERCENTILES:
        assert round(float(row[f"{key}_ms"]), 4) == expected[key], key


def test_storage_read_p50_is_the_summary_figure(result: analysis.Result) -> None:
    p = result.percentiles
    row = p[(p["histogram"] == "storage.read") & (p["rank"] == "all")].iloc[0]
    assert row["count"] > 0 and row["rollup"] and row["tier"] == "storage" and row["op"] == "read"
    assert round(row["p50_ms"], 4) == result.summary["tiers"]["storage"]["latency_ms"]["read"]["p50"]
    assert row["min_ms"] <= row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]


def test_request_latency_rows_equal_the_summary(result: analysis.Result) -> None:
    p = result.percentiles
    merged = p[p["rank"] == "all"].set_index("histogram")
    for hist, key in (("request.e2e", "request_e2e"), ("group.e2e", "group_e2e"),
                      ("request.queue", "request_queue")):
        expected = result.summary["latency_ms"][key]
        assert {k: round(merged.loc[hist, f"{k}_ms"], 4) for k in SUMMARY_PERCENTILES} == expected


def test_per_rank_rows_exist_for_every_histogram(run_dir: Path, result: analysis.Result) -> None:
    p = result.percentiles
    with h5py.File(run_dir / "result.h5", "r") as f:
        names = _names(f["histograms/names"])
        per_rank = f["histograms/per_rank"][()]
    rank0 = p[p["rank"] == 0].set_index("histogram")
    assert set(names) <= set(rank0.index)
    for i, name in enumerate(names):
        assert rank0.loc[name, "count"] == per_rank[0, i].sum(), name
    # one rank holds every sample: its rows are the merged rows, exact min/max/mean included
    merged = p[p["rank"] == "all"].set_index("histogram")
    cols = ["count", "mean_ms", "min_ms", "p50_ms", "p99_ms", "max_ms"]
    pd.testing.assert_frame_equal(rank0.loc[names, cols], merged.loc[names, cols])
    split = p.set_index("histogram").loc["storage.write.demote"].iloc[0]
    assert (split["tier"], split["op"], split["phase"]) == ("storage", "write", "demote")


def test_cdf_is_monotone_and_ends_at_one(result: analysis.Result) -> None:
    for rank in ("all", 0):
        c = analysis.cdf(result, "storage.read", rank)
        assert len(c) > 1
        assert (np.diff(c["latency_ms"]) >= 0).all() and (np.diff(c["fraction"]) > 0).all()
        assert c["fraction"].iloc[-1] == pytest.approx(1.0)
        assert 0 < c["fraction"].iloc[0] <= 1.0
    p = result.percentiles
    row = p[(p["histogram"] == "storage.read") & (p["rank"] == "all")].iloc[0]
    c = analysis.cdf(result, "storage.read")
    assert c["latency_ms"].iloc[-1] == pytest.approx(row["max_ms"])   # ends at the true maximum
    below = c[c["latency_ms"] < row["p50_ms"]]["fraction"]
    assert below.empty or below.iloc[-1] < 0.5 + 1e-12
    with pytest.raises(KeyError):
        analysis.cdf(result, "no.such.histogram")


def test_compare_of_one_run_thrice_has_no_spread(run_dir: Path, result: analysis.Result) -> None:
    df = analysis.compare([run_dir, run_dir / "result.h5", result])
    assert list(df.index) == ["a", "a (2)", "a (3)", "mean", "median", "cv"]
    measured = [c for c in df.columns if df.loc[["a", "a (2)", "a (3)"], c].notna().all()]
    assert len(measured) >= 15 and "storage_throughput_gbps" in measured
    for col in measured:
        assert df.loc["cv", col] == 0, col
        assert df.loc["median", col] == df.loc["a", col], col
        assert df.loc["mean", col] == pytest.approx(df.loc["a", col], rel=1e-12), col
    assert df.loc["a", "storage_throughput_gbps"] == result.summary["storage_throughput_gbps"]


def test_compare_cv_is_std_over_mean() -> None:
    runs = [{"run_name": "r", "storage_throughput_gbps": v, "tiers": {}} for v in (1.0, 2.0, 3.0)]
    df = pd.DataFrame([analysis.headline(s) for s in runs])
    assert analysis._cv(df["storage_throughput_gbps"]) == pytest.approx(1.0 / 2.0)


def test_timeseries_sums_equal_the_counters(result: analysis.Result) -> None:
    ts = result.timeseries
    assert list(ts.columns) == ["rank", "second", "series", "value"]
    sums = ts.groupby(["rank", "series"], observed=True)["value"].sum()
    assert result.counters.loc[0, "storage.read_bytes"] > 0
    for name in ("storage.read_bytes", "storage.write_bytes", "storage.read_ops", "chunk_lookups"):
        assert sums.loc[(0, name)] == result.counters.loc[0, name], name


def test_tier_table_is_the_summary(result: analysis.Result) -> None:
    t = analysis.tier_table(result)
    assert list(t.index) == ["hbm", "dram", "storage"]
    for tier in t.index:
        s = result.summary["tiers"][tier]
        assert t.loc[tier, "read_gbps"] == s["read_gbps"]
        assert t.loc[tier, "write_ops"] == s["write_ops"]
        assert t.loc[tier, "read_p99_ms"] == s["latency_ms"]["read"]["p99"]


def test_environment_has_one_row_per_rank(run_dir: Path, result: analysis.Result) -> None:
    env = result.environment
    assert list(env.index) == [0]
    assert env.loc[0, "tp_rank"] == 0 and isinstance(env.loc[0, "host"], str)
    with h5py.File(run_dir / "result.h5", "r") as f:
        assert env.loc[0, "elapsed_s"] == f["ranks/elapsed_ns"][0] / 1e9


@pytest.fixture(scope="module")
def inline(result: analysis.Result) -> dict[str, Any]:
    """plot_report as a notebook calls it: figures only, no files."""
    pytest.importorskip("matplotlib")
    return analysis.plot_report(result)


def test_plot_report_writes_pngs_and_returns_the_figures(result: analysis.Result, tmp_path: Path,
                                                         inline: dict[str, Any]) -> None:
    from matplotlib.figure import Figure

    figures = analysis.plot_report(result, tmp_path / "plots")
    assert len(figures) == 5
    for path, fig in figures.items():
        assert isinstance(fig, Figure)
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n", path
    assert sorted(inline) == sorted(Path(p).name for p in figures)
    # named by what each draws: the latency figure is a tail (share this slow or slower), not a CDF
    assert sorted(inline) == ["bandwidth.png", "hit_rates.png", "latency_tail.png", "per_rank.png",
                              "qos_latency.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(inline)


def test_figures_are_titled_by_run_model_and_ranks(result: analysis.Result, inline: dict[str, Any]) -> None:
    assert analysis.title(result) == "a · tiny-1b, 1 rank"
    for name, fig in inline.items():
        titles = [ax.get_title() for ax in fig.axes] + [fig._suptitle.get_text() if fig._suptitle else ""]
        assert any(t.startswith("a · tiny-1b, 1 rank") for t in titles), name


def test_tail_is_the_share_of_samples_at_or_above(result: analysis.Result) -> None:
    counts = analysis.histogram_counts(result, "storage.read")
    t = analysis.tail(result, "storage.read")
    nz = np.nonzero(counts)[0]
    expected = [counts[i:].sum() / counts.sum() for i in nz]   # bucket i and every one above it
    np.testing.assert_allclose(t["slower"], expected, rtol=1e-12)
    assert t["slower"].iloc[0] == 1.0 and t["slower"].iloc[-1] == counts[nz[-1]] / counts.sum() > 0
    np.testing.assert_array_equal(t["latency_ms"], analysis.cdf(result, "storage.read")["latency_ms"])


def test_qos_figure_marks_each_target_at_one_minus_q(result: analysis.Result) -> None:
    pytest.importorskip("matplotlib")
    fig = analysis.plot_qos(result)
    crosses = {(float(line.get_xdata()[0]), round(float(line.get_ydata()[0]), 9))
               for line in fig.axes[0].lines if line.get_marker() == "x"}
    targets = result.summary["storage_health"]["classes"]
    expected = {(float(c["target_ms"]), round(1 - SUMMARY_PERCENTILES[k] / 100, 9))
                for cls in targets.values() for k, c in cls["checks"].items()}
    assert expected and expected <= crosses


def test_bold_storage_line_integrates_to_the_storage_bytes(result: analysis.Result) -> None:
    pytest.importorskip("matplotlib")
    fig = analysis.plot_bandwidth(result)
    ax = fig.axes[0]
    bold = [line for line in ax.lines if line.get_label() == "storage read + write"]
    assert len(bold) == 1 and bold[0].get_linewidth() > max(
        line.get_linewidth() for line in ax.lines if line is not bold[0])
    x, y = bold[0].get_xdata(), bold[0].get_ydata()
    moved = sum(result.counters_merged[f"storage.{op}_bytes"] for op in ("read", "write"))
    # steps-post: y[i] holds from x[i] to x[i + 1]; the last point only closes the window
    assert float(np.sum(y[:-1] * np.diff(x))) == pytest.approx(moved / 1e9, rel=1e-9)


def test_time_axes_span_the_same_window(result: analysis.Result) -> None:
    pytest.importorskip("matplotlib")
    window = float(result.environment["elapsed_s"].max())
    assert analysis.plot_bandwidth(result).axes[0].get_xlim() == (0, window)
    assert analysis.plot_hit_rates(result).axes[0].get_xlim() == (0, window)


def _tick_texts(fig: Any) -> list[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return [t.get_text() for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
            for t in axis.get_ticklabels(which="both") if t.get_text()]


def test_log_axes_have_plain_tick_labels(result: analysis.Result) -> None:
    pytest.importorskip("matplotlib")
    texts = _tick_texts(analysis.plot_latency(result)) + _tick_texts(analysis.plot_per_rank(result))
    assert texts and not [t for t in texts if "$" in t or "times" in t or "^" in t]
    for t in texts:
        float(t.replace("\u2212", "-"))   # every label is a plain number


def _fake(n_ranks: int) -> analysis.Result:
    """A Result of many ranks built in memory: one rank's figures, scaled per rank."""
    tiers = ["hbm", "dram", "storage"]
    cols = [f"{t}.{op}_bytes" for t in tiers for op in ("read", "write")]
    counters = pd.DataFrame([[(r + 1) * 1e9] * len(cols) for r in range(n_ranks)], columns=cols,
                            index=pd.RangeIndex(n_ranks, name="rank"))
    p = pd.DataFrame([{"histogram": f"{t}.read", "rank": r, "p99_ms": 1.0 + r} for t in tiers
                      for r in range(n_ranks)])
    env = pd.DataFrame({"elapsed_s": [10.0] * n_ranks})
    return analysis.Result("x", {"model": "m", "world_size": n_ranks, "run_name": "many"}, "",
                           {"tiers": {t: {} for t in tiers}}, counters, counters.sum(), p,
                           pd.DataFrame(), env)


@pytest.mark.parametrize("n_ranks, every_rank_labelled", [(12, True), (64, False)])
def test_per_rank_figure_stays_readable_with_many_ranks(n_ranks: int, every_rank_labelled: bool) -> None:
    pytest.importorskip("matplotlib")
    fig = analysis.plot_per_rank(_fake(n_ranks))
    bw, p99 = fig.axes[0], fig.axes[1]
    assert not bw.patches                                  # no bars: 6 x N slivers are unreadable
    assert len(bw.lines) == 6 and all(len(line.get_xdata()) == n_ranks for line in bw.lines)
    storage_read = next(line for line in bw.lines if line.get_label() == "storage read")
    np.testing.assert_allclose(storage_read.get_ydata(), (np.arange(n_ranks) + 1) / 10.0)
    labels = [t for t in _tick_texts(fig)[: len(bw.get_xticklabels())] if t]
    assert (len(labels) == n_ranks) == every_rank_labelled
    assert len(labels) <= 16 and len(p99.lines) == 3


def test_percentiles_handle_an_empty_histogram() -> None:
    row = analysis._row(np.zeros(10, dtype=np.int64), 0, math.inf, None)
    assert row["count"] == 0 and math.isnan(row["p50_ms"]) and math.isnan(row["max_ms"])
