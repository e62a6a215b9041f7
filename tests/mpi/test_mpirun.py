"""End-to-end runs under a real ``mpirun``: several processes, one coordinated result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpi_kvbench.metrics import percentile

HERE = Path(__file__).parent
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="no mpirun: pip install -e '.[mpi]'")

OBJ = 512 * 1024           # the model below, 512-token chunks: 512 KiB objects


def gb(objects: int, obj: int = OBJ) -> str:
    """A tier capacity of ``objects`` objects, as the flag takes it."""
    return str((objects * obj + 1000) / 1e9)


# A small model (2 layers, 2 KV heads of 64, fp16: 1 KiB of KV per token) in long chunks,
# and tiers of a few objects: every tier fills, demotes and is read back within a few
# requests, with a dozen or so storage operations per rank, eight at a time. Each run's
# work is set by counts, not seconds, and kept small in operations as well as bytes: on a
# disk another job keeps busy one storage operation can take the better part of a second.
MINI = ["--set", "models.mini.layers=2", "--set", "models.mini.kv_heads=2",
        "--set", "models.mini.head_dim=64", "--model", "mini"]
TIERS = [*MINI, "--chunk-tokens", "512", "--gpu-mem-gb", gb(2), "--cpu-mem-gb", gb(4),
         "--storage-capacity-gb", gb(16), "--io-depth", "8"]
# chatbot users only (0.1-0.5 s think times, the shortest prompts), two per rank: with
# REQUESTS each their second turn reads the first back, from every tier
CHATBOT = ["--set", "workload.templates={chatbot: 1, coding: 0, document: 0}"]
SMALL = [*TIERS, "--users", "8", *CHATBOT]
REQUESTS = 4               # per TP group, every run_ok run


def mpirun(n: int, *args: str, cwd: Path, env: dict | None = None, timeout: float = 600):
    cmd = [MPIRUN, "-n", str(n), sys.executable, "-m", "mpi_kvbench", *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return proc, time.monotonic() - t0


def run_ok(tmp: Path, name: str, n: int = 4, *extra: str, base: list[str] = SMALL
           ) -> tuple[dict, h5py.File]:
    proc, _ = mpirun(n, *base, "--duration", "0", "--max-requests", str(REQUESTS), "--results-dir",
                     str(tmp / "res"), "--run-name", name, "--cache-dir",
                     str(tmp / "cache" / "{rank}"), *extra, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp / "res" / name
    summary = json.loads((out / "summary.json").read_text())
    return summary, h5py.File(out / "result.h5", "r")


def names(group: h5py.Group) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else n for n in group["names"][()]]


FourRanks = Callable[[int], Path]


def four_rank_args(tp: int) -> list[str]:
    return ["--tensor-parallel", str(tp), "--seed", "7"]


@pytest.fixture(scope="module")
def four_rank_run(tmp_path_factory: pytest.TempPathFactory) -> FourRanks:
    """The 4-rank run with TP ``tp`` and seed 7, made once: its directory (results in
    res/tp<tp>). Checked for consistency, and rerun to check it is repeatable."""
    made: dict[int, Path] = {}

    def get(tp: int) -> Path:
        if tp not in made:
            tmp = tmp_path_factory.mktemp(f"tp{tp}")
            _, f = run_ok(tmp, f"tp{tp}", 4, *four_rank_args(tp))
            f.close()
            made[tp] = tmp
        return made[tp]
    return get


@pytest.mark.parametrize("tp", [1, 2])
def test_four_ranks_make_one_consistent_result(four_rank_run: FourRanks, tp: int) -> None:
    tmp = four_rank_run(tp)
    out = tmp / "res" / f"tp{tp}"
    summary = json.loads((out / "summary.json").read_text())
    with h5py.File(out / "result.h5", "r") as f:
        env = [json.loads(e) for e in f["ranks/environment"][()]]
        assert sorted(e["rank"] for e in env) == [0, 1, 2, 3]
        assert [e["tp_rank"] for e in env] == [r % tp for r in range(4)]
        assert summary["world_size"] == 4 and summary["tensor_parallel"] == tp
        assert summary["replicas"] == 4 // tp and summary["nodes"] == 1

        # merged histograms are exactly the sum of the per-rank ones
        per_rank, merged = f["histograms/per_rank"][()], f["histograms/merged"][()]
        assert per_rank.shape[0] == 4
        np.testing.assert_array_equal(per_rank.sum(axis=0), merged)

        # every TP group served its whole share: REQUESTS requests each
        cn = names(f["counters"])
        counters = f["counters/per_rank"][()]
        done = counters[:, cn.index("requests_completed")]
        assert list(done) == [REQUESTS] * 4
        assert summary["requests_completed"] == REQUESTS * (4 // tp)

        # a request's group latency is the max over its shards: every percentile of the
        # group histogram is at least that shard's percentile
        hn = names(f["histograms"])
        group_row, shard_row = hn.index("group.e2e"), hn.index("request.e2e")
        for leader in range(0, 4, tp):
            g = per_rank[leader, group_row]
            assert g.sum() == REQUESTS
            for shard in range(leader, leader + tp):
                s = per_rank[shard, shard_row]
                for q in (50, 90, 99, 100):
                    assert percentile(g, q) >= percentile(s, q)

        # summary.json and result.h5 agree
        assert json.loads(f.attrs["summary"]) == summary
        merged_counters = f["counters/merged"][()]
        for tier in summary["tiers"]:
            for op in ("read", "write"):
                value = merged_counters[cn.index(f"{tier}.{op}_bytes")]
                assert summary["tiers"][tier][f"{op}_bytes"] == value
        assert f.attrs["world_size"] == 4

        # one rank per node read its disks' counters (here one node: rank 0, local rank 0),
        # beside the storage bytes of every rank of the node
        watchers = [e["rank"] for e in env if e["device_io"] is not None]
        assert watchers == [0]
        dev = summary["device_io"]
        assert len(dev["nodes"]) == 1 and dev["nodes"][0]["devices"] == env[0]["device_io"]["devices"]
        if dev["n/a"] is None:
            assert dev["tool_write_bytes"] == summary["tiers"]["storage"]["write_bytes"] > 0
            assert dev["tool_read_bytes"] == summary["tiers"]["storage"]["read_bytes"]
        assert summary["verify"]["verdict"] == "off" and summary["verify"]["stamps_checked"] > 0
    assert not any((tmp / "cache").rglob("*.slab")), "the run left its files behind"


def test_same_seed_same_operations_per_rank(four_rank_run: FourRanks, tmp_path: Path) -> None:
    """A second run with the same seed (and everything else) as the TP 1 run above does the
    same operations on every rank."""
    first = four_rank_run(1) / "res" / "tp1" / "result.h5"
    _, again = run_ok(tmp_path, "again", 4, *four_rank_args(1))
    runs = []
    for f in (h5py.File(first, "r"), again):
        with f:
            cn = names(f["counters"])
            keep = [i for i, n in enumerate(cn) if n.endswith(("_ops", "_bytes", "chunk_hits"))
                    and not n.startswith(("payload", "cpu", "memory", "peak_rss"))]
            runs.append(({cn[i] for i in keep}, f["counters/per_rank"][()][:, keep]))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][1].sum() > 0


def test_tp_that_does_not_divide_the_world_is_one_clear_error(tmp_path: Path) -> None:
    proc, took = mpirun(4, *SMALL, "--tensor-parallel", "8", "--duration", "0", "--max-requests",
                        str(REQUESTS), "--results-dir", str(tmp_path / "r"), cwd=tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "tensor_parallel" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert took < 300                  # no rank hangs; generous on a busy machine
    assert not (tmp_path / "r").exists()


def test_bad_path_on_one_rank_stops_everyone(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "c2").write_text("a file where rank 2 wants its directory")
    proc, took = mpirun(4, *SMALL, "--duration", "0", "--max-requests", str(REQUESTS),
                        "--results-dir", str(tmp_path / "r"),
                        "--cache-dir", str(tmp_path / "cache" / "c{rank}"), cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rank 2" in errors[0] and "tiers.storage.path" in errors[0]
    assert "Traceback" not in proc.stderr
    assert took < 300                  # no rank hangs; generous on a busy machine
    assert (tmp_path / "cache" / "c2").read_text().startswith("a file")   # untouched
    assert not list((tmp_path / "cache").rglob("*.slab"))


def test_a_rank_failing_mid_run_stops_all_and_keeps_a_partial_result(tmp_path: Path) -> None:
    env = {"PYTHONPATH": os.pathsep.join([str(HERE / "plugins"), os.environ.get("PYTHONPATH", "")])}
    # far more requests than the run can serve before the others should have stopped: a
    # rank that missed the stop would run for hours (past the timeout); stopping takes
    # seconds, a few minutes on a machine another job keeps busy
    proc, took = mpirun(4, *SMALL, "--duration", "0", "--max-requests", "100000",
                        "--results-dir", str(tmp_path / "r"),
                        "--run-name", "broken", "--cache-dir", str(tmp_path / "c" / "{rank}"),
                        "--set", "tiers.storage.kind=faulty", "--gpu-mem-gb", "0",
                        "--cpu-mem-gb", "0", cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rank 1" in errors[0] and "No space left" in errors[0]
    assert took < 300, "the other ranks did not stop promptly"
    summary = json.loads((tmp_path / "r" / "broken" / "summary.json").read_text())
    assert summary["complete"] is False and "rank 1" in summary["errors"][0]
    with h5py.File(tmp_path / "r" / "broken" / "result.h5") as f:
        assert bool(f.attrs["complete"]) is False
    assert not list((tmp_path / "c").rglob("*.slab"))


def test_mla_one_writer_group_shares_one_file(tmp_path: Path) -> None:
    mla = 256 * 70_272    # deepseek-v3, 256-token chunks: 17 MiB objects
    sizes = [gb(n, mla) for n in (1, 2, 24)]
    # two chatbot users per group, two turns each: the second turn reads its first turn's
    # chunks back, mostly from storage (HBM and DRAM hold three objects). io_depth 4: the
    # payload ring holds io_depth + 2 objects this large, 6 rather than 10
    proc, _ = mpirun(4, *TIERS, "--users", "4", *CHATBOT,
                     "--model", "deepseek-v3", "--chunk-tokens", "256", "--io-depth", "4",
                     "--tensor-parallel", "2",
                     "--set", "kv.mla_mode=one_writer", "--gpu-mem-gb", sizes[0], "--cpu-mem-gb",
                     sizes[1], "--storage-capacity-gb", sizes[2], "--duration", "0",
                     "--max-requests", str(REQUESTS), "--results-dir",
                     str(tmp_path / "r"), "--run-name", "mla", "--cache-dir",
                     str(tmp_path / "c" / "{group}"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "r" / "mla" / "summary.json").read_text())
    assert summary["mla_mode"] == "one_writer"
    # the latent is not split by TP: every rank's object holds the whole latent
    assert summary["bytes_per_token_per_rank"] == 70272
    with h5py.File(tmp_path / "r" / "mla" / "result.h5") as f:
        cn = names(f["counters"])
        c = f["counters/per_rank"][()]
        writes = c[:, cn.index("storage.write_bytes")]
        # operations, not bytes: nothing makes a reader wait for its leader's write, so on a
        # busy machine a read can reach the shared file first and get no bytes back
        reads = c[:, cn.index("storage.read_ops")]
        env = [json.loads(e) for e in f["ranks/environment"][()]]
    assert writes[0] > 0 and writes[2] > 0          # group leaders write
    assert writes[1] == 0 and writes[3] == 0        # the others only read
    assert reads[1] > 0 and reads[3] > 0
    paths = [e["tiers"][-1]["path"] for e in env]
    assert paths[0] == paths[1] != paths[2] == paths[3]
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*"))


def test_disaggregated_every_prefill_written_chunk_is_read_by_decode(tmp_path: Path) -> None:
    # storage large enough that no prefill slot is reused before its decode read
    summary, f = run_ok(tmp_path, "pd", 4, "--set", "engine.prefill_groups=2",
                        "--set", "io.verify=true", "--storage-capacity-gb", gb(200))
    with f:
        cn = names(f["counters"])
        c = f["counters/per_rank"][()]
    col = {n: c[:, i] for i, n in enumerate(cn)}
    prefill, decode = [0, 1], [2, 3]
    # prefill ranks write new chunks only to storage, and hand every one of them over
    assert col["storage.write_ops"][prefill].sum() > 0
    assert col["handoff_chunks_sent"][prefill].sum() >= col["storage.write_ops"][prefill].sum()
    # the decode ranks read every handed-over chunk back from the prefill ranks' files
    assert col["handoff_chunks"][decode].sum() == col["handoff_chunks_sent"][prefill].sum()
    assert col["storage.read_bytes"][decode].sum() >= col["storage.write_bytes"][prefill].sum()
    assert "verify_mismatches" not in col or col["verify_mismatches"].sum() == 0
    assert col["verify_checked"][decode].sum() > 0
    # requests complete on the decode side; every prefilled request was completed
    assert col["requests_prefilled"][prefill].sum() == 2 * REQUESTS
    assert summary["requests_completed"] == 2 * REQUESTS
    assert summary["disaggregated"]["handoff_latency_ms"]["p50"] > 0


def test_a_trace_read_on_rank_0_is_served_whole_by_the_groups(tmp_path: Path) -> None:
    trace = tmp_path / "mc.jsonl"
    lines = [json.dumps({"timestamp": 10 * i, "input_length": 300 + 97 * (i % 9),
                         "output_length": 8, "hash_ids": [i % 5, 100 + i % 3, 1000 + i]})
             for i in range(37)]
    trace.write_text("\n".join(lines) + "\n")
    summary, f = run_ok(tmp_path, "trace", 4, "--tensor-parallel", "2", "--workload", "mooncake",
                        "--trace", str(trace), "--max-requests", "0", "--trace-speedup", "100",
                        base=TIERS)
    with f:
        cn = names(f["counters"])
        done = f["counters/per_rank"][()][:, cn.index("requests_completed")]
        info = json.loads(f.attrs["workload_info"])
    assert summary["requests_completed"] == 37 == info["requests"]
    assert done[0] == done[1] and done[2] == done[3]        # a group's ranks serve the same
    assert done[0] + done[2] == 37 and min(done[0], done[2]) > 0


def test_stonewall_ends_every_rank_when_the_first_finishes_its_share(tmp_path: Path) -> None:
    """Users are line numbers: group 0 (even users) gets one request, group 1 gets 100.
    Every operation sleeps 5 ms, one at a time; group 0's one request is 32 writes (8,192
    tokens in 256-token chunks), group 1's are 2 writes each (600 tokens). So group 1
    finishes its first request after ~2 operations and would need ~200 for its share:
    group 0 ends the run in between, by a factor of 6 or more either way, whatever the
    machine's load (both count operations of the same device)."""
    lines = []
    for i in range(201):
        if i % 2 == 0 and i > 0:
            lines.append("not json")                  # skipped, but keeps the numbering
        else:
            lines.append(json.dumps({"timestamp": 0, "input_length": 8192 if i == 0 else 600,
                                     "output_length": 4, "hash_ids": [i, i + 1000]}))
    trace = tmp_path / "sw.jsonl"
    trace.write_text("\n".join(lines) + "\n")
    slow = ["--model", "tiny-1b", "--gpu-mem-gb", "0", "--cpu-mem-gb", "0",
            "--storage-capacity-gb", "100", "--set", "tiers.storage.kind=null",
            "--set", "tiers.storage.latency_us=5000", "--io-depth", "1"]
    summary, f = run_ok(tmp_path, "sw", 2, "--workload", "mooncake", "--trace", str(trace),
                        "--max-requests", "0", "--set", "run.stonewall=true", base=slow)
    f.close()
    sw = summary["stonewall"]
    assert sw["enabled"] is True and sw["ranks_stopped_early"] == 1
    assert 1 < summary["requests_completed"] < 101
    assert sw["first_rank_done_s"] <= sw["last_rank_done_s"]
