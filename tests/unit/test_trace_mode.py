"""Trace mode at speed: a virtual clock (times are the workload's, nothing waits), a stage's
figures counted instead of listed, chunk chains extended turn to turn, and the log's
writer. Each fast path is checked against the slow computation it replaces."""

from __future__ import annotations

import hashlib
import random
import struct
import time
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from engine_rig import CT, close_all, make_config
from hypothesis import given, settings
from hypothesis import strategies as st

from mpi_kvbench.context import RankContext
from mpi_kvbench.engine import Engine
from mpi_kvbench.engine.iopool import DROP, MOVE, READ, WRITE, Done, Op
from mpi_kvbench.engine.record import Recorder
from mpi_kvbench.iotrace import (
    OPERATIONS,
    QOS,
    REFERENCE_PHASE,
    STAGES,
    TIER_LABELS,
    IoTraceLog,
    read_meta,
    read_rows,
)
from mpi_kvbench.layout import Chain, chunk_keys, extend_chain
from mpi_kvbench.registry import WORKLOADS
from mpi_kvbench.run import engine_settings, policy_factory
from mpi_kvbench.tiers import open_tiers
from mpi_kvbench.workloads.base import Request

NULL = {"tiers": {lv: {"kind": "null"} for lv in ("hbm", "dram", "storage")}}
OBJ = 4096


# ---- chunk chains ------------------------------------------------------------------------
def slow_keys(segments, chunk_tokens: int) -> list[int]:
    """The chain as first written: a blake2b per chunk, fed the previous key then each
    (identity, offset, tokens) piece."""
    keys, prev, pieces, room = [], 0, [], chunk_tokens
    for ident, length in segments:
        pos = 0
        while pos < length:
            take = min(room, length - pos)
            pieces.append((ident & (2**64 - 1), pos, take))
            pos, room = pos + take, room - take
            if room == 0:
                h = hashlib.blake2b(struct.pack("<Q", prev), digest_size=8)
                for piece in pieces:
                    h.update(struct.pack("<QQQ", *piece))
                prev = int.from_bytes(h.digest(), "little")
                keys.append(prev)
                pieces, room = [], chunk_tokens
    return keys


segments = st.lists(st.tuples(st.integers(-2**63, 2**70), st.integers(1, 90)), max_size=8)


@settings(max_examples=150, deadline=None)
@given(a=segments, b=segments, chunk_tokens=st.sampled_from([1, 5, 16, 64]))
def test_a_chain_extended_equals_the_chain_of_the_whole(a, b, chunk_tokens) -> None:
    whole = slow_keys(a + b, chunk_tokens)
    assert chunk_keys(a + b, chunk_tokens) == whole
    assert list(extend_chain(extend_chain(Chain(), a, chunk_tokens), b, chunk_tokens).keys) == whole


# ---- the recorder's fast path ------------------------------------------------------------
class Rows:
    """Stands in for the trace log: keeps the rows the recorder hands it."""

    recording = True

    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add(self, row: tuple) -> None:
        self.rows.append(row)

    def extend(self, rows: list[tuple]) -> None:
        self.rows.extend(rows)


def random_ops(rng: random.Random, n: int) -> list[Op]:
    ops = []
    for _ in range(n):
        kind = rng.choice([READ, WRITE, MOVE, MOVE, DROP])
        src, dst = rng.randrange(3), rng.randrange(3)
        ops.append(Op(kind, rng.getrandbits(64), src if kind != WRITE else -1, rng.randrange(50),
                      dst if kind in (WRITE, MOVE) else -1, rng.randrange(50),
                      crc=rng.choice([0, 5, -1])))
    return ops


@pytest.mark.parametrize("seed", range(6))
def test_stage_instant_records_what_stage_records_for_ops_done_at_once(seed: int) -> None:
    """Every histogram, counter, series and trace row of ``stage`` for zero-time results,
    across stages of every size (per-value and vectorised histogram paths) and phases."""
    rng = random.Random(seed)
    slow, fast = (Recorder(["hbm", "dram", "storage"], 16, 1, bool(seed % 2), 10**9, trace=Rows())
                  for _ in range(2))
    req = Request(7, 1, 1, 0.0, None, "responsive", ((1, 16),), 0, 9)
    for _ in range(25):
        ops = random_ops(rng, rng.choice([1, 3, 40]))
        t = 10**9 + rng.randrange(5 * 10**9)
        phase = rng.choice(["prefill", "decode", "demote"])
        who = rng.choice([None, req])
        slow.stage(ops, [Done(t, t, 0, 0, 0 if op.kind == WRITE else OBJ, 0 if op.kind == READ else OBJ,
                              0, True) for op in ops], phase, who)
        fast.stage_instant(ops, t, OBJ, phase, who)
    a, b = slow.metrics, fast.metrics
    assert a.counters == b.counters and list(a.counters) == list(b.counters)
    assert list(a.hist) == list(b.hist)
    for name, h in a.hist.items():
        g = b.hist[name]
        assert np.array_equal(h.counts, g.counts) and (h.min_ns, h.max_ns, h.sum_ns) == (g.min_ns, g.max_ns,
                                                                                         g.sum_ns)
    assert a.series.keys() == b.series.keys()
    assert all(np.array_equal(a.series[k], b.series[k]) for k in a.series)
    assert slow.trace.rows == fast.trace.rows and len(fast.trace.rows) > 50
    assert slow.unsettled() == fast.unsettled() == 0


