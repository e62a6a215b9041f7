"""The I/O trace log: a row per operation the engine records, in the reference's first six
columns, plain or zstd; trace mode (null tiers) plans the same operations with no I/O."""

from __future__ import annotations

import csv
import io
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from engine_rig import CT, TINY_OBJ, close_all, make_config, request

from mpi_kvbench.cli import build_parser, overrides
from mpi_kvbench.config import load
from mpi_kvbench.context import RankContext
from mpi_kvbench.engine import Engine
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.iotrace import IoTraceLog, rank_path, read_meta, read_rows
from mpi_kvbench.results import names
from mpi_kvbench.run import engine_settings, policy_factory
from mpi_kvbench.tiers import open_tiers

# copied from the MLPerf KV-cache reference (kv_cache/tracer.py, IOTracer.HEADER)
REFERENCE_HEADER = ["Timestamp", "Operation", "Object_Size_Bytes", "Tier", "Key", "Phase"]
TIER_OF = {"hbm": "Tier-0", "dram": "Tier-1", "storage": "Tier-2"}
PHASE_OF = {"prefill": "Prefill", "decode": "Decode", "demote": "Evict"}


def traced_run(tmp_path: Path, log: str, null: bool = False,
               run_id: str = "t") -> tuple[Engine, float, float]:
    """An engine with a trace log on small real (or null) tiers, serving a few requests
    that fill HBM and DRAM, demote to storage and read back; returns it after closing the log."""
    extra = {"tiers": {lv: {"kind": "null"} for lv in ("hbm", "dram", "storage")}} if null else {}
    cfg = make_config(tmp_path, hbm=2, dram=3, storage=40, **extra)
    tiers = open_tiers(cfg.tiers, RankContext(run_id=run_id), cfg.geometry.object_bytes,
                       one_writer=False, group_bcast=lambda x: x)
    trace = IoTraceLog(str(tmp_path / log), 0, 0, cfg.geometry.object_bytes, {"config": cfg.text})
    engine = Engine(engine_settings(cfg), tiers, policy_factory(cfg), trace=trace)
    try:
        before = time.time()
        trace.start()
        engine.start_phase(time.perf_counter_ns())
        shared = [(7, 3 * CT)]
        for i in range(4):    # prompts sharing a prefix, then turns that read earlier KV back
            engine.serve(request(i, [*shared, (100 + i, 2 * CT)], output=CT, user=i))
        engine.serve(request(9, [*shared, (100, 2 * CT)], output=CT, user=0))
        engine.end_phase()
        trace.close()
        after = time.time()
    finally:
        close_all(engine, tiers)
    return engine, before, after


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trace")
    engine, before, after = traced_run(tmp, "log.csv")
    return tmp / "log.csv", engine, before, after


def test_rows_equal_the_recorded_operations_per_tier_and_phase(plain) -> None:
    log, engine, _, _ = plain
    rows = Counter((r.level, "write" if r.write else "read", r.stage) for r in read_rows(str(log)))
    hist = engine.metrics.hist
    recorded = Counter({(t, op, ph): hist[names.tier_op(t, op, ph)].count
                        for t in TIER_OF for op in names.OPS for ph in names.PHASES
                        if names.tier_op(t, op, ph) in hist})
    assert rows == recorded
    assert {k[0] for k in rows} == set(TIER_OF) and {k[2] for k in rows} >= {"prefill", "demote"}
    c = engine.metrics.counters
    for t in TIER_OF:   # and the bytes
        logged = sum(r.size for r in read_rows(str(log)) if r.level == t and r.write)
        assert logged == c[names.tier_counter(t, "write_bytes")]


def test_the_first_six_columns_are_the_references(plain) -> None:
    log, _, before, after = plain
    with open(log, newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0][:6] == REFERENCE_HEADER
    assert table[0][6:] == ["Rank", "TP_Group", "Request_Index", "QoS_Class", "Slot", "Offset_Bytes",
                            "Latency_ns", "Stage"]
    for row in table[1:]:
        ts, op, size, tier, key, phase = row[:6]
        assert re.fullmatch(r"\d{10}\.\d{6}", ts) and before - 1 <= float(ts) <= after + 1
        assert op in ("Read", "Write") and int(size) == TINY_OBJ
        assert re.fullmatch(r"[0-9a-f]{16}", key)
        stage = row[13]
        assert TIER_OF[tier_level(tier)] == tier
        assert phase == PHASE_OF[stage]
        assert int(row[11]) == int(row[10]) * TINY_OBJ     # offset = slot x object size
        assert int(row[12]) > 0                            # a real tier took time
    stamps = [float(r[0]) for r in table[1:]]
    assert stamps == sorted(stamps) or len(stamps) > 4096   # one batch: sorted by start


def tier_level(label: str) -> str:
    return {v: k for k, v in TIER_OF.items()}[label]


