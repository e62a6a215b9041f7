"""The four trace readers, on small files written here in each real format."""

from __future__ import annotations

import io
import json
import math
import random
import sys
import types
from pathlib import Path

import pytest

from mpi_kvbench.errors import ConfigError
from mpi_kvbench.layout import chunk_keys
from mpi_kvbench.registry import WORKLOADS
from mpi_kvbench.workloads.azure import parse_time
from mpi_kvbench.workloads.base import Request
from mpi_kvbench.workloads.mooncake import prefix_reuse
from mpi_kvbench.workloads.sharegpt import JsonArray


def make(kind: str, path: Path, seed: int = 11, **params):
    p = WORKLOADS.params(kind, {"trace": str(path), **params}, "workload")
    return WORKLOADS.load(kind)(p, seed)


def well_formed(reqs: list[Request]) -> None:
    """Open loop, in arrival order, unique indices increasing within each user."""
    assert all(r.think_s is None for r in reqs)
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(reqs, reqs[1:], strict=False))
    assert len({r.index for r in reqs}) == len(reqs)
    last: dict[int, int] = {}
    for r in reqs:
        assert r.session == r.user
        assert r.index > last.get(r.user, -1)
        last[r.user] = r.index


def unbounded_cache_hits(reqs: list[Request], chunk_tokens: int) -> tuple[int, int]:
    """(hits, full chunks) of the prompts through a cache that keeps every chunk."""
    seen: set[int] = set()
    hits = total = 0
    for r in reqs:
        keys = chunk_keys(r.segments, chunk_tokens)
        hits += sum(k in seen for k in keys)
        total += len(keys)
        seen.update(keys)
    return hits, total


def chars4(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


# --- ShareGPT -------------------------------------------------------------------------

SYSTEM = "S" * 1000                        # 250 tokens at chars/4: three whole 64-chunks
CONVERSATIONS = [
    {"id": "a", "conversations": [
        {"from": "system", "value": SYSTEM},
        {"from": "human", "value": "q" * 401},
        {"from": "gpt", "value": "r" * 240},
        {"from": "human", "value": "p" * 90},
        {"from": "gpt", "value": "s" * 33}]},
    {"id": "b", "conversations": [
        {"from": "system", "value": SYSTEM},
        {"from": "user", "value": "u" * 300},
        {"from": "chatgpt", "value": "v" * 80}]},
    {"id": "bad", "conversations": "not a list"},
    {"id": "no-question", "conversations": [{"from": "gpt", "value": "hello"},
                                            {"from": "human", "value": "bye"}]},
    {"id": "odd-role", "conversations": [{"from": "narrator", "value": "x"},
                                         {"from": "human", "value": "y"},
                                         {"from": "gpt", "value": "z"}]},
    {"id": "two-prompts", "conversations": [{"from": "human", "value": "w" * 40},
                                            {"from": "human", "value": "W" * 44},
                                            {"from": "bard", "value": "b" * 12}]},
]


@pytest.fixture
def no_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)     # import tiktoken fails


def test_sharegpt_turns_tokens_and_shared_system_prompt(tmp_path: Path, no_tiktoken) -> None:
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(CONVERSATIONS, indent=1))
    w = make("sharegpt", path)
    reqs = list(w.requests())
    well_formed(reqs)
    assert len(reqs) == 4
    a1, a2, b1, f1 = reqs
    assert a1.prompt_tokens == 250 + 101 and a1.output_tokens == 60
    assert b1.prompt_tokens == 250 + 75 and b1.output_tokens == 20
    # the second turn is the first turn's prompt and answer plus the new message
    assert a2.segments == (*a1.context_after(), a2.segments[-1])
    assert a2.prompt_tokens == 250 + 101 + 60 + 23 and a2.output_tokens == 9
    # two prompts in a row: both are in the request, answered once
    assert f1.prompt_tokens == 10 + 11 and f1.output_tokens == 3
    ka1, ka2, kb1 = (chunk_keys(r.segments, 64) for r in (a1, a2, b1))
    assert ka2[: len(ka1)] == ka1
    assert ka1[:3] == kb1[:3] and ka1[3] != kb1[3]   # the system prompt's whole chunks only
    assert not set(chunk_keys(f1.segments, 8)) & set(chunk_keys(a1.segments, 8))
    assert a1.user == a2.user and len({a1.user, b1.user, f1.user}) == 3
    assert all(b.arrival_s > a.arrival_s for a, b in zip(reqs, reqs[1:], strict=False))
    info = w.info()
    assert info["tokenizer"] == "chars/4" and info["kind"] == "sharegpt"
    assert info["conversations"] == 3 and info["users"] == 3 and info["requests"] == 4
    assert info["skipped"] == 3 and info["truncated"] is False
    assert info["skip_reasons"] == {"an entry without a conversations list": 1,
                                    "a conversation without an answered prompt": 1,
                                    "a message from an unknown role": 1}


