"""The Recorder on its own: hand-made operations and requests in, figures out, each
checked against a value worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mpi_kvbench.engine.iopool import MOVE, READ, WRITE, Done, Op
from mpi_kvbench.engine.record import Recorder, busy_ns
from mpi_kvbench.results import names
from mpi_kvbench.workloads.base import Request
from mpi_kvbench.workloads.qos import QOS_CLASSES

OBJ = 4096
T0 = 1_000_000_000      # the phase starts at this clock reading


def recorder(verify: bool = False, per_chunk: int = 1) -> Recorder:
    return Recorder(["hbm", "dram", "storage"], chunk_tokens=16, objects_per_chunk=per_chunk,
                    verify=verify, start_ns=T0)


def done(start: int, read_ns: int = 0, write_ns: int = 0, gap: int = 0, ok: bool = True) -> Done:
    end = start + read_ns + gap + write_ns
    return Done(start, end, read_ns, write_ns, OBJ if read_ns else 0, OBJ if write_ns else 0, 7, ok)


def test_a_stage_counts_bytes_ops_latency_and_busy_time_per_tier() -> None:
    r = recorder()
    ops = [Op(WRITE, 1, dst=0, dst_slot=0), Op(WRITE, 2, dst=0, dst_slot=1),
           Op(READ, 3, src=2, src_slot=5)]
    # two overlapping hbm writes [T0, T0+100) and [T0+50, T0+250): busy 250 ns
    results = [done(T0, write_ns=100), done(T0 + 50, write_ns=200), done(T0 + 10, read_ns=1_000)]
    r.stage(ops, results, "prefill")
    r.settle_busy()
    c, h = r.metrics.counters, r.metrics.hist
    assert c["hbm.write_bytes"] == 2 * OBJ and c["hbm.write_ops"] == 2
    assert c["storage.read_bytes"] == OBJ and c["storage.read_ops"] == 1
    assert c["hbm.busy_ns"] == 250 and c["storage.busy_ns"] == 1_000
    assert h["hbm.write.prefill"].count == 2 and h["hbm.write.prefill"].sum_ns == 300
    assert h["storage.read.prefill"].max_ns == 1_000
    assert "dram.write_ops" not in c
    assert r.bytes_moved() == 3 * OBJ


def test_busy_time_is_one_union_over_overlapping_stages_of_different_requests() -> None:
    r = recorder()
    r.stage([Op(READ, 1, src=2, src_slot=0)], [done(T0, read_ns=100)], "prefill")        # [0, 100)
    r.stage([Op(READ, 2, src=2, src_slot=1)], [done(T0 + 50, read_ns=100)], "decode")    # [50, 150)
    r.settle_busy(before_ns=T0 + 120)     # an op may still start at 120: [0, 150) is not final
    assert "storage.busy_ns" not in r.metrics.counters
    r.stage([Op(READ, 3, src=2, src_slot=2)], [done(T0 + 140, read_ns=60)], "prefill")   # [140, 200)
    r.settle_busy(before_ns=T0 + 1_000)
    r.stage([Op(READ, 4, src=2, src_slot=3)], [done(T0 + 2_000, read_ns=10)], "prefill")
    r.settle_busy()
    assert r.metrics.counters["storage.busy_ns"] == 200 + 10
    assert r.unsettled() == 0


def test_a_move_is_a_read_and_a_write_and_its_direction_names_it() -> None:
    r = recorder()
    ops = [Op(MOVE, 1, src=0, src_slot=0, dst=1, dst_slot=0),      # down: a demotion
           Op(MOVE, 2, src=2, src_slot=3, dst=0, dst_slot=1)]      # up: a promotion
    r.stage(ops, [done(T0, read_ns=10, write_ns=30, gap=5), done(T0, read_ns=20, write_ns=40)], "demote")
    c, h = r.metrics.counters, r.metrics.hist
    assert (c["demotions"], c["demotion_bytes"], c["promotions"], c["promotion_bytes"]) == (1, OBJ, 1, OBJ)
    assert h["demotion.hbm"].sum_ns == 45 and h["promotion.storage"].sum_ns == 60   # end - start
    assert c["hbm.read_ops"] == c["dram.write_ops"] == c["storage.read_ops"] == 1
    assert c["hbm.write_ops"] == 1


def test_verify_counts_checked_reads_and_mismatches() -> None:
    r = recorder(verify=True)
    ops = [Op(READ, 1, src=1, src_slot=0, crc=5), Op(READ, 2, src=1, src_slot=1, crc=-1),
           Op(READ, 3, src=1, src_slot=2, crc=9)]
    r.stage(ops, [done(T0, read_ns=1), done(T0, read_ns=1), done(T0, read_ns=1, ok=False)], "decode")
    assert r.metrics.counters["verify_checked"] == 2        # crc -1: another rank's bytes
    assert r.metrics.counters["verify_mismatches"] == 1


def test_lookups_count_chunks_where_their_first_object_is() -> None:
    r = recorder(per_chunk=2)
    r.lookups(5, [0, 0, 1, 0, 2])     # two whole chunks hit (hbm, dram); a fifth object is half a chunk
    c = r.metrics.counters
    assert (c["chunk_lookups"], c["chunk_hits"]) == (5, 2)
    assert c["hbm.chunk_hits"] == 1 and c["dram.chunk_hits"] == 1 and "storage.chunk_hits" not in c
    assert c["hbm.tokens_hit"] == 16


def test_a_finished_request_lands_in_every_figure_and_the_log() -> None:
    r = recorder()
    req = Request(index=42, user=3, session=3, arrival_s=0.0, think_s=None, qos="responsive",
                  segments=((1, 100), (2, 28)), output_tokens=9, output_id=5)
    r.request_done(req, intended=T0 + 10, done=T0 + 2_500_000_010, storage_ns=777, queue_ns=3_000_000)
    c, h = r.metrics.counters, r.metrics.hist
    assert h[names.REQUEST_E2E].sum_ns == 2_500_000_000
    assert h[names.qos("responsive", "prefill_storage")].sum_ns == 777
    assert (c["requests_completed"], c["qos.responsive.requests"]) == (1, 1)
    assert (c["prompt_tokens"], c["output_tokens"]) == (128, 9)
    assert r.metrics.series["requests"][2] == 1                  # done 2.5 s into the phase
    assert r.metrics.series["queue_delay_ms_max"][2] == pytest.approx(3.0)
    index, e2e, prefill, qos = r.log.arrays()
    assert (index.tolist(), e2e.tolist(), prefill.tolist()) == ([42], [2_500_000_000], [777])
    assert QOS_CLASSES[qos[0]] == "responsive"


def test_a_new_phase_forgets_the_last() -> None:
    r = recorder()
    r.dropped(2)
    r.start_phase(T0 + 5)
    assert r.metrics.counters == {} and len(r.log.index) == 0 and r.start_ns == T0 + 5


@pytest.mark.parametrize("intervals, busy", [
    ([(0, 10), (5, 15), (20, 30)], 25), ([(20, 30), (0, 40)], 40), ([(0, 5)], 5), ([], 0),
    ([(0, 10), (10, 20)], 20)])
def test_busy_time_is_the_union_of_the_intervals(intervals: list, busy: int) -> None:
    assert busy_ns(intervals) == busy


def test_busy_time_equals_the_instants_covered_by_any_interval() -> None:
    """Against a count of the nanoseconds inside at least one interval, on random ones."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        starts = rng.integers(0, 300, rng.integers(0, 12))
        intervals = [(int(a), int(a + w)) for a, w in zip(starts, rng.integers(0, 60, len(starts)),
                                                          strict=True)]
        covered = set().union(*(range(a, b) for a, b in intervals))
        assert busy_ns(intervals) == len(covered)
