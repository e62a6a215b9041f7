"""The derived figures of summary.json, recomputed independently from the per-rank records in
result.h5 (counters, environment, elapsed times, calibration records), so a wrong formula
in the summary cannot hide behind a test that only checks that a key exists.

Two short one-rank runs of `python -m mpi_kvbench`, started together, bounded by a request
count (never by seconds), with the same seed and workload: one user holding one long
conversation (every turn's prompt is the previous turn's context plus a follow-up of at most
16 tokens), tiers large enough that nothing is ever dropped.

* ``cold``: storage preconditioned to half its slots, calibration on, no warm-up;
* ``warm``: an unmeasured warm-up first (however many requests it served: at least one).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

OBJ = 16 * 24_576                    # tiny-1b, 16-token chunks: bytes of one object
CHUNK_TOKENS = 16
TIERS = ("hbm", "dram", "storage")
SLOTS = {"hbm": 12, "dram": 40, "storage": 800}
REQUESTS = 4                         # --max-requests of both runs
PRECONDITION = 0.5
CALIBRATE_GB = 0.01
IO_DEPTH = 2
SYSTEM_PROMPT_TOKENS = 1024
FOLLOW_UP_MAX = 16
CHATBOT_OUTPUT_MAX = 200             # the chatbot template's largest answer (tokens)
ARGS = ["--duration", "0", "--max-requests", str(REQUESTS), "--seed", "7",
        "--model", "tiny-1b", "--chunk-tokens", str(CHUNK_TOKENS), "--io-depth", str(IO_DEPTH),
        "--gpu-mem-gb", str(SLOTS["hbm"] * OBJ / 1e9), "--cpu-mem-gb", str(SLOTS["dram"] * OBJ / 1e9),
        "--storage-capacity-gb", str(SLOTS["storage"] * OBJ / 1e9),
        "--set", "workload.users=1",
        "--set", "workload.templates={chatbot: 1, coding: 0, document: 0}",
        "--set", "workload.max_turns=1000",
        "--set", f"workload.system_prompt_tokens={SYSTEM_PROMPT_TOKENS}",
        "--set", "workload.follow_up_tokens_min=1",
        "--set", f"workload.follow_up_tokens_max={FOLLOW_UP_MAX}"]
VARIANTS = {
    "cold": ["--precondition", str(PRECONDITION),
             "--set", "run.calibrate=true", "--set", f"run.calibrate_gb={CALIBRATE_GB}"],
    "warm": ["--set", "run.warmup_s=1"],   # > the first request's latest arrival (0.5 s)
}


def strings(ds) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in ds[()]]


class Result:
    """One finished run: summary.json and the parts of result.h5 the figures come from."""

    def __init__(self, out_dir: Path) -> None:
        self.summary = json.loads((out_dir / "summary.json").read_text())
        with h5py.File(out_dir / "result.h5", "r") as f:
            self.counter_names = strings(f["counters/names"])
            self.counters = f["counters/per_rank"][()]
            self.hist_names = strings(f["histograms/names"])
            self.hist_counts = f["histograms/merged"][()].sum(axis=1)
            self.elapsed_ns = f["ranks/elapsed_ns"][()]
            self.env = [json.loads(e) for e in strings(f["ranks/environment"])]
            self.calibration = json.loads(f.attrs["calibration"])

    def per_rank(self, name: str) -> np.ndarray:
        """A counter per rank; zeros when no rank recorded it (names are a union)."""
        if name not in self.counter_names:
            return np.zeros(len(self.env), dtype=np.int64)
        return self.counters[:, self.counter_names.index(name)]

    def total(self, name: str) -> int:
        return int(self.per_rank(name).sum())

    def leaders(self, name: str) -> int:
        """Summed over TP-group leaders: figures every shard of a group shares count once."""
        return int(sum(v for v, e in zip(self.per_rank(name), self.env, strict=True)
                       if e["tp_rank"] == 0))

    def window_s(self) -> float:
        return float(self.elapsed_ns.max()) / 1e9

    def tier_env(self, level: str) -> list[dict]:
        return [t for e in self.env for t in e["tiers"] if t["level"] == level]

    def misses(self) -> int:
        return self.leaders("chunk_lookups") - self.leaders("chunk_hits")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Result]:
    """Both runs at once (the warm one mostly waits), so the module costs one run's time."""
    root = tmp_path_factory.mktemp("figures")
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "mpi_kvbench", *ARGS, *extra, "--results-dir", str(root / "results"),
         "--run-name", name, "--cache-dir", str(root / f"cache-{name}")],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, extra in VARIANTS.items()}
    out = {}
    for name, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert proc.returncode == 0, f"{name}: {err[-3000:]}"
        out[name] = Result(root / "results" / name)
    return out