def test_sharegpt_replay_cycles_keep_chains_and_sharing_inside_a_cycle(tmp_path: Path,
                                                                        no_tiktoken) -> None:
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(CONVERSATIONS))
    reqs = list(make("sharegpt", path, replay_cycles=2).requests())
    well_formed(reqs)
    assert len(reqs) == 8 and [r.user for r in reqs] == [0, 0, 1, 5, 6, 6, 7, 11]
    a1, a2, b1 = reqs[4:7]
    assert a2.segments == (*a1.context_after(), a2.segments[-1])
    assert chunk_keys(a1.segments, 64)[:3] == chunk_keys(b1.segments, 64)[:3]
    assert not set(chunk_keys(a1.segments, 64)) & set(chunk_keys(reqs[0].segments, 64))


def test_sharegpt_uses_tiktoken_when_it_loads(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    class Words:
        def encode(self, text: str, disallowed_special: tuple = ()) -> list[str]:
            return text.split()

    asked = []
    fake = types.SimpleNamespace(get_encoding=lambda name: asked.append(name) or Words())
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    path = tmp_path / "sg.json"
    path.write_text(json.dumps([{"id": "x", "conversations": [
        {"from": "human", "value": "one two three"}, {"from": "gpt", "value": "four five"}]}]))
    w = make("sharegpt", path)
    (req,) = list(w.requests())
    assert asked == ["cl100k_base"] and w.info()["tokenizer"] == "tiktoken"
    assert req.prompt_tokens == 3 and req.output_tokens == 2


def five_conversations() -> tuple[str, list[dict]]:
    convs = [{"id": str(i), "conversations": [{"from": "human", "value": f"q{i} " * 50},
                                              {"from": "gpt", "value": f"a{i} " * 50}]}
             for i in range(5)]
    return json.dumps(convs), convs


def test_sharegpt_truncated_file_loads_every_whole_conversation(tmp_path: Path) -> None:
    text, _ = five_conversations()
    path = tmp_path / "cut.json"
    path.write_text(text[: text.index('{"id": "4"') + 30])     # inside the fifth
    w = make("sharegpt", path)
    assert len(list(w.requests())) == 4
    info = w.info()
    assert info["conversations"] == 4 and info["skipped"] == 1 and info["truncated"] is True

    path.write_text(text[: text.index('{"id": "3"')])          # cut between two entries
    w = make("sharegpt", path)
    assert len(list(w.requests())) == 3
    assert w.info()["skipped"] == 0 and w.info()["truncated"] is True

    path.write_text(text)
    w = make("sharegpt", path, max_requests=2)
    assert [r.user for r in w.requests()] == [0, 1] and w.info()["truncated"] is False


def test_json_array_reads_piece_by_piece_and_stops_at_the_cut() -> None:
    rng = random.Random(3)
    items = [{"id": i, "text": "".join(rng.choice('ab]["\\,{} é') for _ in range(rng.randrange(30))),
              "n": [rng.random(), None, True]} for i in range(12)]
    parts = [json.dumps(it) for it in items]
    text = "[" + ", ".join(parts) + "]"
    assert list(JsonArray(io.StringIO(text), piece_chars=7)) == json.loads(text)
    starts = [1 + sum(len(q) + 2 for q in parts[:i]) for i in range(len(parts))]
    for cut in range(len(text) + 1):
        reader = JsonArray(io.StringIO(text[:cut]), piece_chars=5)
        got = list(reader)
        whole = sum(s + len(p) <= cut for s, p in zip(starts, parts, strict=True))
        assert got == items[:whole], cut
        inside = any(s < cut < s + len(p) for s, p in zip(starts, parts, strict=True))
        assert reader.partial == inside and reader.closed == (cut == len(text)), cut


def test_json_array_gives_up_after_a_syntax_error(tmp_path: Path) -> None:
    text = '[{"a": 1}, {"b": oops}, {"c": 3}]' + " " * 100
    reader = JsonArray(io.StringIO(text), piece_chars=8, max_entry_chars=16)
    assert list(reader) == [{"a": 1}] and reader.partial
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(CONVERSATIONS[:1])[:-1] + ', {"id": oops}]')
    w = make("sharegpt", path)
    assert len(list(w.requests())) == 2
    assert w.info()["conversations"] == 1 and w.info()["skipped"] == 1


