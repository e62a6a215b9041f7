"""Suites in-process: the plan and the MLPerf rules, the aggregates and the stability flag,
and the ``datasize`` figures, each against values worked out here."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mpi_kvbench import config as cfgmod
from mpi_kvbench.datasize import datasize
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.results import trials
from mpi_kvbench.suite import CLOSED_FREE, MLPERF_OPTIONS, Request, plan
from mpi_kvbench.workloads.synthetic import SyntheticWorkload

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def option_files() -> dict[str, dict]:
    return {o: yaml.safe_load((CONFIGS / f).read_text()) for o, f in MLPERF_OPTIONS.items()}


def test_closed_refuses_a_changed_seed_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mpi_kvbench", "suite", "--mlperf", "closed",
                           "--seed", "7", "--results-dir", str(tmp_path / "res")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --mlperf closed:")
    assert "run.seed=42" in proc.stderr and "got 7" in proc.stderr
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("change", [["--trials", "2"], ["--duration", "5"], ["--users", "3"],
                                    ["--set", "io.io_depth=4"], ["--storage-capacity-gb", "1"]])
def test_closed_refuses_what_the_rules_fix(change: list[str]) -> None:
    from mpi_kvbench.cli import build_parser, overrides

    args = build_parser().parse_args(["suite", "--mlperf", "closed", *change])
    with pytest.raises(ConfigError, match="--mlperf closed: fixes"):
        plan(Request(mlperf="closed", overrides=overrides(args), trials=args.trials), "t")


def test_closed_takes_the_free_keys_and_plans_three_options_three_trials(tmp_path: Path) -> None:
    over = [{"tiers": {"storage": {"path": str(tmp_path / "kv" / "{rank}")}}},
            {"run": {"results_dir": str(tmp_path / "res"), "precondition": 0.5, "calibrate": True}}]
    p = plan(Request(mlperf="closed", overrides=over), "t")
    assert p.mode == "closed" and p.deviations == []
    assert p.directory == str(tmp_path / "res" / "mlperf-closed-t")
    files = option_files()
    assert [(r.option, r.trial) for r in p.runs] == [(o, t) for o in files for t in (1, 2, 3)]
    for r in p.runs:
        want = files[r.option]
        assert r.cfg.run.seed == 42 and r.cfg.run.duration_s == want["run"]["duration_s"]
        assert r.cfg.model.name == want["model"]["name"]
        assert r.cfg.workload.users == want["workload"]["users"]
        assert r.cfg.run.precondition == 0.5
        assert r.run_dir == str(tmp_path / "res" / "mlperf-closed-t" / f"{r.option}-trial{r.trial}")
    assert all(k.startswith(("run.", "tiers.storage.")) for k in CLOSED_FREE)


def test_open_records_every_deviation() -> None:
    over = [{"run": {"seed": 7}}, {"workload": {"users": 5}}]
    p = plan(Request(mlperf="open", overrides=over, trials=2), "t")
    files = option_files()
    want = [{"option": "*", "key": "trials", "reference": 3, "value": 2}]
    for option, doc in files.items():
        want += [{"option": option, "key": "run.seed", "reference": 42, "value": 7},
                 {"option": option, "key": "workload.users", "reference": doc["workload"]["users"],
                  "value": 5}]
    key = lambda d: (d["option"], d["key"])   # noqa: E731
    assert sorted(p.deviations, key=key) == sorted(want, key=key)
    assert len(p.runs) == 6 and {r.cfg.run.seed for r in p.runs} == {7}


def write_suite(tmp: Path, doc: dict) -> str:
    path = tmp / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_suite_file_overrides_layer_in_order(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("workload: {users: 9}\nio: {io_depth: 3}\n")
    doc = {"trials": 2, "config": "base.yaml", "set": {"io.io_depth": 5, "run.max_requests": 1},
           "runs": [{"name": "a"}, {"name": "b", "set": {"io": {"io_depth": 6}}, "trials": 1}]}
    p = plan(Request(suite_file=write_suite(tmp_path, doc),
                     overrides=[{"run": {"results_dir": str(tmp_path / "r")}}, {"workload": {"users": 2}}]),
             "t")
    assert [(r.option, r.trial, r.cfg.io.io_depth, r.cfg.workload.users) for r in p.runs] == [
        ("a", 1, 5, 2), ("a", 2, 5, 2), ("b", 1, 6, 2)]
    assert p.name == "s-t" and p.directory == str(tmp_path / "r" / "s-t")
    by_name = {"runs": [{"name": "o2", "config": "mlperf-option2"}]}   # a shipped config
    shipped = plan(Request(suite_file=write_suite(tmp_path, by_name)), "t")
    assert shipped.runs[0].cfg.workload.users == option_files()["option2"]["workload"]["users"]
    mixed = plan(Request(suite_file=write_suite(tmp_path, {**doc, "order": "interleaved"})), "t")
    assert [(r.option, r.trial) for r in mixed.runs] == [("a", 1), ("b", 1), ("a", 2)]


@pytest.mark.parametrize("doc, message", [
    ({"runs": []}, "runs: give a list"),
    ({"runs": [{"name": "a"}], "trails": 2}, "did you mean 'trials'"),
    ({"runs": [{"name": "a"}, {"name": "a"}]}, "used twice"),
    ({"runs": [{"name": "a", "set": {"io.io_dept": 2}}]}, "did you mean 'io_depth'"),
    ({"runs": [{"name": "a/b"}]}, "plain name"),
    ({"runs": [{"name": "a\0b"}]}, "NUL"),                         # one folder per run: no NUL
    ({"runs": [{"name": "x" * 201}]}, "201 bytes is too long"),
])
def test_suite_file_mistakes_are_one_line(tmp_path: Path, doc: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan(Request(suite_file=write_suite(tmp_path, doc)), "t")


def fake_run(tmp: Path, name: str, gbps: float, p99: float, complete: bool = True) -> str:
    """A run directory holding just the summary.json figures the suite reads."""
    d = tmp / name
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({
        "complete": complete, "storage_throughput_gbps": gbps,
        "storage_throughput_tokens_per_s": gbps * 1000, "requests_per_s": 2.0,
        "latency_ms": {"group_e2e": {"p95": p99 / 2, "p99": p99}},
        "tiers": {"storage": {"read_gbps": gbps / 4, "write_gbps": 3 * gbps / 4}},
        "storage_health": {"verdict": "PASS"}}))
    return str(d)


def test_aggregates_and_the_stability_flag(tmp_path: Path) -> None:
    info = {"suite": "s", "mode": "suite", "cv_threshold": 0.05, "deviations": [],
            "options": {"steady": {"trials": 3}, "noisy": {"trials": 2}}}
    recs = [{"option": "steady", "trial": t, "run_dir": fake_run(tmp_path, f"s{t}", g, p), "exit_status": 0,
             "error": None} for t, g, p in ((1, 1.00, 10.0), (2, 1.02, 30.0), (3, 0.98, 20.0))]
    recs += [{"option": "noisy", "trial": t, "run_dir": fake_run(tmp_path, f"n{t}", g, 5.0), "exit_status": 0,
              "error": None} for t, g in ((1, 1.0), (2, 1.2))]
    doc = trials.build(info, recs, 4, "a", "b", "cmd")
    steady, noisy = doc["options"]["steady"], doc["options"]["noisy"]
    # 1.00, 1.02, 0.98: mean 1, sample stdev 0.02, CV 2%; 1.0, 1.2: stdev 0.1414, CV 12.9%
    assert steady["aggregate"]["storage_throughput_gbps"]["stdev"] == pytest.approx(0.02)
    assert steady["aggregate"]["storage_throughput_gbps"]["cv"] == pytest.approx(0.02)
    assert noisy["aggregate"]["storage_throughput_gbps"]["cv"] == pytest.approx(math.sqrt(0.02) / 1.1)
    assert steady["stable"] is True and noisy["stable"] is False
    assert noisy["unstable_figures"] == ["storage_throughput_tokens_per_s", "storage_throughput_gbps"]
    assert steady["worst_trial"]["request_e2e_p99_ms"] == {"value": 30.0, "trial": 2}
    assert steady["aggregate"]["storage_write_gbps"]["mean"] == pytest.approx(0.75)
    assert doc["complete"] and doc["rules"]["pass"]
    # a higher threshold calls the noisy set stable; a failed trial fails the rules
    assert trials.build({**info, "cv_threshold": 0.2}, recs, 4, "a", "b", "c")["options"]["noisy"]["stable"]
    recs[-1] = {**recs[-1], "exit_status": 1}
    failed = trials.build(info, recs, 4, "a", "b", "c")
    assert not failed["complete"] and not failed["rules"]["pass"]


def test_one_trial_has_no_spread() -> None:
    assert trials.spread([3.0]) == {"n": 1, "mean": 3.0, "min": 3.0, "max": 3.0, "stdev": None, "cv": None}
    assert trials.spread([None, 2.0, 2.0])["cv"] == 0.0


def test_datasize_from_the_catalogue() -> None:
    # llama3.1-8b: 32 layers x 8 KV heads x 128 x (K, V) x 2 bytes = 131,072 bytes per token;
    # TP 2 halves the heads: 65,536 per rank; 256-token chunks: 16 MiB objects
    cfg = cfgmod.load(None, [{"kv": {"tensor_parallel": 2}},
                             {"workload": {"templates": {"chatbot": 1, "coding": 0, "document": 0}}}])
    s = datasize(cfg, users=10, context_tokens=1000, turns=3, ranks=4)
    obj = 256 * 65536
    assert (s["bytes_per_token"], s["bytes_per_token_per_rank"], s["object_bytes"]) == (131072, 65536, obj)
    assert s["request_bytes_per_rank"] == 4 * obj                  # ceil(1000 / 256) chunks
    # chatbot answers 50-200 tokens (mean 125), follow-ups 64-512 (mean 288):
    # 1000 + 3 x 125 + 2 x 288 = 1951 tokens, 8 chunks
    assert s["session_tokens"] == 1951 and s["session_bytes_per_rank"] == 8 * obj
    # 10 users on 2 replicas: 5 sessions per rank; 4 ranks hold 20 sessions' shards
    assert s["working_set_bytes_per_rank"] == 5 * 8 * obj
    assert s["working_set_bytes_total"] == 4 * 5 * 8 * obj
    # the workload's mean first prompt: chatbot context 512-4096 that holds the 1,024
    # system tokens and at least one more: 514 values give 1,025, 1,026..4,096 themselves
    want = (514 * 1025 + sum(range(1026, 4097))) / 3585
    assert datasize(cfg, 1)["request_tokens"] == pytest.approx(want)
    # ... and what the workload makes: every request a first turn
    w = SyntheticWorkload(dataclasses.replace(cfg.workload, users=2000, max_turns=1), 7)
    made = [r.prompt_tokens for r in itertools.islice(w.requests(), 6000)]
    assert statistics.fmean(made) == pytest.approx(want, rel=0.02)
    # no system prompt: the template's mean itself; RAG documents add theirs
    bare = cfgmod.load(None, [{"workload": {"templates": {"chatbot": 1, "coding": 0, "document": 0},
                                            "system_prompts": 0, "rag_documents": 5,
                                            "rag_per_conversation": 2, "rag_document_tokens": 100}}])
    assert datasize(bare, 1)["request_tokens"] == (512 + 4096) / 2 + 200


def test_datasize_per_layer_objects_round_up_to_4k() -> None:
    # tiny-1b: 12 layers x 4 heads x 128 x 2 x 2 = 24,576 bytes per token; 3-token chunks
    # per layer: 6,144 bytes, stored in 8,192
    cfg = cfgmod.load(None, [{"model": {"name": "tiny-1b"}, "kv": {"chunk_tokens": 3, "layout": "layer"}}])
    s = datasize(cfg, users=1, context_tokens=7, turns=1)
    assert s["object_bytes"] == 8192 and s["objects_per_chunk"] == 12
    # one turn adds one answer: the default mix's mean, 0.5 x 125 + 0.25 x 300 + 0.25 x 500
    assert s["session_tokens"] == 7 + 262.5
    assert s["session_bytes_per_rank"] == math.ceil(269.5 / 3) * 12 * 8192
    assert s["request_bytes_per_rank"] == math.ceil(7 / 3) * 12 * 8192


def test_datasize_cli_prints_json(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mpi_kvbench", "datasize", "--model", "deepseek-v3",
                           "--tensor-parallel", "4", "--users", "2", "--context-tokens", "512",
                           "--turns", "1", "--json"], capture_output=True, text=True, timeout=60,
                          env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    # MLA: one latent of (512 + 64) x 2 bytes per layer, 61 layers, not split by TP
    assert s["bytes_per_token"] == s["bytes_per_token_per_rank"] == 61 * 576 * 2


def test_a_sweep_plans_one_option_per_value_and_draws_its_curve(tmp_path: Path) -> None:
    p = plan(Request(sweep=("workload.users", [2, 8]), trials=2,
                     overrides=[{"run": {"results_dir": str(tmp_path), "max_requests": 1}}]), "t")
    assert p.mode == "sweep" and p.sweep == {"key": "workload.users", "values": [2, 8]}
    assert [(r.option, r.trial, r.cfg.workload.users) for r in p.runs] == [
        ("users-2", 1, 2), ("users-2", 2, 2), ("users-8", 1, 8), ("users-8", 2, 8)]
    recs = [{"option": r.option, "trial": r.trial, "exit_status": 0, "error": None,
             "run_dir": fake_run(tmp_path, f"{r.option}-{r.trial}", g, 1.0)}
            for r, g in zip(p.runs, (1.0, 3.0, 5.0, 7.0), strict=True)]
    doc = trials.build(p.info(), recs, 2, "a", "b", "c")
    assert [(c["value"], c["storage_throughput_gbps"], c["verdicts"]) for c in doc["curve"]] == [
        (2, 2.0, ["PASS", "PASS"]), (8, 6.0, ["PASS", "PASS"])]
    with pytest.raises(ConfigError, match="twice"):
        plan(Request(sweep=("workload.users", [2, 2])), "t")
    with pytest.raises(ConfigError, match="did you mean 'users'"):
        plan(Request(sweep=("workload.user", [2])), "t")


@pytest.mark.parametrize("ranks, message", [(0, "give 1 or more"), (-2, "give 1 or more"),
                                            (3, "give a multiple of --tensor-parallel 2")])
def test_datasize_refuses_a_rank_count_it_cannot_spread_users_over(ranks: int, message: str) -> None:
    cfg = cfgmod.load(None, [{"kv": {"tensor_parallel": 2}}])
    with pytest.raises(ConfigError, match=f"--ranks {ranks}: {message}"):
        datasize(cfg, users=4, ranks=ranks)
