"""Recording: every figure one rank measures, kept apart from the request flow.

The engine tells the recorder what happened (lookups, a stage of timed operations, a
request's end); the recorder turns it into histograms, counters, 1-second series
(``metrics.Metrics``) and the per-request log that the TP-group maximum needs at the
end. It runs on the engine's thread only, so nothing here is shared between threads.
Every name comes from ``results.names``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from operator import attrgetter

import numpy as np

from mpi_kvbench.engine.iopool import DROP, MOVE, READ, WRITE, Done, Op
from mpi_kvbench.iotrace import STAGES, IoTraceLog
from mpi_kvbench.metrics import Metrics
from mpi_kvbench.results import names
from mpi_kvbench.results.collected import RequestLog
from mpi_kvbench.workloads.base import Request
from mpi_kvbench.workloads.qos import QOS_CLASSES

_STAGE_CODE = {name: i for i, name in enumerate(STAGES)}
_QOS_CODE = {name: i for i, name in enumerate(QOS_CLASSES)}
_KIND_SRC_DST_CRC = attrgetter("kind", "src", "dst", "crc")


def merged(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The intervals' union as disjoint intervals, in order (touching ones joined)."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def busy_ns(intervals: list[tuple[int, int]]) -> int:
    """How long at least one of the intervals was open: the time a tier had I/O in flight."""
    return sum(b - a for a, b in merged(intervals))


class Recorder:
    """One rank's metrics and request log for the current phase.

    ``tiers`` names the I/O pool's tiers by index (the rank's own levels, then any
    other rank's files it reads), so an operation's tier index names its figures.
    ``trace``: the I/O trace log, which gets a row per operation while it is recording.
    ``clock``: the engine's clock, for the times the recorder reads itself.
    """

    def __init__(self, tiers: Sequence[str], chunk_tokens: int, objects_per_chunk: int,
                 verify: bool, start_ns: int, trace: IoTraceLog | None = None,
                 clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.tiers = list(tiers)
        self.clock = clock            # the engine's (virtual in trace mode)
        self.trace = trace
        self.chunk_tokens = chunk_tokens
        self.objects_per_chunk = objects_per_chunk
        self.verify = verify
        self.start_phase(start_ns)

    def start_phase(self, start_ns: int) -> None:
        """Forgets everything: a fresh measurement from ``start_ns`` on."""
        self.metrics = Metrics()
        self.log = RequestLog()
        self.start_ns = start_ns
        self._spans: dict[str, list[tuple[int, int]]] = {}   # I/O intervals not yet settled

    def second(self, t_ns: int) -> float:
        """Phase time of a clock reading, for the 1-second series."""
        return (t_ns - self.start_ns) / 1e9

    def count(self, name: str, n: int = 1) -> None:
        self.metrics.add(name, n)

    # -- requests ---------------------------------------------------------------------
    def lookups(self, n_chunks: int, hit_levels: Sequence[int]) -> None:
        """A prompt's chain lookup: ``hit_levels`` holds the tier of each hit object."""
        m, per = self.metrics, self.objects_per_chunk
        hits = len(hit_levels) // per
        m.add("chunk_lookups", n_chunks)
        m.add("chunk_hits", hits)
        t = self.second(self.clock())
        m.tick("chunk_lookups", t, n_chunks)
        m.tick("chunk_hits", t, hits)
        for i in range(0, hits * per, per):   # a chunk counts where its first object is
            tier = self.tiers[hit_levels[i]]
            m.add(names.tier_counter(tier, "chunk_hits"))
            m.add(names.tier_counter(tier, "tokens_hit"), self.chunk_tokens)

    def prefill_done(self, intended: int, start: int, done: int) -> None:
        self.metrics.record(names.REQUEST_TTFT, done - intended)
        self.metrics.record(names.REQUEST_QUEUE, start - intended)

    def handed_off(self, chunks: int) -> None:
        """A prefill-only request ended by handing ``chunks`` to a decode group."""
        self.metrics.add("handoff_chunks_sent", chunks)
        self.metrics.add("requests_prefilled")

    def handoff_read(self, written_ns: int, chunks: int) -> None:
        """The decode side read back what a prefill rank wrote at ``written_ns``."""
        self.metrics.record(names.HANDOFF, self.clock() - written_ns)
        self.metrics.add("handoff_chunks", chunks)

    def request_done(self, req: Request, intended: int, done: int, storage_ns: int,
                     queue_ns: int) -> None:
        m = self.metrics
        t = self.second(done)
        m.record(names.REQUEST_E2E, done - intended)
        m.record(names.REQUEST_PREFILL_STORAGE, storage_ns)
        m.record(names.qos(req.qos, "e2e"), done - intended)
        m.record(names.qos(req.qos, "prefill_storage"), storage_ns)
        m.add("requests_completed")
        m.add(names.qos(req.qos, "requests"))
        m.add("prompt_tokens", req.prompt_tokens)
        m.add("output_tokens", req.output_tokens)
        m.tick("requests", t)
        m.peak("queue_delay_ms_max", t, queue_ns / 1e6)
        self.log.index.append(req.index)
        self.log.e2e_ns.append(done - intended)
        self.log.prefill_ns.append(storage_ns)
        self.log.qos.append(_QOS_CODE[req.qos])

    # -- operations -------------------------------------------------------------------
    def dropped(self, level: int) -> None:
        self.metrics.add(names.tier_counter(self.tiers[level], "drops"))

    def left_to_writer(self, level: int) -> None:
        self.metrics.add(names.tier_counter(self.tiers[level], "writes_left_to_writer"))

    def stage(self, ops: Sequence[Op], results: Sequence[Done], phase: str,
              req: Request | None = None) -> None:
        """Every figure of one stage of timed operations; its I/O intervals count toward
        each tier's busy time (see ``settle_busy``). ``req``: the request they served."""
        m, tiers = self.metrics, self.tiers
        if self.trace is not None and self.trace.recording:
            self._trace(ops, results, phase, req)
        span = self._spans
        # latencies per (tier, op) and volumes per (tier, op, second), recorded once per group:
        # the same figures as one call per operation, at a fraction of the cost
        lat: dict[tuple[str, str], list[int]] = {}
        vol: dict[tuple[str, str, int], list[int]] = {}
        start = self.start_ns

        def tally(tier: str, what: str, sec: int, ns: int, nbytes: int, began: int) -> None:
            lat.setdefault((tier, what), []).append(ns)
            v = vol.setdefault((tier, what, sec), [0, 0])
            v[0] += 1
            v[1] += nbytes
            if ns:     # an empty interval adds no busy time
                span.setdefault(tier, []).append((began, began + ns))

        for op, d in zip(ops, results, strict=True):
            sec = max(0, (d.end - start) // 1_000_000_000)
            if op.kind == DROP:
                lat.setdefault((tiers[op.src], "delete"), []).append(d.end - d.start)
                vol.setdefault((tiers[op.src], "delete", sec), [0, 0])[0] += 1
                continue
            if op.kind != WRITE:
                tally(tiers[op.src], "read", sec, d.read_ns, d.read_bytes, d.start)
                if not d.ok:
                    m.add("verify_mismatches")
                if self.verify and op.crc >= 0:
                    m.add("verify_checked")
                if d.stamp_checked:
                    m.add("stamp_checked")
                    if not d.stamp_ok:   # a region never written, or truncated away
                        m.add("stamp_mismatches")
            if op.kind != READ:
                tally(tiers[op.dst], "write", sec, d.write_ns, d.write_bytes, d.end - d.write_ns)
            if op.kind == MOVE:
                family = "demotion" if op.dst > op.src else "promotion"
                m.record(names.move(family, tiers[op.src]), d.end - d.start)
                m.add(f"{family}s")
                m.add(f"{family}_bytes", d.write_bytes)
        for (tier, what), values in lat.items():
            name = names.tier_op(tier, what, phase)
            if len(values) >= 32:
                m.histogram(name).record_many(np.array(values, dtype=np.int64))
            else:
                for value in values:
                    m.record(name, value)
        for (tier, what, sec), (n, nbytes) in vol.items():
            for counter, value in ((f"{what}_bytes", nbytes), (f"{what}_ops", n)):
                name = names.tier_counter(tier, counter)
                m.add(name, value)
                m.tick(name, sec, value)

    def _trace(self, ops: Sequence[Op], results: Sequence[Done], phase: str,
               req: Request | None) -> None:
        """A trace row per tier call: a move is a read and a write (the reference's Evict pair)."""
        add, tiers = self.trace.add, self.tiers
        stage = _STAGE_CODE[phase]
        index, qos = (-1, -1) if req is None else (req.index, _QOS_CODE[req.qos])
        for op, d in zip(ops, results, strict=True):
            if op.kind == DROP:   # the reference's log has no delete; replay reuses the slot
                continue
            if op.kind != WRITE:
                add((d.start, 0, d.read_bytes, tiers[op.src], op.key, stage, index, qos,
                     op.src_slot, d.read_ns))
            if op.kind != READ:
                add((d.end - d.write_ns, 1, d.write_bytes, tiers[op.dst], op.key, stage, index, qos,
                     op.dst_slot, d.write_ns))

    def stage_instant(self, ops: Sequence[Op], t: int, nbytes: int, phase: str,
                      req: Request | None = None) -> None:
        """Trace mode's ``stage``: every operation done at ``t`` in no time, moving
        ``nbytes`` (what ``stage`` records for such results, at a fraction of its cost:
        counts instead of lists of zeros, and no I/O interval, which adds no busy time)."""
        m, tiers = self.metrics, self.tiers
        if self.trace is not None and self.trace.recording:
            self._trace_instant(ops, t, nbytes, phase, req)
        n: dict[tuple[str, str], int] = {}    # operations per (tier, what), first seen first
        loop: dict[str, int] = {}             # counters the per-op loop of ``stage`` adds, in order
        moves: dict[str, int] = {}            # move latencies (all 0) per histogram
        check = self.verify
        # one C-speed pass over the ops; distinct (kind, src, dst, crc) in first-seen
        # order then give every dict above its keys in the order ``stage`` makes them
        for (kind, src, dst, crc), count in Counter(map(_KIND_SRC_DST_CRC, ops)).items():
            if kind == DROP:
                k = (tiers[src], "delete")
                n[k] = n.get(k, 0) + count
                continue
            if kind != WRITE:
                k = (tiers[src], "read")
                n[k] = n.get(k, 0) + count
                if check and crc >= 0:
                    loop["verify_checked"] = loop.get("verify_checked", 0) + count
            if kind != READ:
                k = (tiers[dst], "write")
                n[k] = n.get(k, 0) + count
            if kind == MOVE:
                family = "demotion" if dst > src else "promotion"
                name = names.move(family, tiers[src])
                moves[name] = moves.get(name, 0) + count
                loop[f"{family}s"] = loop.get(f"{family}s", 0) + count
                loop[f"{family}_bytes"] = loop.get(f"{family}_bytes", 0) + count * nbytes
        for name, count in moves.items():
            m.histogram(name).record_zeros(count)
        for name, value in loop.items():
            m.add(name, value)
        for (tier, what), count in n.items():
            m.histogram(names.tier_op(tier, what, phase)).record_zeros(count)
        sec = max(0, (t - self.start_ns) // 1_000_000_000)
        for (tier, what), count in n.items():
            for counter, value in ((f"{what}_bytes", 0 if what == "delete" else count * nbytes),
                                   (f"{what}_ops", count)):
                name = names.tier_counter(tier, counter)
                m.add(name, value)
                m.tick(name, sec, value)

    def _trace_instant(self, ops: Sequence[Op], t: int, nbytes: int, phase: str,
                       req: Request | None) -> None:
        """``_trace`` for ``stage_instant``: the same rows, built in one pass."""
        tiers = self.tiers
        stage = _STAGE_CODE[phase]
        index, qos = (-1, -1) if req is None else (req.index, _QOS_CODE[req.qos])
        rows = []
        add = rows.append
        for op in ops:
            kind = op.kind
            if kind == WRITE:
                add((t, 1, nbytes, tiers[op.dst], op.key, stage, index, qos, op.dst_slot, 0))
            elif kind == READ:
                add((t, 0, nbytes, tiers[op.src], op.key, stage, index, qos, op.src_slot, 0))
            elif kind == MOVE:
                add((t, 0, nbytes, tiers[op.src], op.key, stage, index, qos, op.src_slot, 0))
                add((t, 1, nbytes, tiers[op.dst], op.key, stage, index, qos, op.dst_slot, 0))
        self.trace.extend(rows)

    def unsettled(self) -> int:
        return sum(len(v) for v in self._spans.values())

    def settle_busy(self, before_ns: int | None = None) -> None:
        """Adds to each tier's busy time the union of its I/O intervals that end before
        ``before_ns`` (all when None). Requests overlap, so the union is taken over every
        stage: an interval can only meet a later one if it ends after the earliest start
        still to come, which the caller passes as ``before_ns``."""
        for tier, spans in self._spans.items():
            if not spans:
                continue
            union = merged(spans)
            done = [iv for iv in union if before_ns is None or iv[1] < before_ns]
            self._spans[tier] = [iv for iv in union if before_ns is not None and iv[1] >= before_ns]
            if done:   # disjoint already
                self.metrics.add(names.tier_counter(tier, "busy_ns"), sum(b - a for a, b in done))

    def bytes_moved(self) -> int:
        """Bytes read and written by every tier so far in this phase (the progress line)."""
        c = self.metrics.counters
        return sum(c.get(names.tier_counter(t, f"{op}_bytes"), 0)
                   for t in set(self.tiers) for op in names.OPS)