# --- BurstGPT -------------------------------------------------------------------------

V1_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
V1_ROWS = ["5,ChatGPT,1000,200,1200,Conversation log\n",
           "1,ChatGPT,300,20,320,Conversation log\n",
           "2,GPT-4,0,0,0,Conversation log\n",            # failed request: skipped
           "3,GPT-4,700,100,800,API log\n",
           "x,GPT-4,10,10,20,API log\n",                  # unreadable time: skipped
           "\n",                                          # blank: ignored
           "4,GPT-4,50,0,50,API log\n"]                   # no answer: skipped


def test_burstgpt_without_sessions_sorts_by_time(tmp_path: Path) -> None:
    path = tmp_path / "b1.csv"
    path.write_text(V1_HEADER + "".join(V1_ROWS))
    w = make("burstgpt", path, speedup=2.0)
    reqs = list(w.requests())
    well_formed(reqs)
    assert [r.prompt_tokens for r in reqs] == [300, 700, 1000]
    assert [r.output_tokens for r in reqs] == [20, 100, 200]
    assert [r.arrival_s for r in reqs] == [0.0, 1.0, 2.0]            # (t - 1 s) / 2
    assert all(len(r.segments) == 1 for r in reqs) and len({r.user for r in reqs}) == 3
    info = w.info()
    assert info["skipped"] == 3 and info["sessions"] is False and info["in_time_order"] is False
    assert info["requests"] == 3 and info["span_s"] == 4.0
    assert [r.user for r in reqs] == [1, 3, 0]       # a user is its row's number in the file

    def content(rs: list[Request]) -> list[tuple]:
        return [(r.index, r.arrival_s, r.segments, r.output_tokens, r.output_id) for r in rs]

    # the same rows in time order give the same requests (read sequentially)
    path.write_text(V1_HEADER + "".join(V1_ROWS[i] for i in (1, 2, 3, 0)))
    w = make("burstgpt", path, speedup=2.0)
    again = list(w.requests())
    assert content(again) == content(reqs) and w.info()["in_time_order"] is True
    assert [r.user for r in again] == [0, 2, 3]
    # max_requests: the first requests in arrival order, not in file order
    path.write_text(V1_HEADER + "".join(V1_ROWS))
    assert [r.prompt_tokens for r in make("burstgpt", path, max_requests=2).requests()] == [300, 700]