@pytest.fixture(scope="module")
def cold(runs: dict[str, Result]) -> Result:
    return runs["cold"]


@pytest.fixture(scope="module")
def warm(runs: dict[str, Result]) -> Result:
    return runs["warm"]


@pytest.fixture(params=list(VARIANTS))
def run(request, runs: dict[str, Result]) -> Result:
    return runs[request.param]


def test_the_runs_are_what_the_figures_assume(run: Result) -> None:
    """The deterministic claims below need: one rank, nothing dropped, hits from every tier."""
    assert len(run.env) == 1 and run.summary["complete"] is True
    assert run.summary["object_bytes"] == OBJ
    for t in TIERS:
        assert run.total(f"{t}.drops") == 0, t
        assert run.total(f"{t}.chunk_hits") > 0, t
    assert [e["slots"] for e in run.tier_env("storage")] == [SLOTS["storage"]]


def test_gbps_busy_is_each_ranks_bytes_over_its_busy_time(run: Result) -> None:
    """GB/s = bytes/ns: per rank, read + write bytes over the time the tier had I/O in flight,
    summed over ranks; busy_s is a rank's mean busy time."""
    for t in TIERS:
        moved = run.per_rank(f"{t}.read_bytes") + run.per_rank(f"{t}.write_bytes")
        busy = run.per_rank(f"{t}.busy_ns")
        assert busy.all() and moved.all(), t
        want = sum(float(m) / float(b) for m, b in zip(moved, busy, strict=True))
        fig = run.summary["tiers"][t]
        assert fig["gbps_busy"] == pytest.approx(want, rel=1e-3, abs=1e-4), t
        assert fig["busy_s"] == pytest.approx(float(busy.mean()) / 1e9, abs=1e-4), t
        # bytes moved while busy can never be slower than the same bytes over the whole window
        assert fig["gbps_busy"] >= fig["read_gbps"] + fig["write_gbps"] - 2e-4, t


def test_tokens_from_cache_are_hit_chunks_over_the_window(run: Result) -> None:
    """Each hit chunk serves chunk_tokens tokens; the window is the longest rank's phase."""
    window = run.window_s()
    total = 0
    for t in TIERS:
        hits = run.leaders(f"{t}.chunk_hits")
        fig = run.summary["tiers"][t]
        assert fig["chunk_hits"] == hits, t
        assert fig["tokens_from_cache_per_s"] == pytest.approx(hits * CHUNK_TOKENS / window,
                                                               rel=1e-3, abs=0.01), t
        total += hits
    assert total == run.leaders("chunk_hits") > 0


def test_potential_caching_follows_each_nodes_working_set(run: Result) -> None:
    """A node's storage working set (its ranks' peak storage occupancy) against its memory."""
    working: dict[str, int] = {}
    memory: dict[str, int] = {}
    for e, peak in zip(run.env, run.per_rank("storage.peak_used_bytes"), strict=True):
        working[e["host"]] = working.get(e["host"], 0) + int(peak)
        memory[e["host"]] = e["memory_bytes"]
    want = any(0 < ws < memory[h] for h, ws in working.items())
    assert want is True      # a few hundred MB on any machine that runs the tests: not vacuous
    assert run.summary["potential_caching"] is want


