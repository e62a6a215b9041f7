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

The engine is request flow only: what it measures goes to its ``Recorder``; what differs
between roles (a prefill-only group, a decode group reading other ranks' files, a rank
that leaves a shared tier to its group's writer) is given at construction.
"""

from __future__ import annotations

import enum
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from mpi_kvbench.engine.cache import Hierarchy, Move, Plan, watermark_levels
from mpi_kvbench.engine.iopool import MOVE, READ, WRITE, IOPool, Op
from mpi_kvbench.engine.payload import PayloadSource
from mpi_kvbench.engine.record import Recorder
from mpi_kvbench.eviction.base import EvictionPolicy
from mpi_kvbench.layout import Geometry, chunk_keys
from mpi_kvbench.metrics import Metrics
from mpi_kvbench.results import names
from mpi_kvbench.tiers.base import Tier
from mpi_kvbench.workloads.base import Request


@dataclass(frozen=True)
class EngineSettings:
    """What the engine needs of the configuration, and nothing else."""

    geometry: Geometry
    decode_mode: str                 # "end" or "reference"
    decode_batch: int
    promotion: str                   # "none" or "hbm"
    prefill_tokens_per_s: float      # 0: no simulated prefill compute
    time_per_output_token_ms: float  # 0: no simulated decode compute
    high_watermark: float
    low_watermark: float
    io_depth: int
    payload: str                     # "fresh" or "reuse"
    verify: bool


class StopReason(enum.Enum):
    """Why a replay ended."""

    SHARE = "share"          # the trace or max_requests is done
    DEADLINE = "deadline"    # the phase's time is up
    STOPPED = "stopped"      # stop() said so (another rank failed, or the stonewall fell)


#: Called when a prefill-only request is done: the request, the (key, slot, checksum)
#: of its chunks on the write level, its intended arrival and its storage time (ns).
OnPrefilled = Callable[[Request, list[tuple[int, int, int]], int, int], None]

_HandOff = tuple[int, int, int]


def cpu_s() -> float:
    """CPU seconds of the whole process so far (every thread)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Engine:
    """One rank's cache hierarchy, I/O pool and request loop; testable without MPI.

    ``write_level``: where new chunks land (a prefill-only group writes to storage).
    ``sources``: read-only tiers of other ranks (decode side of disaggregated serving),
    read after this rank's own. ``on_prefilled``: makes this a prefill-only server that
    hands every request on after its prefill.
    """

    def __init__(self, s: EngineSettings, tiers: Sequence[Tier],
                 policy: Callable[[], EvictionPolicy], *, write_level: int = 0,
                 sources: Sequence[Tier] = (), on_prefilled: OnPrefilled | None = None) -> None:
        self.s = s
        self.tiers = list(tiers)
        self.names = [t.level for t in self.tiers]
        obj = s.geometry.object_bytes
        levels = watermark_levels(self.names, [t.slots for t in self.tiers], s.high_watermark,
                                  s.low_watermark, [policy() for _ in self.tiers])
        self.cache = Hierarchy(levels, obj)
        self.payload = PayloadSource(obj, s.io_depth, s.payload)
        self.pool = IOPool([*self.tiers, *sources], obj, s.io_depth, self.payload, s.verify)
        self.recorder = Recorder([*self.names, *(t.level for t in sources)],
                                 s.geometry.chunk_tokens, s.geometry.objects_per_chunk, s.verify,
                                 time.perf_counter_ns())
        self.write_level = write_level
        self.on_prefilled = on_prefilled
        self._readers = {i for i, t in enumerate(self.tiers) if t.share == "reader"}
        self._user_done_ns: dict[int, int] = {}
        self._seq = 0
        self._stop: Callable[[], object] = lambda: None
        self._phase0 = (cpu_s(), 0.0, 0, 0)
        self.completed = 0
        self.peak_used = [0] * len(self.tiers)

    @property
    def metrics(self) -> Metrics:
        """This phase's figures so far."""
        return self.recorder.metrics

    # -- phases -----------------------------------------------------------------------
    def start_phase(self, start_ns: int) -> None:
        """Starts a fresh measurement (after set-up or warm-up) at the agreed ``start_ns``."""
        self.recorder.start_phase(start_ns)
        self._user_done_ns.clear()
        self.completed = 0
        p = self.payload
        self._phase0 = (cpu_s(), p.generator_cpu_s, p.generated_bytes, p.stalls)

    def end_phase(self) -> None:
        """Records what the phase cost: process and payload CPU, payload stalls, and the
        peak bytes each tier held."""
        cpu0, gen0, bytes0, stalls0 = self._phase0
        p, r = self.payload, self.recorder
        r.count("cpu.process_us", int((cpu_s() - cpu0) * 1e6))
        r.count("cpu.generation_us", int((p.generator_cpu_s - gen0) * 1e6))
        r.count("payload.generated_bytes", p.generated_bytes - bytes0)
        r.count("payload.stalls", p.stalls - stalls0)
        for name, peak in zip(self.names, self.peak_used, strict=True):
            r.count(names.tier_counter(name, "peak_used_bytes"), peak)

    def replay(self, requests: Iterator[Request], deadline_ns: int | None = None,
               max_requests: int = 0, stop: Callable[[], object] = lambda: None,
               progress: Callable[[Engine], None] | None = None) -> StopReason:
        """Serves requests until a limit, and says which limit."""
        self._stop = stop
        for req in requests:
            if max_requests and self.completed >= max_requests:
                return StopReason.SHARE
            if deadline_ns is not None and time.perf_counter_ns() >= deadline_ns:
                return StopReason.DEADLINE
            if stop():
                return StopReason.STOPPED
            if not self.serve(req, deadline_ns):
                return StopReason.STOPPED if stop() else StopReason.DEADLINE
            if progress is not None:
                progress(self)
        return StopReason.SHARE

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
        """Serves one request; False when its intended arrival falls after the deadline."""
        intended = self._intended_ns(req)
        if deadline_ns is not None and intended >= deadline_ns:
            self._wait_until(deadline_ns)   # the window is the whole duration, idle end included
            return False
        if not self._wait_until(intended):
            return False
        start = time.perf_counter_ns()
        self.cache.now = req.arrival_s
        keys, storage_ns = self._prefill(req)
        self.recorder.prefill_done(intended, start, time.perf_counter_ns())
        if self.on_prefilled is not None:
            held = self._held_at(keys, self.write_level)
            self.on_prefilled(req, held, intended, storage_ns)
            self.recorder.handed_off(len(held))
            self.completed += 1
            return True
        self._decode(req, keys)
        self._finish(req, intended, storage_ns, start - intended)
        return True

    def _held_at(self, keys: list[int], level: int) -> list[_HandOff]:
        index = self.cache.index
        return [(k, e.slot, e.checksum) for k in keys
                if (e := index.get(k)) is not None and e.level == level]

    def _wait_until(self, t_ns: int) -> bool:
        """Sleeps until ``t_ns`` in short slices, so a stop request is seen; False if stopped."""
        while (now := time.perf_counter_ns()) < t_ns:
            if self._stop():
                return False
            time.sleep(min(0.2, (t_ns - now) / 1e9))
        return True

    def serve_handoff(self, req: Request, source: int, chunks: list[_HandOff], intended: int,
                      prefill_storage_ns: int, written_ns: int) -> None:
        """Decode side of disaggregated serving: reads the ``chunks`` (key, slot, checksum)
        a prefill rank wrote from ``sources[source]`` (its file), loads them into this
        rank's own tiers, decodes, and writes the new chunks. ``written_ns`` (this
        node's perf_counter clock) is when the prefill's writes were done."""
        src = len(self.tiers) + source
        waited = time.perf_counter_ns() - written_ns
        self.cache.now = req.arrival_s
        keys = [k for k, _, _ in chunks]
        self._stage([Op(READ, k, src, slot, crc=c) for k, slot, c in chunks], "handoff")
        self.recorder.handoff_read(written_ns, len(chunks))
        plan = self.cache.place([k for k in keys if k not in self.cache], pinned=set(keys))
        self._demote(plan)
        self._stage(self._write_ops(plan), "handoff")
        self._decode(req, keys)
        self._finish(req, intended, prefill_storage_ns, waited)

    def _prefill(self, req: Request) -> tuple[list[int], int]:
        """Looks up the chain, reads the hits, writes the missing chunks; returns the
        prompt's object keys and the time its chunk I/O took, on every tier (ns)."""
        s, geo = self.s, self.s.geometry
        chunks = chunk_keys(req.segments, geo.chunk_tokens)
        keys = geo.object_keys(chunks)
        hits = self.cache.lookup(keys)
        self.recorder.lookups(len(chunks), [e.level for _, e in hits])
        promote = [k for k, e in hits if e.level > 0] if s.promotion == "hbm" else []
        promoted = set(promote)
        reads = [Op(READ, k, e.level, e.slot, crc=e.checksum) for k, e in hits if k not in promoted]
        new = [k for k in keys[len(hits):] if k not in self.cache]
        plan = self.cache.place(new, pinned={k for k, _ in hits}, promote=promote,
                                level=self.write_level)
        io_ns = self._demote(plan)
        reads += [self._move_op(mv) for mv in plan.promotions]
        io_ns += self._stage(reads, "prefill")
        hit_tokens = len(hits) // geo.objects_per_chunk * geo.chunk_tokens
        if s.prefill_tokens_per_s > 0:
            time.sleep((req.prompt_tokens - hit_tokens) / s.prefill_tokens_per_s)
        io_ns += self._stage(self._write_ops(plan), "prefill")
        return keys, io_ns

    def _decode(self, req: Request, keys: list[int]) -> None:
        """Generates the output (simulated), then writes the new full chunks."""
        s, geo = self.s, self.s.geometry
        if s.decode_mode == "reference":
            for _ in range(req.output_tokens // s.decode_batch):
                held = self.cache.lookup(keys)
                self._stage([Op(READ, k, e.level, e.slot, crc=e.checksum) for k, e in held],
                            "decode")
        if s.time_per_output_token_ms > 0:
            time.sleep(req.output_tokens * s.time_per_output_token_ms / 1e3)
        after = geo.object_keys(chunk_keys(req.context_after(), geo.chunk_tokens))
        new = [k for k in after if k not in self.cache]
        held = {k for k in after if k in self.cache}
        plan = self.cache.place(new, pinned=held)
        self._demote(plan)
        self._stage(self._write_ops(plan), "decode")

    def _finish(self, req: Request, intended: int, storage_ns: int, queue_ns: int) -> None:
        done = time.perf_counter_ns()
        self._user_done_ns[req.user] = done
        self.completed += 1
        self.recorder.request_done(req, intended, done, storage_ns, queue_ns)

    def _intended_ns(self, req: Request) -> int:
        if req.think_s is not None and req.user in self._user_done_ns:
            return self._user_done_ns[req.user] + int(req.think_s * 1e9)
        return self.recorder.start_ns + int(req.arrival_s * 1e9)

    # -- carrying out plans --------------------------------------------------------------
    def _move_op(self, mv: Move) -> Op:
        entry = self.cache.index[mv.key]
        return Op(MOVE, mv.key, mv.src_level, mv.src_slot, mv.dst_level, mv.dst_slot,
                  crc=entry.checksum)

    def _write_ops(self, plan: Plan) -> list[Op]:
        ops = []
        for p in plan.placements:
            if p.level in self._readers:
                self._leave_to_writer(p.key, p.level)
                continue
            self._seq += 1
            ops.append(Op(WRITE, p.key, dst=p.level, dst_slot=p.slot, seq=self._seq))
        return ops

    def _leave_to_writer(self, key: int, level: int) -> None:
        """Another rank of the group writes this object of a shared tier (one_writer). Its
        bytes are the writer's, so this rank cannot verify them (checksum -1)."""
        self.cache.index[key].checksum = -1
        self.recorder.left_to_writer(level)

    def _demote(self, plan: Plan) -> int:
        """Runs the plan's demotion stages (deepest tier first); drops need no I/O."""
        self.peak_used = [max(a, b) for a, b in zip(self.peak_used, self.cache.used_bytes(),
                                                      strict=True)]
        total = 0
        for stage in plan.stages:
            ops = []
            for mv in stage:
                if mv.dst_level is None:
                    self.recorder.dropped(mv.src_level)
                elif mv.dst_level in self._readers:
                    self._leave_to_writer(mv.key, mv.dst_level)
                else:
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
        self.recorder.stage(ops, results, phase)
        index = self.cache.index
        for op, d in zip(ops, results, strict=True):   # what verify mode checks a read against
            if op.kind == WRITE and (entry := index.get(op.key)) is not None:
                entry.checksum = d.crc
        return wall

    def close(self) -> None:   # idempotent
        self.pool.close()
        self.payload.close()
