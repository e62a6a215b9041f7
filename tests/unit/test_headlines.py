"""The token, IOPS, mean-latency and per-group figures of summary.json, checked against
numbers worked out by hand here (never by calling the summary's helpers), so a formula
that counts every rank instead of the group leaders, bytes instead of operations, or the
wrong window fails.

The hand-built result: two TP groups of two ranks (ranks 0-1 are group 0, ranks 2-3 are
group 1), shards that disagree on purpose (a real group's shards move the same tokens;
here they do not, so counting a non-leader shows), elapsed 2, 1.5, 4 and 3 s (window 4 s).
Then two real one-rank runs, recomputed from result.h5's per-rank records.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mpi_kvbench.metrics import Histogram
from mpi_kvbench.results.collected import Collected
from mpi_kvbench.results.summary import RunFacts, render, summarize

PCTS = {"p50", "p95", "p99", "p999", "p9999"}
MS = 1_000_000
ELAPSED_NS = [2_000_000_000, 1_500_000_000, 4_000_000_000, 3_000_000_000]
CHUNK_TOKENS, OBJECTS_PER_CHUNK = 256, 32        # layer layout: 8 tokens per object
COUNTERS = {                                     # per rank 0, 1, 2, 3
    "storage.read_ops": [10, 11, 7, 9],
    "storage.write_ops": [20, 21, 5, 4],
    "storage.read_bytes": [10 * 4096, 11 * 4096, 7 * 4096, 9 * 4096],
    "storage.write_bytes": [20 * 4096, 21 * 4096, 5 * 4096, 4 * 4096],
    "hbm.read_ops": [100, 100, 60, 60],
    "hbm.write_ops": [30, 30, 10, 10],
    "prompt_tokens": [1000, 1000, 300, 300],
    "output_tokens": [50, 49, 20, 20],
    "requests_completed": [6, 5, 4, 3],          # per shard: each leader finished one more
    "group.requests_completed": [5, 0, 3, 0],
    "batch.inflight_ns": [3_000_000_000, 9_000_000_000, 2_000_000_000, 7_000_000_000],
    "batch.max_inflight": [4, 6, 2, 3],
}
HISTOGRAMS = {                                   # samples (ns) per rank 0, 1, 2, 3
    "storage.read.prefill": [[1 * MS, 1 * MS, 1 * MS], [9 * MS], [], [2 * MS]],
    "storage.read.decode": [[], [], [5 * MS], []],
    "storage.write.prefill": [[1 * MS], [3 * MS], [], []],
    "hbm.read.prefill": [[1_000], [1_000], [1_000], [1_000]],
}


def run_facts(chunk_tokens: int = CHUNK_TOKENS, objects_per_chunk: int = OBJECTS_PER_CHUNK) -> RunFacts:
    return RunFacts(
        run_name="t", run_id="t", command_line="", config_yaml="", seed=0, start_time="",
        tensor_parallel=2, replicas=2, nodes=1, model="m", bytes_per_token_per_rank=1,
        object_bytes=4096, chunk_tokens=chunk_tokens, objects_per_chunk=objects_per_chunk,
        mla_mode=None, layout="layer", workload="synthetic", workload_info={}, payload_mode="fresh",
        tiers=["hbm", "storage"], calibration=[], prefill_groups=0, stonewall=False,
        qos_metric="e2e", qos_targets_ms={})


def collected(counters: dict[str, list[int]] = COUNTERS, elapsed_ns: list[int] = ELAPSED_NS) -> Collected:
    """A ``Collected`` as the reductions would leave it for four ranks (TP 2 x 2)."""
    ranks = len(elapsed_ns)
    hist_names = sorted(HISTOGRAMS)
    per_rank = [[Histogram() for _ in hist_names] for _ in range(ranks)]
    for j, name in enumerate(hist_names):
        for r, samples in enumerate(HISTOGRAMS[name]):
            per_rank[r][j].record_many(np.array(samples, dtype=np.int64))
    merged = [sum((per_rank[r][j] for r in range(ranks)), Histogram()) for j in range(len(hist_names))]

    def stat(attr: str, hists: list[Histogram]) -> np.ndarray:
        return np.array([getattr(h, attr) for h in hists], dtype=np.int64)

    counter_names = sorted(counters)
    env = [{"rank": r, "host": "h", "memory_bytes": 1, "group": r // 2, "tp_rank": r % 2,
            "tiers": [{"level": "hbm", "emulated": True}, {"level": "storage", "o_direct": True}]}
           for r in range(ranks)]
    return Collected(
        hist_names=hist_names, merged=np.stack([h.counts for h in merged]),
        merged_min_ns=stat("min_ns", merged), merged_max_ns=stat("max_ns", merged),
        merged_sum_ns=stat("sum_ns", merged),
        per_rank=np.stack([[h.counts for h in row] for row in per_rank]),
        per_rank_min_ns=np.stack([stat("min_ns", row) for row in per_rank]),
        per_rank_max_ns=np.stack([stat("max_ns", row) for row in per_rank]),
        per_rank_sum_ns=np.stack([stat("sum_ns", row) for row in per_rank]),
        counter_names=counter_names,
        counters=np.array([[counters[n][r] for n in counter_names] for r in range(ranks)], np.int64),
        series_names=[], series=np.zeros((ranks, 0, 0)), elapsed_ns=np.array(elapsed_ns, np.int64),
        env=env)


@pytest.fixture(scope="module")
def summary() -> dict:
    return summarize(collected(), run_facts())


def test_storage_tokens_count_leader_ops_times_tokens_per_object(summary: dict) -> None:
    """Leaders' reads 10 + 7 and writes 20 + 5 = 42 objects of 256 / 32 = 8 tokens, over
    4 s. Counting every rank gives 83 objects; counting bytes / 4 KiB the same; ignoring
    the layer layout 32x as much; the leader's own elapsed time another figure."""
    assert summary["storage_throughput_tokens_per_s"] == pytest.approx(42 * 8 / 4.0)   # 84.0
    chunked = summarize(collected(), run_facts(objects_per_chunk=1))
    assert chunked["storage_throughput_tokens_per_s"] == pytest.approx(42 * 256 / 4.0)


