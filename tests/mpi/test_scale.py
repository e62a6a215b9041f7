"""Reductions at scale under a real ``mpirun -n 8``: ``run.per_rank_detail: summary``
keeps the merged figures of ``full`` while dropping every rank's bucket counts and series;
the footprint (set-up phases, peak resident memory) is in the result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_mpirun import MPIRUN, OBJ, REQUESTS, SMALL, names, run_ok

from mpi_kvbench import analysis
from mpi_kvbench.metrics import PERCENTILES, percentile

pytestmark = pytest.mark.skipif(MPIRUN is None, reason="no mpirun: pip install -e '.[mpi]'")
HERE = Path(__file__).parent
RANKS = 8


def test_both_details_reduce_one_data_set_to_the_same_merged_figures(tmp_path: Path) -> None:
    """The same per-rank metrics reduced both ways: merged datasets identical, and each
    equal to a sum (min, max) over the full file's per-rank records, computed here."""
    proc = subprocess.run([MPIRUN, "-n", str(RANKS), sys.executable, str(HERE / "collect_both.py"),
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with h5py.File(tmp_path / "full.h5") as full, h5py.File(tmp_path / "summary.h5") as summ:
        assert full.attrs["per_rank_detail"] == "full" and summ.attrs["per_rank_detail"] == "summary"
        hn = names(full["histograms"])
        assert hn == names(summ["histograms"]) and "handoff" in hn   # the union of names
        per_rank = full["histograms/per_rank"][()]
        assert per_rank.shape[:2] == (RANKS, len(hn)) and "per_rank" not in summ["histograms"]
        for key in ("merged", "merged_min_ns", "merged_max_ns", "merged_sum_ns"):
            np.testing.assert_array_equal(full[f"histograms/{key}"][()], summ[f"histograms/{key}"][()])
        np.testing.assert_array_equal(full["histograms/merged"][()], per_rank.sum(axis=0))
        mins, maxs, sums = (full[f"histograms/per_rank_{k}_ns"][()] for k in ("min", "max", "sum"))
        np.testing.assert_array_equal(full["histograms/merged_min_ns"][()], mins.min(axis=0))
        np.testing.assert_array_equal(full["histograms/merged_max_ns"][()], maxs.max(axis=0))
        np.testing.assert_array_equal(full["histograms/merged_sum_ns"][()], sums.sum(axis=0))
        handoff = hn.index("handoff")   # recorded by odd ranks only
        assert (per_rank[::2, handoff] == 0).all() and (per_rank[1::2, handoff] > 0).any()

        # summary keeps per rank the count and the percentiles of the rank's own counts
        count = summ["histograms/per_rank_count"][()]
        np.testing.assert_array_equal(count, per_rank.sum(axis=-1))
        np.testing.assert_array_equal(count.sum(axis=0), summ["histograms/merged"][()].sum(axis=1))
        pcts = summ["histograms/per_rank_percentiles_ns"][()]
        assert list(summ["histograms/per_rank_percentiles_ns"].attrs["percentiles"]) == list(PERCENTILES)
        for r in range(RANKS):
            for h in range(len(hn)):
                want = [percentile(per_rank[r, h], q, mins[r, h], maxs[r, h]) for q in PERCENTILES.values()]
                np.testing.assert_array_equal(pcts[r, h], want)

        cn = names(full["counters"])
        assert cn == names(summ["counters"]) and "only_rank_3" in cn
        rows = full["counters/per_rank"][()]
        np.testing.assert_array_equal(full["counters/merged"][()], rows.sum(axis=0))
        np.testing.assert_array_equal(summ["counters/merged"][()], rows.sum(axis=0))
        assert rows[:, cn.index("requests_completed")].tolist() == [10 + r for r in range(RANKS)]

        sn = names(full["timeseries"])
        series = full["timeseries/per_rank"][()]
        assert series.shape[-1] == 5 + RANKS - 1 and "per_rank" not in summ["timeseries"]
        want = series.sum(axis=0)
        peak = sn.index("queue_delay_ms_max")
        want[peak] = series[:, peak].max(axis=0)    # a per-second maximum merges by MAX
        np.testing.assert_array_equal(summ["timeseries/merged"][()], want)
        np.testing.assert_array_equal(full["timeseries/merged"][()], want)

    # the analysis module reads both: the same merged rows; per-rank rows of single
    # histograms alike too (rollups have no per-rank percentiles in summary detail)
    a, b = analysis.load(tmp_path / "full.h5"), analysis.load(tmp_path / "summary.h5")
    pa, pb = a.percentiles, b.percentiles
    for df in (pa, pb):
        assert set(df["histogram"]) >= set(hn)
    single = pa["histogram"].isin(hn)
    key = ["histogram", "rank"]
    left = pa[single].set_index(key).sort_index()
    right = pb[pb["histogram"].isin(hn)].set_index(key).sort_index()
    assert len(left) == len(right) == (RANKS + 1) * len(hn)
    np.testing.assert_allclose(left.drop(columns=["tier", "op", "phase", "rollup"]).to_numpy(float),
                               right.drop(columns=["tier", "op", "phase", "rollup"]).to_numpy(float),
                               rtol=0, atol=0, equal_nan=True)
    np.testing.assert_array_equal(a.counters.to_numpy(), b.counters.to_numpy())
    merged_ts = a.timeseries.groupby(["series", "second"], observed=True)["value"].sum()
    rows_b = b.timeseries.set_index(["series", "second"])["value"]
    assert (b.timeseries["rank"] == -1).all()
    requests = merged_ts.xs("requests", level="series").to_numpy()
    np.testing.assert_array_equal(requests, rows_b.xs("requests", level="series").to_numpy())
    with pytest.raises(KeyError, match="per_rank_detail"):
        analysis.histogram_counts(b, "storage.read.prefill", rank=1)


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, Path]]:
    """The same 8-rank run (TP 2, seed 7) with each detail."""
    out = {}
    for detail in ("full", "summary"):
        tmp = tmp_path_factory.mktemp(detail)
        summary, f = run_ok(tmp, detail, RANKS, "--tensor-parallel", "2", "--seed", "7",
                            "--set", f"run.per_rank_detail={detail}")
        f.close()
        out[detail] = (summary, tmp / "res" / detail / "result.h5")
    return out