V2 = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type,Session ID,Elapsed time
0,ChatGPT,500,100,600,Conversation log,s1,2.0
1,ChatGPT,400,50,450,Conversation log,s2,1.0
4,ChatGPT,900,80,980,Conversation log,s1,2.5
5,ChatGPT,300,10,310,Conversation log,,1.0
6,ChatGPT,700,20,720,Conversation log,s1,1.0
"""


def test_burstgpt_sessions_are_conversations(tmp_path: Path) -> None:
    path = tmp_path / "b2.csv"
    path.write_text(V2)
    w = make("burstgpt", path)
    reqs = list(w.requests())
    well_formed(reqs)
    t1, other, t2, alone, t3 = reqs
    assert t1.user == t2.user == t3.user and len({t1.user, other.user, alone.user}) == 3
    assert t2.segments[:-1] == t1.context_after() and t3.segments[:-1] == t2.context_after()
    assert t2.prompt_tokens == 900                  # 500 + 100 held, 300 new
    assert t3.prompt_tokens == 981                  # 980 held > 700 logged: one new token
    k1, k2 = chunk_keys(t1.segments, 16), chunk_keys(t2.segments, 16)
    assert k2[: len(k1)] == k1
    assert not set(chunk_keys(other.segments, 16)) & set(k2)
    info = w.info()
    assert info["sessions"] is True and info["conversations"] == 2 and info["users"] == 3


# --- Mooncake -------------------------------------------------------------------------

MOONCAKE = [(0, 1500, [1, 2, 3]), (100, 1200, [1, 2, 9]), (200, 2048, [1, 2, 3, 4]),
            (250, 700, [5, 6, 7, 8]),          # two ids name blocks the prompt lacks
            (300, 3000, [1, 2, 3])]            # too few ids: the last block holds 1976


def mooncake_file(path: Path, records: list[tuple[int, int, list[int]]], junk: bool) -> Path:
    lines = [json.dumps({"timestamp": t, "input_length": n, "output_length": 16, "hash_ids": h})
             for t, n, h in records]
    if junk:
        lines[2:2] = ['{"timestamp": 150, "input_length": ',     # cut off
                      "[1, 2]", "",                               # not an object; blank
                      '{"timestamp": 160, "input_length": 5, "output_length": 1}',
                      '{"timestamp": 170, "input_length": 5, "output_length": 0, "hash_ids": [1]}']
    path.write_text("\n".join(lines) + "\n")
    return path


def test_mooncake_blocks_and_shared_hash_ids(tmp_path: Path) -> None:
    w = make("mooncake", mooncake_file(tmp_path / "mc.jsonl", MOONCAKE, junk=True), speedup=1000)
    reqs = list(w.requests())
    well_formed(reqs)
    assert [r.prompt_tokens for r in reqs] == [1500, 1200, 2048, 700, 3000]
    assert [n for _, n in reqs[0].segments] == [512, 512, 476]
    assert [n for _, n in reqs[3].segments] == [512, 188]
    assert [n for _, n in reqs[4].segments] == [512, 512, 1976]
    assert reqs[4].segments[:2] == reqs[0].segments[:2]
    assert [r.arrival_s for r in reqs] == pytest.approx([0, 1e-4, 2e-4, 2.5e-4, 3e-4])
    k0, k1, k2 = (chunk_keys(r.segments, 128) for r in reqs[:3])
    assert k0[:8] == k1[:8] and k0[8] != k1[8]      # blocks 1 and 2 shared: eight chunks
    assert len(k0) == 11 and k2[:11] == k0       # block 3 of 476 and of 512 tokens agree
    assert len({r.user for r in reqs}) == 5
    info = w.info()
    assert info["skipped"] == 4 and info["requests"] == 5 and info["span_s"] == 0.3
    assert set(info["skip_reasons"]) == {"a line that is not JSON (cut off?)",
                                         "a line that is not a JSON object",
                                         "a record without hash_ids", "zero output_length"}


def test_prefix_reuse_by_hand() -> None:
    # 256: #2 reuses 4 of 4 chunks, #3 five of 8 (the 1500-token prompt covers chunk 4)
    records = [(1500, [1, 2, 3]), (1200, [1, 2, 9]), (2048, [1, 2, 3, 4])]
    assert prefix_reuse(records, 256) == pytest.approx(9 / 17)
    as_json = [{"input_length": n, "hash_ids": h, "timestamp": 0} for n, h in records]
    assert prefix_reuse(as_json, 256) == pytest.approx(9 / 17)
    # 1024 (two blocks a chunk): 0 of 2, 1 of 1, 1 of 2
    assert prefix_reuse([(2048, [1, 2, 3, 4]), (1500, [1, 2, 3]), (3000, [1, 2, 7, 8, 9, 10])],
                        1024) == pytest.approx(2 / 5)
    # a last block longer than 512 is not the same as a further block: 0/5, 5/5, 4/5
    assert prefix_reuse([(1500, [1, 2]), (1500, [1, 2]), (1500, [1, 2, 3])],
                        256) == pytest.approx(9 / 15)
    assert prefix_reuse([(1500, [1, 2, 3]), (1500, [1, 2])], 256) == pytest.approx(4 / 10)
    assert prefix_reuse([(1024, [1, 2])], 256) == 0.0


def random_mooncake(n: int, seed: int) -> list[tuple[int, int, list[int]]]:
    """Requests that extend earlier requests' prefixes, some with too few or too many ids."""
    rng = random.Random(seed)
    out: list[tuple[int, int, list[int]]] = []
    fresh = 1000
    for i in range(n):
        ids = list(rng.choice(out)[2][: rng.randrange(1, 5)]) if out and rng.random() < 0.7 else []
        length = rng.randrange(1, 4000)
        while len(ids) < -(-length // 512) + rng.choice((-1, 0, 0, 0, 1)):
            ids.append(fresh)
            fresh += 1
        out.append((i * 10, length, ids or [fresh]))
    return out


@pytest.mark.parametrize("chunk_tokens", [64, 256, 512, 1024, 100])
def test_prefix_reuse_equals_an_unbounded_cache_of_chunk_keys(tmp_path: Path,
                                                              chunk_tokens: int) -> None:
    records = random_mooncake(80, seed=chunk_tokens)
    reqs = list(make("mooncake", mooncake_file(tmp_path / "r.jsonl", records, junk=False)).requests())
    hits, total = unbounded_cache_hits(reqs, chunk_tokens)
    expected = prefix_reuse([(n, h) for _, n, h in records], chunk_tokens)
    assert hits > 0 and hits / total == pytest.approx(expected, abs=1e-12)


# --- Azure ----------------------------------------------------------------------------

def test_azure_timestamps_and_skips(tmp_path: Path) -> None:
    path = tmp_path / "az.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2023-11-16 18:15:46.6805900,4808,10\n"
                    "2023-11-16 18:15:48.1805900,1000,20\n"
                    "garbage,10,10\n"
                    "2023-11-16 18:15:47,0,5\n"
                    "2023-11-16 19:15:49+01:00,300,7\n"
                    "2023-11-16T18:15:50.5Z,200,3\n"
                    "2023-11-16 18:15:51,12\n")
    w = make("azure", path)
    reqs = list(w.requests())
    well_formed(reqs)
    assert [r.prompt_tokens for r in reqs] == [4808, 1000, 300, 200]
    assert [r.output_tokens for r in reqs] == [10, 20, 7, 3]
    assert [r.arrival_s for r in reqs] == pytest.approx([0, 1.5, 2.31941, 3.81941], abs=1e-6)
    assert len({r.user for r in reqs}) == 4
    assert not set(chunk_keys(reqs[0].segments, 16)) & set(chunk_keys(reqs[1].segments, 16))
    assert w.info()["skipped"] == 3
    assert parse_time("2023-11-16 18:15:46.6805900") - parse_time("2023-11-16 18:15:46") == \
        pytest.approx(0.68059, abs=1e-6)