def test_cpu_per_gb_separates_payload_generation(run: Result) -> None:
    """The I/O path's CPU is the process's minus the payload generator's, per GB of all tiers."""
    cpu_s = run.total("cpu.process_us") / 1e6
    gen_s = run.total("cpu.generation_us") / 1e6
    assert 0 < gen_s < cpu_s     # decode writes fresh payload, so the generator always ran
    gb = sum(run.total(f"{t}.{op}_bytes") for t in TIERS for op in ("read", "write")) / 1e9
    cpu = run.summary["cpu"]
    assert cpu["io_path_s_per_gb"] == pytest.approx((cpu_s - gen_s) / gb, rel=1e-3, abs=1e-4)
    assert cpu["process_s_per_gb"] == pytest.approx(cpu_s / gb, rel=1e-3, abs=1e-4)
    generated_gb = run.total("payload.generated_bytes") / 1e9
    assert cpu["generation_s_per_gb"] == pytest.approx(gen_s / generated_gb, rel=1e-3, abs=1e-4)
    assert cpu["payload_stalls"] == run.total("payload.stalls")
    # small objects: the ring is the 64 MiB floor in whole objects, too big to need growing
    assert list(run.per_rank("payload.ring_bytes")) == [-(-(64 << 20) // OBJ) * OBJ] * len(
        run.per_rank("payload.ring_bytes"))
    assert cpu["payload_stall_s"] == pytest.approx(run.total("payload.stall_ns") / 1e9, abs=1e-3)


def test_calibration_summary_is_all_bytes_over_the_slowest_rank(cold: Result) -> None:
    """Every rank calibrated at once, so the aggregate is their bytes over the slowest time;
    each rank moved what was asked (run.calibrate_gb, capped by the tier) in whole objects."""
    records = cold.calibration
    assert len(records) == len(cold.env)
    asked = min(SLOTS["storage"] * OBJ, int(CALIBRATE_GB * 1e9))
    storage = cold.tier_env("storage")
    for rec, tier in zip(records, storage, strict=True):
        assert rec["bytes"] == asked // OBJ * OBJ
        assert rec["block_bytes"] == OBJ and rec["io_depth"] == IO_DEPTH
        assert rec["o_direct"] is tier["o_direct"]
        assert rec["read_gbps"] > 0 and rec["write_gbps"] > 0
    cal = cold.summary.get("calibration")
    assert cal is not None
    assert (cal["ranks"], cal["block_bytes"], cal["io_depth"]) == (len(records), OBJ, IO_DEPTH)
    total = sum(r["bytes"] for r in records)
    for op in ("read", "write"):
        slowest_ns = max(r["bytes"] / r[f"{op}_gbps"] for r in records)
        assert cal[f"{op}_gbps"] == pytest.approx(total / slowest_ns, rel=1e-3, abs=1e-4), op


def test_no_calibration_unless_asked(warm: Result) -> None:
    assert warm.calibration == []
    assert warm.summary.get("calibration") is None


def test_precondition_fills_the_storage_tier_before_measuring(cold: Result) -> None:
    """Preconditioning writes share x slots objects no request asks for, unmeasured: the tier's
    peak holds them plus every object the measured phase wrote there (nothing is dropped),
    while the measured counters hold only the measured requests' writes."""
    (storage,) = cold.tier_env("storage")
    target = int(PRECONDITION * storage["slots"])
    assert target > 0
    writes = cold.total("storage.write_ops")
    assert cold.total("storage.peak_used_bytes") == (target + writes) * OBJ
    assert cold.total("storage.write_bytes") == writes * OBJ
    assert not [n for n in cold.hist_names if "precondition" in n]
    assert [int(v) for v in cold.per_rank("requests_completed")] == [REQUESTS]
    assert cold.summary["requests_completed"] == REQUESTS


def test_warm_up_is_not_counted(warm: Result) -> None:
    """The measured phase counts only its own requests, however many the warm-up served."""
    assert [int(v) for v in warm.per_rank("requests_completed")] == [REQUESTS]
    assert warm.leaders("group.requests_completed") == REQUESTS
    assert warm.summary["requests_completed"] == REQUESTS
    assert int(warm.hist_counts[warm.hist_names.index("request.e2e")]) == REQUESTS
    # the tiers still hold what the warm-up wrote: the first prompt alone is more objects than
    # HBM and DRAM hold, so storage holds more than the measured phase wrote to it
    first_prompt = SYSTEM_PROMPT_TOKENS // CHUNK_TOKENS
    spill = first_prompt - sum(e["slots"] for t in ("hbm", "dram") for e in warm.tier_env(t))
    assert spill > 0
    writes = warm.total("storage.write_ops")
    assert warm.total("storage.peak_used_bytes") >= (spill + writes) * OBJ


def test_a_warm_cache_hits_what_a_cold_one_must_compute(cold: Result, warm: Result) -> None:
    """One user, one conversation: a cold run's first prompt (the system prompt and more) misses
    entirely; after a warm-up every measured prompt finds all earlier context, missing at most
    the new follow-up (one chunk) and, on the first, the one turn the warm-up's deadline
    skipped (its follow-up and answer)."""
    cold_floor = SYSTEM_PROMPT_TOKENS // CHUNK_TOKENS
    skipped = (CHUNK_TOKENS - 1 + 2 * FOLLOW_UP_MAX + CHATBOT_OUTPUT_MAX) // CHUNK_TOKENS
    warm_ceiling = skipped + (REQUESTS - 1)
    assert warm_ceiling < cold_floor
    assert cold.misses() >= cold_floor
    assert warm.leaders("chunk_hits") > 0
    assert warm.misses() <= warm_ceiling
    assert warm.summary["prefix_hit_ratio"] > cold.summary["prefix_hit_ratio"]