def test_served_tokens_count_each_group_once(summary: dict) -> None:
    """Prompt + output tokens of the leaders: 1000 + 50 + 300 + 20 = 1370 over 4 s."""
    assert summary["avg_throughput_tokens_per_s"] == pytest.approx(1370 / 4.0)   # 342.5


def test_iops_count_every_rank_over_the_window(summary: dict) -> None:
    """Every rank's operations (each shard is real I/O) over the longest rank's 4 s."""
    storage, hbm = summary["tiers"]["storage"], summary["tiers"]["hbm"]
    assert storage["read_iops"] == pytest.approx((10 + 11 + 7 + 9) / 4.0)      # 9.25
    assert storage["write_iops"] == pytest.approx((20 + 21 + 5 + 4) / 4.0)     # 12.5
    assert hbm["read_iops"] == pytest.approx(320 / 4.0)
    assert hbm["write_iops"] == pytest.approx(80 / 4.0)


def test_mean_latency_is_the_pooled_exact_mean(summary: dict) -> None:
    """storage.read pools prefill and decode: 1+1+1+9+2+5 = 19 ms over 6 samples. A bucket
    midpoint (1 ms lands in a bucket whose middle is 1.0015 ms), a mean of per-rank means
    or a single phase gives another figure."""
    lat = summary["tiers"]["storage"]["latency_ms"]
    assert lat["read"]["mean"] == pytest.approx(round(19 / 6, 4), abs=1e-9)     # 3.1667
    assert lat["write"]["mean"] == pytest.approx(2.0, abs=1e-9)                 # (1 + 3) / 2
    assert summary["tiers"]["hbm"]["latency_ms"]["read"]["mean"] == pytest.approx(0.001, abs=1e-9)
    assert set(lat["read"]) == PCTS | {"mean"}                                  # percentiles kept


def test_empty_histogram_has_no_mean() -> None:
    counters = {**COUNTERS, "dram.read_ops": [0, 0, 0, 0]}
    facts = dataclasses.replace(run_facts(), tiers=["hbm", "dram", "storage"])
    lat = summarize(collected(counters), facts)["tiers"]["dram"]["latency_ms"]
    assert lat["read"]["mean"] is None and lat["write"]["mean"] is None


def test_groups_come_from_their_leaders(summary: dict) -> None:
    """Group 0's leader (rank 0): 3 s of request-time over its own 2 s = 1.5 in flight on
    average, 4 at most; group 1's (rank 2): 2 s over 4 s = 0.5, 2 at most. Dividing by the
    window, or reading the second shard, gives other figures."""
    assert summary["groups"] == [
        {"group": 0, "leader_rank": 0, "requests_completed": 5,
         "batch_occupancy_mean": pytest.approx(1.5), "batch_occupancy_max": 4},
        {"group": 1, "leader_rank": 2, "requests_completed": 3,
         "batch_occupancy_mean": pytest.approx(0.5), "batch_occupancy_max": 2},
    ]
    assert sum(g["requests_completed"] for g in summary["groups"]) == summary["requests_completed"]


def test_occupancy_is_none_without_the_engine_counters() -> None:
    """Today's engine records no ``batch.*`` counters: no occupancy rather than a zero."""
    counters = {k: v for k, v in COUNTERS.items() if not k.startswith("batch.")}
    groups = summarize(collected(counters), run_facts())["groups"]
    assert [(g["requests_completed"], g["batch_occupancy_mean"], g["batch_occupancy_max"])
            for g in groups] == [(5, None, None), (3, None, None)]