# --- common: replay, re-timing, QoS, errors -------------------------------------------

def two_rows(tmp_path: Path) -> Path:
    path = tmp_path / "two.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2023-11-16 18:15:46.0,100,10\n2023-11-16 18:15:48.0,100,10\n")
    return path


def test_replay_cycles_shift_time_and_renumber(tmp_path: Path) -> None:
    w = make("azure", two_rows(tmp_path), replay_cycles=3)
    reqs = list(w.requests())
    well_formed(reqs)
    # each cycle starts one span plus one mean gap (2 s + 2 s) after the one before
    assert [r.arrival_s for r in reqs] == pytest.approx([0, 2, 4, 6, 8, 10])
    assert len({r.user for r in reqs}) == 6 and w.info()["requests"] == 6
    assert w.info()["users"] == 6


def test_replay_cycles_are_fresh_copies_of_the_content(tmp_path: Path) -> None:
    path = mooncake_file(tmp_path / "mc.jsonl", MOONCAKE, junk=False)
    reqs = list(make("mooncake", path, replay_cycles=2).requests())
    first, second = reqs[:5], reqs[5:]
    keys = [set(chunk_keys(r.segments, 256)) for r in reqs]
    assert not set().union(*keys[:5]) & set().union(*keys[5:])
    assert unbounded_cache_hits(second, 256) == unbounded_cache_hits(first, 256)
    assert unbounded_cache_hits(first, 256)[0] > 0
    assert [r.prompt_tokens for r in second] == [r.prompt_tokens for r in first]
    assert not {r.output_id for r in first} & {r.output_id for r in second}
    reqs = list(make("mooncake", path, replay_cycles=2, max_requests=2).requests())
    assert [r.prompt_tokens for r in reqs] == [1500, 1200, 1500, 1200]


def test_poisson_arrivals_at_request_rate(tmp_path: Path) -> None:
    def arrivals(seed: int) -> list[float]:
        w = make("azure", two_rows(tmp_path), seed=seed, request_rate=50.0, replay_cycles=200,
                 speedup=7.0)
        return [r.arrival_s for r in w.requests()]

    a = arrivals(1)
    gaps = [y - x for x, y in zip(a, a[1:], strict=False)]
    assert all(g > 0 for g in gaps)
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 50, rel=0.25)
    assert arrivals(1) == a and arrivals(2) != a


