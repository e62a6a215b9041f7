"""Trace readers on small files written here in each real format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mpi_kvbench.chunks import chunk_keys
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.registry import WORKLOADS
from mpi_kvbench.workloads.mooncake import prefix_reuse
from mpi_kvbench.workloads.sharegpt import tokenizer


def workload(kind: str, path: Path, **params):
    p = WORKLOADS.params(kind, {"trace": str(path), **params}, "workload")
    return WORKLOADS.load(kind)(p, 11)


def test_sharegpt_turns_extend_one_chain_and_shared_system_prompts_share_chunks(
        tmp_path: Path) -> None:
    system = "You are a careful assistant. " * 40
    convs = [
        {"id": "a", "conversations": [
            {"from": "system", "value": system},
            {"from": "human", "value": "first question " * 100},
            {"from": "gpt", "value": "first answer " * 60},
            {"from": "human", "value": "second question " * 80},
            {"from": "gpt", "value": "second answer " * 30}]},
        {"id": "b", "conversations": [
            {"from": "system", "value": system},
            {"from": "user", "value": "other question " * 90},
            {"from": "chatgpt", "value": "other answer " * 20}]},
        {"id": "bad", "conversations": "not a list"},
    ]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(convs))
    w = workload("sharegpt", path)
    reqs = list(w.requests())
    assert len(reqs) == 3
    a1, a2, b1 = reqs
    name, count = tokenizer()
    assert a1.output_tokens == count("first answer " * 60)
    assert a1.prompt_tokens == count(system) + count("first question " * 100)
    # the second turn's prompt is the first turn's prompt and answer plus the new message
    assert a2.segments[: len(a1.context_after())] == a1.context_after()
    ka1, ka2 = chunk_keys(a1.segments, 64), chunk_keys(a2.segments, 64)
    assert ka2[: len(ka1)] == ka1
    # both conversations open with the same system prompt: its whole chunks are shared
    shared = count(system) // 64
    kb = chunk_keys(b1.segments, 64)
    assert shared > 0 and kb[:shared] == ka1[:shared] and kb[shared] != ka1[shared]
    assert a1.user == a2.user != b1.user
    assert w.info()["skipped"] == 1 and w.info()["conversations"] == 2
    assert w.info()["tokenizer"] == name
    assert all(r2.arrival_s > r1.arrival_s for r1, r2 in zip(reqs, reqs[1:], strict=False))


def test_sharegpt_truncated_file_loads_every_whole_conversation(tmp_path: Path) -> None:
    convs = [{"id": str(i), "conversations": [{"from": "human", "value": f"q{i} " * 50},
                                              {"from": "gpt", "value": f"a{i} " * 50}]}
             for i in range(5)]
    text = json.dumps(convs)
    cut = text.index('{"id": "4"') + 30          # in the middle of the fifth conversation
    path = tmp_path / "cut.json"
    path.write_text(text[:cut])
    w = workload("sharegpt", path)
    assert len(list(w.requests())) == 4
    info = w.info()
    assert info["truncated"] is True and info["skipped"] == 1 and info["conversations"] == 4


BURST_V1 = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,1000,200,1200,Conversation log
1,ChatGPT,300,20,320,Conversation log
2,GPT-4,0,0,0,Conversation log
3,GPT-4,700,100,800,API log
"""
BURST_V2 = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type,Session ID,Elapsed time
0,ChatGPT,500,100,600,Conversation log,s1,2.0
1,ChatGPT,400,50,450,Conversation log,s2,1.0
4,ChatGPT,900,80,980,Conversation log,s1,2.5
"""


def test_burstgpt_without_sessions_every_row_is_its_own_user(tmp_path: Path) -> None:
    path = tmp_path / "b1.csv"
    path.write_text(BURST_V1)
    w = workload("burstgpt", path, speedup=2.0)
    reqs = list(w.requests())
    assert [r.prompt_tokens for r in reqs] == [300, 700, 1000]       # sorted by time
    assert [r.output_tokens for r in reqs] == [20, 100, 200]
    assert [r.arrival_s for r in reqs] == [0.0, 1.0, 2.0]            # (t - 1 s) / 2
    assert len({r.user for r in reqs}) == 3
    assert w.info()["skipped"] == 1 and w.info()["sessions"] is False


def test_burstgpt_sessions_are_conversations(tmp_path: Path) -> None:
    path = tmp_path / "b2.csv"
    path.write_text(BURST_V2)
    w = workload("burstgpt", path)
    first, other, second = list(w.requests())
    assert first.user == second.user != other.user
    assert second.segments[:2] == first.context_after()
    assert second.prompt_tokens == 900          # 500 + 100 held, plus 300 new
    assert w.info()["sessions"] is True


def mooncake_file(tmp_path: Path) -> tuple[Path, list[tuple[int, list[int]]]]:
    records = [(0, 1500, [1, 2, 3]), (100, 1200, [1, 2, 9]), (200, 2048, [1, 2, 3, 4]),
               (250, 700, [5, 6]), (300, 3000, [1, 2, 3, 4, 7, 8])]
    lines = [json.dumps({"timestamp": t, "input_length": n, "output_length": 16, "hash_ids": h})
             for t, n, h in records]
    lines.insert(2, '{"timestamp": 150, "input_length": ')      # a broken line
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, [(n, h) for _, n, h in records]


def test_mooncake_blocks_and_shared_hash_ids(tmp_path: Path) -> None:
    path, _ = mooncake_file(tmp_path)
    w = workload("mooncake", path, speedup=1000.0)
    reqs = list(w.requests())
    assert len(reqs) == 5 and w.info()["skipped"] == 1
    assert [r.prompt_tokens for r in reqs] == [1500, 1200, 2048, 700, 3000]
    assert [r.arrival_s for r in reqs] == pytest.approx([0, 0.0001, 0.0002, 0.00025, 0.0003])
    k0, k1 = chunk_keys(reqs[0].segments, 256), chunk_keys(reqs[1].segments, 256)
    assert k0[:4] == k1[:4]             # blocks 1 and 2 are shared: four 256-token chunks


def test_prefix_reuse_by_hand() -> None:
    # request 2 reuses 4 of its 4 chunks, request 3 five of its 8 (block 3 held 1500 tokens)
    records = [(1500, [1, 2, 3]), (1200, [1, 2, 9]), (2048, [1, 2, 3, 4])]
    assert prefix_reuse(records, 256) == pytest.approx(9 / 17)
    assert prefix_reuse([(1024, [1, 2])], 256) == 0.0


def test_reported_hit_ratio_equals_the_trace_prefix_reuse(tmp_path: Path) -> None:
    """An unbounded cache (a null tier with room for everything) must hit exactly the
    reuse the hash ids promise."""
    path, records = mooncake_file(tmp_path)
    out = tmp_path / "res"
    proc = subprocess.run(
        [sys.executable, "-m", "mpi_kvbench", "--workload", "mooncake", "--trace", str(path),
         "--model", "tiny-1b", "--chunk-tokens", "128", "--duration", "0", "--gpu-mem-gb", "0",
         "--cpu-mem-gb", "0", "--storage-capacity-gb", "1000", "--set", "tiers.storage.kind=null",
         "--trace-speedup", "1000", "--results-dir", str(out), "--run-name", "mc"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "mc" / "summary.json").read_text())
    assert summary["requests_completed"] == 5
    assert summary["prefix_hit_ratio"] == pytest.approx(prefix_reuse(records, 128), abs=1e-6)
    assert summary["prefix_hit_ratio"] > 0.3


def test_azure_timestamps_with_seven_fraction_digits(tmp_path: Path) -> None:
    path = tmp_path / "az.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2023-11-16 18:15:46.6805900,4808,10\n"
                    "2023-11-16 18:15:48.1805900,1000,20\n"
                    "garbage,10,10\n")
    w = workload("azure", path)
    reqs = list(w.requests())
    assert [r.prompt_tokens for r in reqs] == [4808, 1000]
    assert [r.arrival_s for r in reqs] == pytest.approx([0.0, 1.5])
    assert w.info()["skipped"] == 1


def test_replay_cycles_and_poisson_retiming(tmp_path: Path) -> None:
    path = tmp_path / "az.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2023-11-16 18:15:46.0,100,10\n2023-11-16 18:15:48.0,100,10\n")
    reqs = list(workload("azure", path, replay_cycles=3).requests())
    assert len(reqs) == 6 and len({r.index for r in reqs}) == 6
    # each cycle starts one span plus one mean gap (2 s + 2 s) after the one before
    assert [r.arrival_s for r in reqs] == pytest.approx([0, 2, 4, 6, 8, 10])
    assert len({r.user for r in reqs}) == 6
    rated = [r.arrival_s for r in workload("azure", path, request_rate=50.0,
                                           replay_cycles=100).requests()]
    gaps = [b - a for a, b in zip(rated, rated[1:], strict=False)]
    assert all(g > 0 for g in gaps)
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 50, rel=0.2)


def test_same_seed_same_qos_classes(tmp_path: Path) -> None:
    path, _ = mooncake_file(tmp_path)
    a = [r.qos for r in workload("mooncake", path).requests()]
    b = [r.qos for r in workload("mooncake", path).requests()]
    assert a == b


@pytest.mark.parametrize("kind,params,field", [
    ("mooncake", {"trace": ""}, "workload.trace"),
    ("mooncake", {"trace": "/nonexistent/x.jsonl"}, "workload.trace"),
    ("azure", {"speedup": 0}, "workload.speedup"),
    ("azure", {"replay_cycles": 0}, "workload.replay_cycles"),
    ("burstgpt", {"request_rate": -1}, "workload.request_rate"),
    ("sharegpt", {"request_rate": 0}, "workload.request_rate"),
    ("azure", {"qos_mix": {"gold": 1}}, "workload.qos_mix.gold"),
])
def test_bad_parameters_are_one_line_errors(tmp_path: Path, kind: str, params: dict,
                                            field: str) -> None:
    real = tmp_path / "t.txt"
    real.write_text("x\n")
    section = {"trace": str(real), **params}
    with pytest.raises(ConfigError) as err:
        WORKLOADS.params(kind, section, "workload")
    assert field in str(err.value) and "\n" not in str(err.value)


def test_a_file_in_the_wrong_format_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "wrong.csv"
    path.write_text("a,b,c\n1,2,3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mpi_kvbench", "--workload", "azure", "--trace", str(path),
         "--results-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "TIMESTAMP" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
