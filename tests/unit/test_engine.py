"""The per-rank engine driven directly (no MPI): hits, byte accounting, demotions,
promotions, verify mode and deterministic planning."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from engine_rig import CT, MICRO, TINY_OBJ, Rig, make_config, request

from mpi_kvbench.engine import StopReason
from mpi_kvbench.engine.iopool import MOVE, READ, WRITE
from mpi_kvbench.layout import Geometry, chunk_keys
from mpi_kvbench.registry import WORKLOADS


def check_bytes_equal_ops(r: Rig) -> None:
    """Every operation moves one whole object."""
    seen = 0
    for level in ("hbm", "dram", "storage"):
        for op in ("read", "write"):
            n = r.c.get(f"{level}.{op}_ops", 0)
            assert r.c.get(f"{level}.{op}_bytes", 0) == n * r.obj
            h = [v for k, v in r.engine.metrics.hist.items() if k.startswith(f"{level}.{op}.")]
            assert sum(x.count for x in h) == n           # one latency sample per operation
            seen += n
    assert seen > 0


def test_a_shared_prompt_hits_its_chunks(tmp_path: Path, rig) -> None:
    r = rig(make_config(tmp_path, hbm=32, dram=32, storage=32))
    r.serve(request(1, [(7, 64)]))
    assert r.c["chunk_lookups"] == 4 and r.c["chunk_hits"] == 0
    assert r.c["hbm.write_ops"] == 4 and "hbm.read_ops" not in r.c
    r.serve(request(2, [(7, 64)]))
    assert r.c["chunk_lookups"] == 8 and r.c["chunk_hits"] == 4 and r.c["hbm.chunk_hits"] == 4
    assert r.c["hbm.read_ops"] == 4 and r.c["hbm.write_ops"] == 4      # nothing new to write
    assert r.c["hbm.tokens_hit"] == 4 * CT
    # a prompt that shares the first 40 tokens shares the two chunks inside them
    r.serve(request(3, [(7, 40), (8, 30)]))
    assert r.c["chunk_lookups"] == 12 and r.c["chunk_hits"] == 6
    assert r.c["hbm.write_ops"] == 4 + 2
    assert r.c["requests_completed"] == 3
    assert r.engine.metrics.hist["request.e2e"].count == 3
    check_bytes_equal_ops(r)


def test_full_chunks_of_prompt_and_output_are_written_at_the_end(tmp_path: Path, rig) -> None:
    r = rig(make_config(tmp_path, hbm=32))
    r.serve(request(1, [(9, 20)], output=12))    # prefill: 1 chunk; end: 32 tokens = 2 chunks
    assert r.c["hbm.write_ops"] == 2
    assert sum(h.count for k, h in r.engine.metrics.hist.items() if k.endswith(".decode")) == 1
    r.serve(request(2, [(9, 20)], output=11))    # 31 tokens: the partial chunk is never written
    assert r.c["hbm.write_ops"] == 2
    nxt = request(3, [(9, 20), (10**9 + 1, 12), (5, 16)])   # next turn: prompt + answer + more
    r.serve(nxt)
    assert r.c["chunk_hits"] == 1 + 2              # turn 2 hit 1 chunk; turn 3 hits 2
    check_bytes_equal_ops(r)


def test_demotions_are_counted_and_timed(tmp_path: Path, rig) -> None:
    r = rig(make_config(tmp_path, hbm=4, dram=64))
    for i in range(6):
        r.serve(request(i, [(100 + i, 64)]))       # 6 x 4 distinct chunks
    used = [lv.used for lv in r.engine.cache.levels]
    assert sum(used) == 24                         # nothing dropped: dram is large
    demoted = r.c["demotions"]
    assert demoted == 24 - used[0] == used[1] > 0
    assert r.c["demotion_bytes"] == demoted * r.obj
    h = r.engine.metrics.hist["demotion.hbm"]
    assert h.count == demoted
    assert h.min_ns > 0 and h.sum_ns > 0
    assert r.engine.metrics.hist["hbm.read.demote"].count == demoted
    assert r.engine.metrics.hist["dram.write.demote"].count == demoted
    assert r.c["hbm.write_ops"] == 24 and r.c["dram.write_ops"] == demoted
    assert r.c["hbm.read_ops"] == demoted
    check_bytes_equal_ops(r)
    assert r.engine.peak_used[0] <= 4 * r.obj


def test_the_bottom_tier_drops(tmp_path: Path, rig) -> None:
    r = rig(make_config(tmp_path, hbm=4, storage=8))
    for i in range(6):
        r.serve(request(i, [(100 + i, 64)]))
    assert r.c["storage.drops"] == 24 - sum(lv.used for lv in r.engine.cache.levels) > 0
    assert r.c["storage.write_ops"] == r.c["demotions"]
    check_bytes_equal_ops(r)


def test_a_hit_below_hbm_is_read_from_its_tier_or_promoted(tmp_path: Path, rig) -> None:
    for promotion in ("none", "hbm"):
        r = rig(make_config(tmp_path, hbm=4, dram=32, engine={"promotion": promotion}))
        first = [(1, 64)]
        r.serve(request(1, first), request(2, [(2, 64)]), request(3, [(3, 64)]))
        keys = chunk_keys(first, CT)
        low = [k for k in keys if r.engine.cache.index[k].level == 1]
        assert low, "the first prompt should have been demoted"
        r.serve(request(4, first))
        assert r.c["chunk_hits"] == 4
        assert r.c.get("dram.chunk_hits", 0) == len(low)
        if promotion == "hbm":
            assert r.c["promotions"] == len(low)
            assert r.c["promotion_bytes"] == len(low) * r.obj
            assert r.engine.metrics.hist["promotion.dram"].count == len(low)
            assert all(r.engine.cache.index[k].level == 0 for k in keys)
        else:
            assert "promotions" not in r.c
            assert all(r.engine.cache.index[k].level == 1 for k in low)
        check_bytes_equal_ops(r)


def test_reference_decode_mode_rereads_every_batch(tmp_path: Path, rig) -> None:
    r = rig(make_config(tmp_path, hbm=32, engine={"decode_mode": "reference",
                                                   "decode_batch": 32}))
    r.serve(request(1, [(3, 48)], output=100))     # 3 prompt chunks, 100 // 32 = 3 re-reads
    assert r.engine.metrics.hist["hbm.read.decode"].count == 3 * 3
    assert r.c["chunk_lookups"] == 3               # a re-read is not a lookup
    check_bytes_equal_ops(r)


def test_layer_layout_counts_chunks_not_layers(tmp_path: Path, rig) -> None:
    r = rig(make_config(tmp_path, hbm=200, obj=TINY_OBJ // 12, kv={"layout": "layer"}))
    assert r.obj == TINY_OBJ // 12
    r.serve(request(1, [(5, 64)]), request(2, [(5, 64)]))
    assert r.c["hbm.write_ops"] == 4 * 12
    assert r.c["hbm.read_ops"] == 4 * 12
    assert r.c["chunk_lookups"] == 8 and r.c["chunk_hits"] == 4 and r.c["hbm.chunk_hits"] == 4
    check_bytes_equal_ops(r)


def corrupt(path: str, offset: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        old = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([old[0] ^ 0xFF]), offset)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_verify_mode_catches_corruption_on_disk(tmp_path: Path, rig) -> None:
    r = rig(make_config(tmp_path, storage=16, io={"verify": True}))
    assert [t.level for t in r.tiers] == ["storage"]
    prompt = [(42, 64)]
    r.serve(request(1, prompt))
    assert r.c["storage.write_ops"] == 4
    r.serve(request(2, prompt))                    # reads back what it wrote: all good
    assert r.c["storage.read_ops"] == 4
    assert r.c["verify_checked"] == 4
    assert r.c.get("verify_mismatches", 0) == 0
    keys = chunk_keys(prompt, CT)
    storage = r.tiers[0]
    for k, where in ((keys[1], 5000), (keys[3], TINY_OBJ - 1)):   # inside a block, last byte
        corrupt(storage.path, r.engine.cache.index[k].slot * TINY_OBJ + where)
    r.serve(request(3, prompt))
    assert r.c["verify_checked"] == 8
    assert r.c["verify_mismatches"] == 2


def test_without_verify_nothing_is_checked(tmp_path: Path, rig) -> None:
    r = rig(make_config(tmp_path, storage=16))
    r.serve(request(1, [(1, 32)]), request(2, [(1, 32)]))
    assert "verify_checked" not in r.c and "verify_mismatches" not in r.c


SYNTH = {"users": 3, "templates": {"chatbot": 1, "coding": 0, "document": 0},
         "request_rate": 1e6, "max_turns": 3, "system_prompts": 2}    # open loop: no waiting


def replay(tmp_path: Path, rig, seed: int, n: int = 12) -> tuple[list, dict]:
    cfg = make_config(tmp_path, hbm=40, dram=80, storage=300, obj=4096,
                      **{**MICRO, "run": {"seed": seed}, "workload": SYNTH})
    assert Geometry(cfg.model, 32, 1).object_bytes == 4096
    r = rig(cfg, f"s{seed}-")
    workload = WORKLOADS.load(cfg.workload_kind)(cfg.workload, cfg.run.seed)
    assert r.engine.replay(workload.requests(), None, max_requests=n) is StopReason.SHARE
    assert r.engine.completed == n
    counters = {k: v for k, v in r.c.items() if not k.endswith("_ns")}
    return sorted(r.ops), counters      # requests overlap: the set of operations is what is fixed


def test_same_seed_same_operations(tmp_path: Path, rig) -> None:
    ops1, c1 = replay(tmp_path, rig, seed=5)
    ops2, c2 = replay(tmp_path, rig, seed=5)
    assert c1 == c2
    assert ops1 == ops2
    kinds = {o[0] for o in ops1}
    assert kinds == {READ, WRITE, MOVE}            # the trace exercised hits and demotions
    assert c1.get("storage.drops", 0) > 0 or c1.get("demotions", 0) > 0
    ops3, _ = replay(tmp_path, rig, seed=6)
    assert ops3 != ops1                            # the recording does see the trace


def test_busy_time_is_the_union_of_the_intervals() -> None:
    from mpi_kvbench.engine.record import busy_ns

    # two overlapping reads, a gap, one more: busy 0-15 and 20-30, not the 0-30 span
    assert busy_ns([(0, 10), (5, 15), (20, 30)]) == 25
    assert busy_ns([(20, 30), (0, 40)]) == 40          # one inside another, any order
    assert busy_ns([(0, 5)]) == 5


def test_busy_time_of_a_log_replay_is_the_union_of_its_intervals(tmp_path: Path, rig) -> None:
    """A log replay's operations are not requests in flight, yet their intervals overlap
    the ones settled while they run: the busy time settled in pieces (past the engine's
    span limit) must still be the union of all of them, never more."""
    from mpi_kvbench.engine.record import busy_ns
    from mpi_kvbench.iotrace import Row

    r = rig(make_config(tmp_path, storage=64, io={"io_depth": 4}, **MICRO))
    engine, obj = r.engine, r.obj
    rows = [Row(i, i < 64 or i % 2 == 0, obj, "storage", i, "prefill", i % 64, 0, 0, i)
            for i in range(5000)]
    engine.load_log(rows)
    spans: list[tuple[int, int]] = []
    stage = engine.recorder.stage

    def spy(ops, results, phase, req=None):
        for op, d in zip(ops, results, strict=True):
            if op.kind != WRITE and d.read_ns:
                spans.append((d.start, d.start + d.read_ns))
            if op.kind != READ and d.write_ns:
                spans.append((d.end - d.write_ns, d.end))
        return stage(ops, results, phase, req)

    engine.recorder.stage = spy
    engine.start_phase(time.perf_counter_ns())
    assert engine.replay_log(False) is StopReason.SHARE
    engine.end_phase()
    assert len(spans) > 4096                     # settled in pieces, not once at the end
    assert r.c["storage.busy_ns"] == busy_ns(spans)


@pytest.mark.parametrize("kind", ["file", "null"])
def test_a_stop_abandons_the_batch_and_leaves_nothing_waiting(tmp_path: Path, rig, kind: str) -> None:
    """A stop mid-batch (timed I/O, or trace mode's virtual clock): the requests in flight
    are abandoned, none is recorded as done, and once the operations already running end
    no slot keeps a forgotten operation (the replay returns; nothing is left waiting)."""
    null = {"tiers": {lv: {"kind": "null"} for lv in ("hbm", "dram", "storage")}} if kind == "null" else {}
    cfg = make_config(tmp_path, hbm=6, dram=12, storage=300, obj=4096,
                      **{**MICRO, **null, "workload": {**SYNTH, "users": 12},
                         "engine": {"max_batch": 6, "time_per_output_token_ms": 0.05}})
    r = rig(cfg, f"stop-{kind}")
    engine = r.engine
    assert engine._inline == (kind == "null")
    abandoned = []
    abandon = engine._abandon
    engine._abandon = lambda: (abandoned.append(len(engine._flights)), abandon())
    source = WORKLOADS.load(cfg.workload_kind)(cfg.workload, 3).requests()
    assert engine.replay(source, None, stop=lambda: engine.completed >= 5) is StopReason.STOPPED
    assert len(abandoned) == 1 and abandoned[0] > 1                # a batch was in flight
    done = engine.completed
    assert done >= 5 and r.c["requests_completed"] == done         # the abandoned are not counted
    assert not engine._flights and not engine._users and engine._owner == {}
    assert engine._access == {} and engine._waiting == {} and engine._parked == {}