def test_the_zst_log_round_trips(plain, tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    log, _, _, _ = plain
    rows = list(read_rows(str(log)))
    trace = IoTraceLog(str(tmp_path / "log.csv.zst"), 3, 1, TINY_OBJ, {})
    trace.start()
    shift = trace._perf0 - trace._wall0
    for r in rows:
        trace.add((r.t_ns + shift, int(r.write), r.size, r.level, r.key,
                   ["prefill", "decode", "demote", "handoff", "precondition"].index(r.stage),
                   r.request, 2, r.slot, r.latency_ns))
    trace.close()
    raw = (tmp_path / "log.csv.zst").read_bytes()
    assert raw[:4] == b"\x28\xb5\x2f\xfd"                  # a zstd frame
    text = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read().decode()
    table = list(csv.reader(io.StringIO(text)))
    assert len(table) == len(rows) + 1 and table[0][:6] == REFERENCE_HEADER
    assert {r[6] for r in table[1:]} == {"3"} and {r[7] for r in table[1:]} == {"1"}
    back = list(read_rows(str(tmp_path / "log.csv.zst")))
    assert [(b.t_ns // 1000, b.write, b.level, b.key, b.slot, b.latency_ns) for b in back] == \
        [(r.t_ns // 1000, r.write, r.level, r.key, r.slot, r.latency_ns) for r in rows]
    meta = read_meta(str(tmp_path / "log.csv.zst"))
    assert meta["rows"] == len(rows) and meta["rank"] == 3


def test_trace_mode_plans_the_same_operations_without_io(plain, tmp_path: Path) -> None:
    log, _, _, _ = plain
    traced_run(tmp_path, "null.csv", null=True, run_id="n")
    real = [(r.write, r.level, r.key, r.slot, r.stage) for r in read_rows(str(log))]
    null = [(r.write, r.level, r.key, r.slot, r.stage) for r in read_rows(str(tmp_path / "null.csv"))]
    assert Counter(null) == Counter(real)
    assert {r.latency_ns for r in read_rows(str(tmp_path / "null.csv"))} == {0}   # nothing ran
    assert not (tmp_path / "kv").exists() or not any((tmp_path / "kv").iterdir())


def test_trace_only_flag_turns_every_tier_null(tmp_path: Path) -> None:
    args = build_parser().parse_args(["run", "--trace-only", "--io-trace-log", str(tmp_path / "x.csv")])
    cfg = load(None, overrides(args))
    assert {t.kind for t in cfg.tiers} == {"null"} and len(cfg.tiers) == 3
    assert cfg.run.io_trace_log == str(tmp_path / "x.csv")


def test_log_names_per_rank() -> None:
    assert rank_path("/a/trace.csv.zst", 3) == "/a/trace-rank3.csv.zst"
    assert rank_path("/a/trace", 0) == "/a/trace-rank0"
    assert rank_path("/a/{rank}/t.csv", 2, lambda s: s.format(rank=2)) == "/a/2/t.csv"


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "mine.csv").write_text("keep")
    with pytest.raises(ConfigError, match="exists; choose another path"):
        IoTraceLog(str(tmp_path / "mine.csv"), 0, 0, 4096, {})
    assert (tmp_path / "mine.csv").read_text() == "keep"


def test_replay_at_recorded_times_keeps_the_bytes_and_never_runs_early(plain, tmp_path: Path) -> None:
    """The engine replays a log: every recorded operation, none before its recorded offset
    from the first (the replay's own trace log says when each started)."""
    log, recorded, _, _ = plain
    cfg = make_config(tmp_path, hbm=2, dram=3, storage=40)
    tiers = open_tiers(cfg.tiers, RankContext(run_id="rp"), cfg.geometry.object_bytes,
                       one_writer=False, group_bcast=lambda x: x)
    trace = IoTraceLog(str(tmp_path / "again.csv"), 0, 0, cfg.geometry.object_bytes, {})
    engine = Engine(engine_settings(cfg), tiers, policy_factory(cfg), trace=trace)
    rows = sorted(read_rows(str(log)), key=lambda r: r.t_ns)
    try:
        engine.load_log(rows)
        engine.prime()
        trace.start()
        start = time.perf_counter_ns()
        engine.start_phase(start)
        engine.replay_log(recorded=True)
        engine.end_phase()
        shift = trace._wall0 - trace._perf0
        trace.close()
    finally:
        close_all(engine, tiers)
    c, r = engine.metrics.counters, recorded.metrics.counters
    for t in TIER_OF:
        for what in ("read_bytes", "write_bytes", "read_ops", "write_ops"):
            assert c[names.tier_counter(t, what)] == r[names.tier_counter(t, what)]
    again = sorted(read_rows(str(tmp_path / "again.csv")), key=lambda x: x.t_ns)
    assert len(again) == len(rows)
    due = {}
    for row in rows:   # a key's n-th operation of a kind on a tier: due at its recorded offset
        due.setdefault((row.level, row.write, row.key), []).append(row.t_ns - rows[0].t_ns)
    for row in again:
        offset = due[(row.level, row.write, row.key)].pop(0)
        assert row.t_ns - shift >= start + offset - 1000     # the log keeps whole microseconds