def test_qos_class_per_user_from_the_seed(tmp_path: Path) -> None:
    path = tmp_path / "many.csv"
    path.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                    + "".join(f"{i},ChatGPT,10,5,15,API log\n" for i in range(200)))
    qos = [r.qos for r in make("burstgpt", path, seed=1).requests()]
    assert qos == [r.qos for r in make("burstgpt", path, seed=1).requests()]
    assert qos != [r.qos for r in make("burstgpt", path, seed=2).requests()]
    assert 10 < qos.count("interactive") < 60 and 60 < qos.count("batch") < 140
    only = {"interactive": 0, "responsive": 0, "batch": 1}
    assert {r.qos for r in make("burstgpt", path, qos_mix=only).requests()} == {"batch"}
    v2 = tmp_path / "v2.csv"
    v2.write_text(V2)
    for seed in range(8):   # a user keeps its class for all its turns
        by_user: dict[int, set[str]] = {}
        for r in make("burstgpt", v2, seed=seed).requests():
            by_user.setdefault(r.user, set()).add(r.qos)
        assert all(len(s) == 1 for s in by_user.values())


def test_read_on_one_rank_the_whole_trace(tmp_path: Path) -> None:
    path = mooncake_file(tmp_path / "mc.jsonl", MOONCAKE, junk=False)
    cls = WORKLOADS.load("mooncake")
    assert cls.partitionable is False
    assert list(make("mooncake", path).requests(1, 4)) == list(make("mooncake", path).requests())


@pytest.mark.parametrize("kind,params,field", [
    ("mooncake", {"trace": ""}, "workload.trace"),
    ("mooncake", {"trace": "MISSING"}, "workload.trace"),
    ("azure", {"speedup": 0}, "workload.speedup"),
    ("azure", {"speedup": -2.0}, "workload.speedup"),
    ("azure", {"speedup": float("inf")}, "workload.speedup"),
    ("burstgpt", {"replay_cycles": 0}, "workload.replay_cycles"),
    ("burstgpt", {"max_requests": -1}, "workload.max_requests"),
    ("mooncake", {"request_rate": -1.0}, "workload.request_rate"),
    ("sharegpt", {"request_rate": 0}, "workload.request_rate"),
    ("azure", {"qos_mix": {"gold": 1}}, "workload.qos_mix.gold"),
    ("azure", {"qos_mix": {"batch": -1}}, "workload.qos_mix.batch"),
    ("azure", {"qos_mix": {"interactive": 0, "responsive": 0, "batch": 0}}, "workload.qos_mix"),
    ("sharegpt", {"speedup": "fast"}, "workload.speedup"),
])
def test_bad_parameters_are_one_line_errors(tmp_path: Path, kind: str, params: dict,
                                            field: str) -> None:
    real = tmp_path / "t.txt"
    real.write_text("x\n")
    section = {"trace": str(real), **params}
    if section["trace"] == "MISSING":
        section["trace"] = str(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError) as err:
        WORKLOADS.params(kind, section, "workload")
    msg = str(err.value)
    assert msg.startswith(field) and "\n" not in msg
    if params.get("trace") == "MISSING":
        assert "no such file" in msg and "Mooncake JSONL" in msg


def test_defaults_are_valid_and_documented(tmp_path: Path) -> None:
    real = two_rows(tmp_path)
    for kind in ("sharegpt", "burstgpt", "mooncake", "azure"):
        p = WORKLOADS.params(kind, {"trace": str(real)}, "workload")
        assert (p.speedup, p.replay_cycles, p.max_requests) == (1.0, 1, 0)
        assert p.qos_mix == {"interactive": 0.15, "responsive": 0.35, "batch": 0.5}
        doc = sys.modules[WORKLOADS.load(kind).__module__].__doc__
        assert "Parameters" in doc and "Limits" in doc


@pytest.mark.parametrize("kind,text,words", [
    ("azure", "a,b,c\n1,2,3\n", "no column 'TIMESTAMP'"),
    ("burstgpt", "Timestamp,Model\n1,x\n", "no column 'Request tokens'"),
    ("mooncake", "not json\n{}\n", "holds no usable request"),
    ("sharegpt", '{"id": 1}', "is not a JSON array"),
    ("sharegpt", "", "is not a JSON array"),
])
def test_a_file_in_the_wrong_format_fails_before_any_request(tmp_path: Path, kind: str,
                                                            text: str, words: str) -> None:
    path = tmp_path / "wrong"
    path.write_text(text)
    w = make(kind, path)
    with pytest.raises(ConfigError) as err:
        w.requests()             # at set-up: nothing iterated yet
    assert words in str(err.value) and "\n" not in str(err.value)