# ---- the writer ------------------------------------------------------------------------
def plain_line(row: tuple, shift: int, rank: int, group: int) -> str:
    t, op, size, level, key, stage, req, qos, slot, lat = row
    ns = t + shift
    name = STAGES[stage]
    return ",".join([f"{ns // 10**9}.{ns // 1000 % 10**6:06d}", OPERATIONS[op], str(size),
                     TIER_LABELS.get(level, level), format(key, "016x"), REFERENCE_PHASE[name],
                     str(rank), str(group), str(req), QOS[qos] if qos >= 0 else "", str(slot),
                     str(slot * OBJ), str(lat), name]) + "\n"


def test_the_writer_formats_every_row_as_one_format_per_row_would(tmp_path: Path) -> None:
    rng = random.Random(3)
    rows = []
    for i in range(3000):     # runs of equal times (trace mode), out of order, odd levels
        t = 5 * 10**9 + (i // 7) * 1234 + rng.choice([0, 0, 0, 999_999])
        level = rng.choice(["hbm", "dram", "storage", "s3"])
        rows.append((t, rng.randrange(2), OBJ * rng.choice([1, 1, 2]), level,
                     rng.getrandbits(64), rng.randrange(len(STAGES)), rng.randrange(-1, 40),
                     rng.randrange(-1, 3), rng.randrange(500), rng.randrange(10**6)))
    log = IoTraceLog(str(tmp_path / "w.csv"), 2, 1, OBJ, {})
    log.start()
    shift = log._wall0 - log._perf0
    for i in range(0, len(rows), 1000):   # three batches, each sorted on its own
        log.extend(rows[i:i + 1000])
        log._queue.put(log._rows)
        log._rows = []
    log.close()
    want = "".join(plain_line(r, shift, 2, 1) for i in range(0, len(rows), 1000)
                   for r in sorted(rows[i:i + 1000], key=lambda r: r[0]))
    text = (tmp_path / "w.csv").read_text()
    assert text.split("\n", 1)[1] == want
    meta = read_meta(str(tmp_path / "w.csv"))
    for key, c in meta["counts"].items():
        level, op, stage = key.split(".")
        mine = [r for r in rows if (r[3], OPERATIONS[r[1]].lower(), STAGES[r[5]]) == (level, op, stage)]
        assert c == {"rows": len(mine), "bytes": sum(r[2] for r in mine)}
    assert sum(c["rows"] for c in meta["counts"].values()) == len(rows) == meta["rows"]
    assert meta["max_slot"] == {lv: max(r[8] for r in rows if r[3] == lv) for lv in {r[3] for r in rows}}


# ---- the virtual clock -----------------------------------------------------------------
def trace_engine(tmp_path: Path, name: str, null: bool = True, **extra) -> tuple[Engine, IoTraceLog, list]:
    cfg = make_config(tmp_path, hbm=4, dram=8, storage=60, **({**NULL, **extra} if null else extra))
    tiers = open_tiers(cfg.tiers, RankContext(run_id=name), cfg.geometry.object_bytes,
                       one_writer=False, group_bcast=lambda x: x)
    trace = IoTraceLog(str(tmp_path / f"{name}.csv"), 0, 0, cfg.geometry.object_bytes, {})
    engine = Engine(engine_settings(cfg), tiers, policy_factory(cfg), trace=trace)
    return engine, trace, tiers, cfg


def workload(cfg, n: int, users: int = 6, rate: float = 0.0, turns: int = 3) -> list[Request]:
    """The first ``n`` requests of a small synthetic workload (it never ends by itself)."""
    params = type(cfg.workload)(**{**cfg.workload.__dict__, "users": users, "request_rate": rate,
                                   "max_turns": turns, "system_prompt_tokens": 2 * CT,
                                   "templates": {"chatbot": 1, "coding": 0, "document": 0}})
    return list(islice(WORKLOADS.load("synthetic")(params, 11).requests(), n))


class NeverWait:
    """Stands in for the engine's completion queue in trace mode: waiting on it fails."""

    def get(self, timeout: float | None = None) -> None:
        raise AssertionError(f"trace mode waited {timeout} s for a completion")

    def get_nowait(self) -> None:
        raise AssertionError("trace mode looked for a completion")


def run_log(tmp_path: Path, name: str, requests: list[Request], null: bool = True,
            max_requests: int = 0, **extra):
    engine, trace, tiers, _ = trace_engine(tmp_path, name, null, **extra)
    if null:
        engine._events = NeverWait()
    try:
        trace.start()
        start = time.perf_counter_ns()
        engine.start_phase(start)
        t0 = time.perf_counter()
        engine.replay(iter(requests), None, max_requests)
        wall = time.perf_counter() - t0
        engine.end_phase()
        shift = trace._wall0 - trace._perf0
        trace.close()
    finally:
        close_all(engine, tiers)
    return list(read_rows(str(tmp_path / f"{name}.csv"))), start + shift, wall, engine


def test_trace_mode_stamps_each_request_at_its_arrival_and_never_waits(tmp_path: Path) -> None:
    """Open loop: a request's rows carry phase start + its arrival offset; the trace spans
    tens of seconds and the engine never waits for anything (``NeverWait``)."""
    cfg = make_config(tmp_path, storage=1, **NULL)
    reqs = workload(cfg, 60, users=8, rate=2.0, turns=2)
    rows, start, _, engine = run_log(tmp_path, "open", reqs)
    assert engine.payload.threads == 0 and engine.payload.generated_bytes <= 3 * engine.payload.object_bytes
    arrival = {r.index: r.arrival_s for r in reqs}
    assert {r.request for r in rows} == set(arrival)
    for r in rows:   # the log keeps whole microseconds
        assert abs(r.t_ns - (start + int(arrival[r.request] * 1e9))) < 2000, r
    span = (max(r.t_ns for r in rows) - min(r.t_ns for r in rows)) / 1e9
    assert span > 15


def test_closed_loop_turns_follow_their_think_times(tmp_path: Path) -> None:
    """Closed loop: nothing takes time, so a user's turn is due at its previous turn's
    time plus its own think time (the first at its arrival), and, the trace being taken
    in order, no earlier than the request before it."""
    cfg = make_config(tmp_path, storage=1, **NULL)
    reqs = workload(cfg, 40, users=4, turns=4)
    rows, start, _, _ = run_log(tmp_path, "closed", reqs)
    at, due, last = {}, {}, 0.0
    for r in reqs:   # trace order
        due[r.index] = last = max(last, at[r.user] + r.think_s if r.user in at else r.arrival_s)
        at[r.user] = last
    assert {r.request for r in rows} == set(due) and len(set(due.values())) > 15
    for r in rows:
        assert abs(r.t_ns - (start + int(due[r.request] * 1e9))) < 2000, r


def test_the_log_keeps_the_plan_order_and_the_operations_of_a_timed_run(tmp_path: Path) -> None:
    """The virtual clock changes no operation: null tiers with a delay (the timed path, its
    I/O threads and wall clock) log the same operations; and the trace-mode log lists the
    requests in admission (trace) order, each one's operations in plan order."""
    cfg = make_config(tmp_path, storage=1, **NULL)
    reqs = workload(cfg, 40, users=6, rate=1000.0, turns=3)   # the timed run waits for arrivals
    fast, _, _, _ = run_log(tmp_path, "fast", reqs)
    delayed = {"tiers": {lv: {"kind": "null", "latency_us": 1} for lv in ("hbm", "dram", "storage")}}
    timed, _, _, _ = run_log(tmp_path, "timed", reqs, null=False, **delayed)
    op = [(r.write, r.level, r.key, r.slot, r.stage, r.request) for r in fast]
    assert sorted(op) == sorted((r.write, r.level, r.key, r.slot, r.stage, r.request) for r in timed)
    first = list(dict.fromkeys(r.request for r in fast))
    assert first == [r.index for r in reqs if r.index in set(first)] and len(first) == len(reqs)
    per = {}   # within a request: as the timed run's log orders it, stage by stage
    for r in timed:
        per.setdefault(r.request, []).append(r)
    for index, mine in per.items():
        got = [r for r in fast if r.request == index]
        assert [r.stage for r in got] == [r.stage for r in sorted(mine, key=lambda r: r.t_ns)] or \
            sorted(r.stage for r in got) == sorted(r.stage for r in mine)
    assert {r.latency_ns for r in fast} == {0}


def test_a_phase_after_warm_up_goes_on_with_the_trace(tmp_path: Path) -> None:
    """Warm-up ends on the virtual clock at its deadline; the measured phase, whenever
    it starts, goes on from there: a request due d seconds after the warm-up's end is
    stamped d seconds after the measured phase's start."""
    cfg = make_config(tmp_path, storage=1, **NULL)
    reqs = workload(cfg, 40, users=6, rate=1.0, turns=2)
    engine, trace, tiers, _ = trace_engine(tmp_path, "warm")
    try:
        t0 = time.perf_counter_ns()
        engine.start_phase(t0)
        source = iter(reqs)
        engine.replay(source, t0 + 5 * 10**9)
        trace.start()
        start = time.perf_counter_ns()
        engine.start_phase(start)
        engine.replay(source, None)
        engine.end_phase()
        shift = trace._wall0 - trace._perf0
        trace.close()
    finally:
        close_all(engine, tiers)
    rows = list(read_rows(str(tmp_path / "warm.csv")))
    arrival = {r.index: r.arrival_s for r in reqs}
    assert rows and min(arrival[r.request] for r in rows) >= 5
    for r in rows:
        assert abs(r.t_ns - (start + shift + int((arrival[r.request] - 5) * 1e9))) < 2000, r


def test_trace_mode_counts_occupancy_on_its_own_clock(tmp_path: Path) -> None:
    """Requests overlap in trace time (simulated decode): the in-flight integral is the sum
    of their times from admission to end, and the phase's length is on the same clock,
    so occupancy is a count of requests, whatever the wall time was."""
    cfg = make_config(tmp_path, storage=1, **NULL)
    reqs = workload(cfg, 30, users=8, rate=4.0, turns=2)
    _, _, _, engine = run_log(tmp_path, "occ", reqs, engine={"time_per_output_token_ms": 20,
                                                             "max_batch": 64})
    c = engine.metrics.counters
    _, e2e, _, _ = engine.recorder.log.arrays()
    hist = engine.metrics.hist["request.queue"]
    assert hist.count == len(reqs) and hist.max_ns == 0    # admitted at arrival: e2e is in flight
    assert c["batch.inflight_ns"] == int(e2e.sum())
    assert c["batch.clock_ns"] == engine._vnow - engine.recorder.start_ns > 10**9
    assert 1 < c["batch.inflight_ns"] / c["batch.clock_ns"] <= c["batch.max_inflight"]


@pytest.mark.parametrize("scheduling", ["fifo", "priority"])
def test_trace_mode_admits_and_finishes_as_a_one_server_queue_would(tmp_path: Path,
                                                                   scheduling: str) -> None:
    """One request at a time, each taking its simulated decode time on the virtual clock:
    every request ends exactly when a hand-run single-server queue says, with ``priority``
    picking the most urgent class that has arrived (earliest in the trace among equals)."""
    rng = random.Random(5)
    qos = ("interactive", "responsive", "batch")
    reqs = [Request(index=i, user=i, session=i, arrival_s=rng.randrange(40) / 4, think_s=None,
                    qos=rng.choice(qos), segments=((1000 + i, 2 * CT),),
                    output_tokens=rng.randrange(1, 400), output_id=10**9 + i) for i in range(60)]
    reqs.sort(key=lambda r: r.arrival_s)
    engine, _, tiers, _ = trace_engine(tmp_path, scheduling, engine={
        "max_batch": 1, "scheduling": scheduling, "time_per_output_token_ms": 1})
    try:
        engine.start_phase(time.perf_counter_ns())
        engine.replay(iter(reqs), None)
        index, e2e, _, _ = engine.recorder.log.arrays()
    finally:
        close_all(engine, tiers)
    want, t, waiting = {}, 0, list(reqs)          # ns from the phase start
    while waiting:
        t = max(t, min(int(r.arrival_s * 1e9) for r in waiting))
        due = [r for r in waiting if int(r.arrival_s * 1e9) <= t]
        pick = due[0] if scheduling == "fifo" else min(due, key=lambda r: qos.index(r.qos))
        waiting.remove(pick)
        t += pick.output_tokens * 1_000_000
        want[pick.index] = t - int(pick.arrival_s * 1e9)
    assert dict(zip(index.tolist(), e2e.tolist(), strict=True)) == want
    assert max(want.values()) > 10**9                               # requests did queue
