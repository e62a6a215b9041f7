"""The per-rank engine: serves requests in trace order against this rank's tiers.

A TP group serves its requests one at a time, first come first served, each request's
chunk I/O running ``io_depth`` deep. Planning (lookups, placement, eviction) is done in
trace order before any I/O, so the same trace gives the same operations on every run;
a request's latency is measured from its intended arrival, so a device that cannot keep
up shows queueing instead of hiding it (no coordinated omission).

Per request:
  prefill  look up the prompt's chunk chain; the longest prefix held anywhere is a hit.
           Demote what must make room, read the hits (promoting them when asked), then
           write the prompt's missing chunks (after simulated compute, if any).
  decode   optional simulated time per token; in ``reference`` mode the request's KV is
           re-read every ``decode_batch`` tokens. At the end the new full chunks
           (prompt tail plus output) are written for the next turn. A partial last
           chunk stays in HBM and is never written.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from mpi_kvbench.cache import Hierarchy, Move, Plan, watermark_levels
from mpi_kvbench.chunks import chunk_keys
from mpi_kvbench.config import Config
from mpi_kvbench.iopool import MOVE, READ, WRITE, Done, IOPool, Op
from mpi_kvbench.metrics import Metrics
from mpi_kvbench.payload import PayloadSource
from mpi_kvbench.registry import POLICIES
from mpi_kvbench.tiers.base import Tier
from mpi_kvbench.workloads.base import QOS_CLASSES, Request


@dataclass
class RequestLog:
    """Per-request shard times of this rank (ns), kept for the TP-group max at the end."""

    index: array = field(default_factory=lambda: array("q"))
    e2e_ns: array = field(default_factory=lambda: array("q"))
    prefill_ns: array = field(default_factory=lambda: array("q"))
    qos: array = field(default_factory=lambda: array("b"))   # index into QOS_CLASSES

    def arrays(self) -> tuple[np.ndarray, ...]:
        """Zero-copy views: index, e2e_ns, prefill_ns (int64) and qos (int8)."""
        return (*(np.frombuffer(a, dtype=np.int64) for a in
                  (self.index, self.e2e_ns, self.prefill_ns)),
                np.frombuffer(self.qos, dtype=np.int8))


def busy_ns(intervals: list[tuple[int, int]]) -> int:
    """How long at least one of the intervals was open: the time a tier had I/O in flight."""
    total, end = 0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total, end = total + (b - a), b
        elif b > end:
            total, end = total + (b - end), b
    return total


class Engine:
    """One rank's cache hierarchy, I/O pool and request loop; testable without MPI."""

    def __init__(self, cfg: Config, tiers: Sequence[Tier], storage_writer: bool = True) -> None:
        """``storage_writer`` False: another rank of the TP group writes the storage tier
        (MLA one_writer mode); this one only reads it."""
        self.cfg = cfg
        self.storage_writer = storage_writer
        self.tiers = list(tiers)
        self.names = [t.level for t in cfg.tiers]
        self.geometry = cfg.geometry
        obj = self.geometry.object_bytes
        policy = POLICIES.load(cfg.engine.policy)
        levels = watermark_levels(self.names, [t.slots for t in self.tiers],
                                  cfg.engine.high_watermark, cfg.engine.low_watermark,
                                  [policy() for _ in self.tiers])
        self.cache = Hierarchy(levels, obj)
        self.payload = PayloadSource(obj, cfg.io.io_depth, cfg.io.payload)
        self.pool = IOPool(self.tiers, obj, cfg.io.io_depth, self.payload, cfg.io.verify)
        self.metrics = Metrics()
        self.log = RequestLog()
        self.phase_start_ns = time.perf_counter_ns()
        self._user_done_ns: dict[int, int] = {}
        self._seq = 0
        self._stop: Callable[[], object] = lambda: None
        self.completed = 0
        self.peak_used = [0] * len(self.tiers)
        self.io_names = list(self.names)   # the pool's tiers: these, plus peers' files read
        self.write_level = 0               # where new chunks land; storage on prefill groups
        self.handoff: Callable[[Request, list[int], int, int], None] | None = None

    # -- phases -----------------------------------------------------------------------
    def start_phase(self, start_ns: int) -> None:
        """Starts a fresh measurement (after set-up or warm-up) at the agreed ``start_ns``."""
        self.metrics = Metrics()
        self.log = RequestLog()
        self.phase_start_ns = start_ns
        self._user_done_ns.clear()
        self.completed = 0

    def replay(self, requests: Iterator[Request], deadline_ns: int | None = None,
               max_requests: int = 0, stop: Callable[[], object] = lambda: None,
               progress: Callable[[Engine], None] | None = None) -> str:
        """Serves requests until a limit; says which: "share" (trace or max_requests
        done), "deadline" or "stopped" (``stop()`` returned something true)."""
        self._stop = stop
        for req in requests:
            if max_requests and self.completed >= max_requests:
                return "share"
            if deadline_ns is not None and time.perf_counter_ns() >= deadline_ns:
                return "deadline"
            if stop():
                return "stopped"
            if not self.serve(req, deadline_ns):
                return "stopped" if stop() else "deadline"
            if progress is not None:
                progress(self)
        return "share"

    def precondition(self, share: float, batch: int = 64) -> int:
        """Fills the storage tier to ``share`` of its slots with objects no request will
        ever ask for (keys outside the 64-bit chain space), so an SSD is measured in
        steady state and the cache starts full. Not measured; returns objects written."""
        if "storage" not in self.names:
            return 0
        level = self.names.index("storage")
        target = int(share * self.cache.levels[level].slots)
        written = 0
        while self.cache.levels[level].used < target:
            n = min(batch, target - self.cache.levels[level].used)
            keys = [(1 << 64) + self._seq + i for i in range(n)]
            plan = self.cache.place(keys, pinned=set(), level=level)
            self._stage(self._write_ops(plan), "precondition")
            written += len(plan.placements)
            if not plan.placements:
                break
        return written

    # -- one request --------------------------------------------------------------------
    def serve(self, req: Request, deadline_ns: int | None = None) -> bool:
        """Serves one request; False when its intended arrival falls after the deadline.

        With a ``handoff`` (a prefill-only group of disaggregated serving) the request
        ends after prefill, its chunks written to storage, and ``handoff`` tells a
        decode group where they are."""
        intended = self._intended_ns(req)
        if deadline_ns is not None and intended >= deadline_ns:
            self._wait_until(deadline_ns)   # the window is the whole duration, idle end included
            return False
        if not self._wait_until(intended):
            return False
        now = time.perf_counter_ns()
        start = now
        self.cache.now = (start - self.phase_start_ns) / 1e9
        keys, storage_ns = self._prefill(req)
        prefill_done = time.perf_counter_ns()
        self.metrics.record("request.ttft_proxy", prefill_done - intended)
        self.metrics.record("request.queue", start - intended)
        if self.handoff is not None:
            self.handoff(req, keys, intended, storage_ns)
            self.completed += 1
            self.metrics.add("requests_prefilled")
            return True
        self._decode(req, keys)
        self._finish(req, intended, storage_ns, start - intended)
        return True

    def _wait_until(self, t_ns: int) -> bool:
        """Sleeps until ``t_ns`` in short slices, so a stop request is seen; False if stopped."""
        while (now := time.perf_counter_ns()) < t_ns:
            if self._stop():
                return False
            time.sleep(min(0.2, (t_ns - now) / 1e9))
        return True

    def serve_handoff(self, req: Request, peer: Tier, slots: list[int], keys: list[int],
                      crcs: list[int], intended: int, prefill_storage_ns: int,
                      written_ns: int) -> None:
        """Decode side of disaggregated serving: reads the chunks a prefill group wrote
        back through the storage tier (its file, ``peer``), loads them into this rank's
        own tiers, decodes, and writes the new chunks. ``written_ns`` (this node's
        perf_counter clock) is when the prefill's writes were done."""
        if peer not in self.pool.tiers:
            self.pool.tiers.append(peer)
            self.io_names.append("storage")
        src = self.pool.tiers.index(peer)
        waited = time.perf_counter_ns() - written_ns
        self.cache.now = (time.perf_counter_ns() - self.phase_start_ns) / 1e9
        ops = [Op(READ, k, src, slot, crc=c) for k, slot, c in zip(keys, slots, crcs, strict=True)]
        self._stage(ops, "handoff")
        self.metrics.record("handoff", time.perf_counter_ns() - written_ns)
        self.metrics.add("handoff_chunks", len(ops))
        plan = self.cache.place([k for k in keys if k not in self.cache], pinned=set(keys))
        self._demote(plan)
        self._stage(self._write_ops(plan), "handoff")
        self._decode(req, keys)
        self._finish(req, intended, prefill_storage_ns, waited)

    def _prefill(self, req: Request) -> tuple[list[int], int]:
        """Looks up the chain, reads the hits, writes the missing chunks; returns the
        prompt's object keys and the storage time spent."""
        cfg = self.cfg
        ct = cfg.kv.chunk_tokens
        chunks = chunk_keys(req.segments, ct)
        keys = self.geometry.object_keys(chunks)
        hits = self.cache.lookup(keys)
        self._count_lookups(len(chunks), hits)
        promote = [k for k, e in hits if e.level > 0] if cfg.engine.promotion == "hbm" else []
        promoted = set(promote)
        reads = [Op(READ, k, e.level, e.slot, crc=e.checksum) for k, e in hits if k not in promoted]
        new = [k for k in keys[len(hits):] if k not in self.cache]
        plan = self.cache.place(new, pinned={k for k, _ in hits}, promote=promote,
                                level=self.write_level)
        storage_ns = self._demote(plan)
        reads += [self._move_op(mv) for mv in plan.promotions]
        storage_ns += self._stage(reads, "prefill")
        hit_tokens = len(hits) // self.geometry.objects_per_chunk * ct
        if cfg.engine.prefill_tokens_per_s > 0:
            time.sleep((req.prompt_tokens - hit_tokens) / cfg.engine.prefill_tokens_per_s)
        storage_ns += self._stage(self._write_ops(plan), "prefill")
        return keys, storage_ns

    def _decode(self, req: Request, keys: list[int]) -> None:
        """Generates the output (simulated), then writes the new full chunks."""
        cfg = self.cfg
        if cfg.engine.decode_mode == "reference":
            for _ in range(req.output_tokens // cfg.engine.decode_batch):
                held = self.cache.lookup(keys)
                self._stage([Op(READ, k, e.level, e.slot, crc=e.checksum) for k, e in held],
                            "decode")
        if cfg.engine.time_per_output_token_ms > 0:
            time.sleep(req.output_tokens * cfg.engine.time_per_output_token_ms / 1e3)
        after = self.geometry.object_keys(chunk_keys(req.context_after(), cfg.kv.chunk_tokens))
        new = [k for k in after if k not in self.cache]
        held = {k for k in after if k in self.cache}
        plan = self.cache.place(new, pinned=held)
        self._demote(plan)
        self._stage(self._write_ops(plan), "decode")

    def _finish(self, req: Request, intended: int, storage_ns: int, queue_ns: int) -> None:
        m = self.metrics
        done = time.perf_counter_ns()
        self._user_done_ns[req.user] = done
        self.completed += 1
        t = (done - self.phase_start_ns) / 1e9
        m.record("request.e2e", done - intended)
        m.record("request.prefill_storage", storage_ns)
        m.record(f"qos.{req.qos}.e2e", done - intended)
        m.record(f"qos.{req.qos}.prefill_storage", storage_ns)
        m.add("requests_completed")
        m.add(f"qos.{req.qos}.requests")
        m.add("prompt_tokens", req.prompt_tokens)
        m.add("output_tokens", req.output_tokens)
        m.tick("requests", t)
        m.peak("queue_delay_ms_max", t, queue_ns / 1e6)
        self.log.index.append(req.index)
        self.log.e2e_ns.append(done - intended)
        self.log.prefill_ns.append(storage_ns)
        self.log.qos.append(QOS_CLASSES.index(req.qos))

    def _intended_ns(self, req: Request) -> int:
        if req.think_s is not None and req.user in self._user_done_ns:
            return self._user_done_ns[req.user] + int(req.think_s * 1e9)
        return self.phase_start_ns + int(req.arrival_s * 1e9)

    def _count_lookups(self, n_chunks: int, hits: list) -> None:
        m, per = self.metrics, self.geometry.objects_per_chunk
        m.add("chunk_lookups", n_chunks)
        m.add("chunk_hits", len(hits) // per)
        t = (time.perf_counter_ns() - self.phase_start_ns) / 1e9
        m.tick("chunk_lookups", t, n_chunks)
        m.tick("chunk_hits", t, len(hits) // per)
        for i in range(0, len(hits) - len(hits) % per, per):
            name = self.names[hits[i][1].level]
            m.add(f"{name}.chunk_hits")
            m.add(f"{name}.tokens_hit", self.cfg.kv.chunk_tokens)

    # -- carrying out plans --------------------------------------------------------------
    def _move_op(self, mv: Move) -> Op:
        entry = self.cache.index[mv.key]
        return Op(MOVE, mv.key, mv.src_level, mv.src_slot, mv.dst_level, mv.dst_slot,
                  crc=entry.checksum)

    def _write_ops(self, plan: Plan) -> list[Op]:
        ops = []
        for p in plan.placements:
            if self._leave_to_writer(p.key, p.level):
                continue
            self._seq += 1
            ops.append(Op(WRITE, p.key, dst=p.level, dst_slot=p.slot, seq=self._seq))
        return ops

    def _leave_to_writer(self, key: int, level: int) -> bool:
        """True when another rank of the group writes this storage object (one_writer).
        Its bytes are the writer's, so this rank cannot verify them (checksum -1)."""
        if self.storage_writer or self.names[level] != "storage":
            return False
        self.cache.index[key].checksum = -1
        self.metrics.add("storage.writes_left_to_writer")
        return True

    def _demote(self, plan: Plan) -> int:
        """Runs the plan's demotion stages (deepest tier first); drops need no I/O."""
        self.peak_used = [max(a, b) for a, b in zip(self.peak_used, self.cache.used_bytes(),
                                                      strict=True)]
        total = 0
        for stage in plan.stages:
            ops = []
            for mv in stage:
                if mv.dst_level is None:
                    self.metrics.add(f"{self.names[mv.src_level]}.drops")
                elif not self._leave_to_writer(mv.key, mv.dst_level):
                    ops.append(self._move_op(mv))
            total += self._stage(ops, "demote")
        return total

    def _stage(self, ops: list[Op], phase: str) -> int:
        """Runs ops concurrently, records every figure, returns the stage's wall time (ns)."""
        if not ops:
            return 0
        t0 = time.perf_counter_ns()
        results = self.pool.run(ops)
        wall = time.perf_counter_ns() - t0
        self._record(ops, results, phase)
        return wall

    def _record(self, ops: list[Op], results: list[Done], phase: str) -> None:
        m, names = self.metrics, self.io_names
        span: dict[str, list[tuple[int, int]]] = {}
        for op, d in zip(ops, results, strict=True):
            t = (d.end - self.phase_start_ns) / 1e9
            if op.kind in (READ, MOVE):
                self._record_io(names[op.src], "read", phase, d.read_ns, d.read_bytes, t)
                span.setdefault(names[op.src], []).append((d.start, d.start + d.read_ns))
                if not d.ok:
                    m.add("verify_mismatches")
                if self.cfg.io.verify and op.crc >= 0:
                    m.add("verify_checked")
            if op.kind in (WRITE, MOVE):
                self._record_io(names[op.dst], "write", phase, d.write_ns, d.write_bytes, t)
                span.setdefault(names[op.dst], []).append((d.end - d.write_ns, d.end))
            if op.kind == MOVE:
                kind = "demotion" if op.dst > op.src else "promotion"
                m.record(f"{kind}.{names[op.src]}", d.end - d.start)
                m.add(f"{kind}s")
                m.add(f"{kind}_bytes", d.write_bytes)
            if op.kind == WRITE:
                entry = self.cache.index.get(op.key)
                if entry is not None:
                    entry.checksum = d.crc
        for name, intervals in span.items():
            m.add(f"{name}.busy_ns", busy_ns(intervals))

    def _record_io(self, tier: str, op: str, phase: str, ns: int, nbytes: int, t: float) -> None:
        m = self.metrics
        m.record(f"{tier}.{op}.{phase}", ns)
        m.add(f"{tier}.{op}_bytes", nbytes)
        m.add(f"{tier}.{op}_ops")
        m.tick(f"{tier}.{op}_bytes", t, nbytes)
        m.tick(f"{tier}.{op}_ops", t)

    def close(self) -> None:   # idempotent
        self.pool.close()
        self.payload.close()