def test_eight_ranks_summary_detail_has_the_merged_figures_of_full(both_runs) -> None:
    """Latencies differ between two runs; what a seed fixes (operations, bytes, requests,
    samples per histogram) must not, nor may a merged figure differ from its parts."""
    (s_full, p_full), (s_summ, p_summ) = both_runs["full"], both_runs["summary"]
    assert s_full["requests_completed"] == s_summ["requests_completed"] == REQUESTS * RANKS // 2
    for tier in s_full["tiers"]:
        for k in ("read_bytes", "write_bytes", "read_ops", "write_ops", "chunk_hits"):
            assert s_full["tiers"][tier][k] == s_summ["tiers"][tier][k], (tier, k)
    with h5py.File(p_full) as full, h5py.File(p_summ) as summ:
        hn = names(full["histograms"])
        assert hn == names(summ["histograms"]) and "group.e2e" in hn
        per_rank = full["histograms/per_rank"][()]
        np.testing.assert_array_equal(per_rank.sum(axis=0), full["histograms/merged"][()])
        count = summ["histograms/per_rank_count"][()]
        np.testing.assert_array_equal(count.sum(axis=0), summ["histograms/merged"][()].sum(axis=1))
        np.testing.assert_array_equal(count, per_rank.sum(axis=-1))     # same samples per rank
        np.testing.assert_array_equal(summ["histograms/merged_sum_ns"][()],
                                      summ["histograms/per_rank_sum_ns"][()].sum(axis=0))
        np.testing.assert_array_equal(summ["histograms/merged_max_ns"][()],
                                      summ["histograms/per_rank_max_ns"][()].max(axis=0))
        group = hn.index("group.e2e")   # the TP-group maximum stays on the group leaders
        assert (count[1::2, group] == 0).all() and count[::2, group].tolist() == [REQUESTS] * 4
        cn = names(summ["counters"])
        rows = summ["counters/per_rank"][()]
        np.testing.assert_array_equal(summ["counters/merged"][()], rows.sum(axis=0))
        assert "per_rank" not in summ["timeseries"] and "per_rank" not in summ["histograms"]
        assert summ["timeseries/merged"][()][names(summ["timeseries"]).index("requests")].sum() \
            == rows[:, cn.index("requests_completed")].sum()
    assert p_summ.stat().st_size < p_full.stat().st_size


def test_peak_memory_and_set_up_phases_are_in_the_result(both_runs) -> None:
    summary, path = both_runs["summary"]
    with h5py.File(path) as f:
        cn = names(f["counters"])
        rows = f["counters/per_rank"][()]
        env = [json.loads(e) for e in f["ranks/environment"][()]]
    peak = rows[:, cn.index("peak_rss_bytes")]
    assert summary["peak_rss_bytes"]["per_rank"] == peak.tolist()
    assert summary["peak_rss_bytes"]["max"] == peak.max()
    # above what the rank touched: the interpreter and imports plus the memory tiers it
    # filled (every HBM and DRAM slot is written); below a bound no tiny run should reach
    touched = [sum(t["capacity_bytes"] for t in e["tiers"] if t["level"] in ("hbm", "dram"))
               for e in env]
    imports = rows[:, cn.index("memory.imports_rss_bytes")]
    assert (imports > 10 << 20).all()
    assert (peak >= imports + np.array(touched)).all()
    assert (peak < (1 << 30)).all(), peak
    assert min(touched) >= 2 * OBJ
    setup = summary["setup_s"]
    assert {"imports", "start", "tiers", "engine", "sync", "total"} <= set(setup)
    phases = [n for n in cn if n.startswith("setup.")]
    per_rank_total = rows[:, [cn.index(n) for n in phases]].sum(axis=1) / 1e6
    assert setup["total"] == pytest.approx(per_rank_total.max(), abs=2e-3)
    for n in phases:   # each phase: its slowest rank, from the per-rank counters
        assert setup[n[len("setup."):-len("_us")]] == round(rows[:, cn.index(n)].max() / 1e6, 3), n
    assert all(v >= 0 for v in setup.values())


def test_a_bad_detail_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mpi_kvbench", *SMALL, "--duration", "0",
                           "--max-requests", "1", "--set", "run.per_rank_detail=some",
                           "--results-dir", str(tmp_path / "r")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: run.per_rank_detail='some': use one of full, summary"]