def test_no_window_gives_no_rates() -> None:
    s = summarize(collected(elapsed_ns=[0, 0, 0, 0]), run_facts())
    assert s["storage_throughput_tokens_per_s"] is None and s["avg_throughput_tokens_per_s"] is None
    assert s["tiers"]["storage"]["read_iops"] is None
    assert [g["batch_occupancy_mean"] for g in s["groups"]] == [None, None]


def test_console_shows_the_token_figures(summary: dict) -> None:
    text = render(summary)
    assert "84 tokens/s moved" in text and "342 tokens/s served" in text   # 342.5 rounds to even


# -- real runs ------------------------------------------------------------------------------

RUN_ARGS = ["--duration", "0", "--model", "tiny-1b", "--io-depth", "2", "--gpu-mem-gb", "0.005",
            "--cpu-mem-gb", "0.01", "--storage-capacity-gb", "0.2", "--run-name", "x"]
LAYERS = 12                                      # tiny-1b
RUNS = {   # name: (chunk tokens, objects per chunk, extra flags)
    "chunk": (16, 1, ["--max-requests", "6", "--chunk-tokens", "16", "--set", "workload.users=3"]),
    # layer layout: 24 / 12 = 2 tokens per object (checks run.facts() passes the layout on)
    "layer": (24, LAYERS, ["--max-requests", "3", "--chunk-tokens", "24", "--set", "workload.users=3",
                           "--set", "kv.layout=layer",
                           "--set", "workload.templates={chatbot: 1, coding: 0, document: 0}"]),
}


def strings(ds) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in ds[()]]


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both runs at once (each is ~2 s), each in its own directory."""
    tmp = tmp_path_factory.mktemp("headlines")
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "mpi_kvbench", *RUN_ARGS, *extra, "--cache-dir", str(tmp / name / "c"),
         "--results-dir", str(tmp / name / "r")], cwd=tmp, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for name, (_, _, extra) in RUNS.items()}
    for name, p in procs.items():
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, (name, err[-3000:])
    return {name: tmp / name / "r" / "x" for name in RUNS}


@pytest.mark.parametrize("name", list(RUNS))
def test_real_run_figures_follow_the_per_rank_records(real_runs: dict[str, Path], name: str) -> None:
    h5py = pytest.importorskip("h5py")
    chunk_tokens, objects_per_chunk, _ = RUNS[name]
    run_dir = real_runs[name]
    s = json.loads((run_dir / "summary.json").read_text())
    with h5py.File(run_dir / "result.h5", "r") as f:
        counter_names = strings(f["counters/names"])
        per_rank = f["counters/per_rank"][()]
        elapsed = f["ranks/elapsed_ns"][()]
        env = [json.loads(e) for e in strings(f["ranks/environment"])]

    def counter(n: str, ranks: list[int]) -> int:
        return int(per_rank[ranks, counter_names.index(n)].sum()) if n in counter_names else 0

    every = list(range(len(env)))
    leaders = [i for i, e in enumerate(env) if e["tp_rank"] == 0]
    window_s = elapsed.max() / 1e9
    assert s["layout"] == name
    storage_ops = counter("storage.read_ops", leaders) + counter("storage.write_ops", leaders)
    assert storage_ops > 0
    assert s["storage_throughput_tokens_per_s"] == pytest.approx(
        storage_ops * chunk_tokens / objects_per_chunk / window_s, rel=1e-4, abs=0.01)
    served = counter("prompt_tokens", leaders) + counter("output_tokens", leaders)
    assert served > 0
    assert s["avg_throughput_tokens_per_s"] == pytest.approx(served / window_s, rel=1e-4, abs=0.01)
    for tier in ("hbm", "dram", "storage"):
        for op in ("read", "write"):
            iops = counter(f"{tier}.{op}_ops", every) / window_s
            assert s["tiers"][tier][f"{op}_iops"] == pytest.approx(iops, rel=1e-4, abs=0.01), (tier, op)
    assert [g["group"] for g in s["groups"]] == [0]
    assert s["groups"][0]["requests_completed"] == s["requests_completed"] > 0


def test_trace_mode_occupancy_is_over_the_phase_on_its_own_clock() -> None:
    """Trace mode counts request-time on its virtual clock and says how long the phase was
    on it (``batch.clock_ns``): group 0's 3 s over 6 s of trace time is 0.5 in flight, not
    3 s over the 2 s of wall time the phase took; a rank without it keeps its elapsed."""
    clock = [6_000_000_000, 6_000_000_000, 0, 0]
    counters = {**COUNTERS, "batch.clock_ns": clock}
    groups = summarize(collected(counters), run_facts())["groups"]
    inflight = COUNTERS["batch.inflight_ns"]
    want = [inflight[0] / clock[0], inflight[2] / ELAPSED_NS[2]]   # leaders 0 and 2
    assert want == [0.5, 0.5] and ELAPSED_NS[0] != clock[0]        # the wall time would give 1.5
    assert [g["batch_occupancy_mean"] for g in groups] == [pytest.approx(w) for w in want]
