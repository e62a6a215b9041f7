"""The per-rank engine: serves requests against this rank's tiers, many at once.

Like a GPU running vLLM or SGLang (continuous batching), a TP group keeps up to
``max_batch`` requests in flight, admitting the next as one finishes; their chunk I/O
shares the rank's ``io_depth`` threads. What makes the figures trustworthy:

* Planning (lookups, placement, eviction) happens when a request is admitted, for the
  whole request, in admission order. With ``fifo`` scheduling requests are admitted in
  trace order, so the same seed, config and world size give the same operations on
  every run, whatever the device's timing. (``priority`` admits the most urgent request
  that has arrived, so its order, like a real server's, depends on timing; in trace mode
  that timing is the virtual clock's, so it too is the same on every run.)
* Operations run in plan order per slot: an operation that writes a slot waits until
  every earlier-planned operation on that slot is done, and one that reads it waits for
  the earlier-planned write. So no demotion, eviction or slot reuse planned for a later
  request can overwrite data an earlier one still has to read, and a read never sees a
  slot before the write it was planned after (verify mode stays at zero mismatches).
* A request's latency is measured from its intended arrival, so a device that cannot
  keep up shows queueing instead of hiding it (no coordinated omission).

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
import heapq
import itertools
import queue
import resource
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from mpi_kvbench.engine.cache import Hierarchy, Move, Plan, watermark_levels
from mpi_kvbench.engine.iopool import DROP, MOVE, READ, WRITE, Done, IOPool, Op
from mpi_kvbench.engine.payload import PayloadSource
from mpi_kvbench.engine.record import Recorder
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.eviction.base import EvictionPolicy
from mpi_kvbench.iotrace import IoTraceLog, Row
from mpi_kvbench.layout import Chain, Geometry, extend_chain
from mpi_kvbench.metrics import Metrics
from mpi_kvbench.results import names
from mpi_kvbench.tiers.base import Tier
from mpi_kvbench.workloads.base import Request
from mpi_kvbench.workloads.qos import QOS_CLASSES

MAX_ARRIVED = 4096           # due requests held for admission (what priority chooses among)
SETTLE_SPANS = 4096          # I/O intervals kept before their busy time is added up
CHAINS = 4096                # conversation contexts whose chunk chain is kept for the next turn


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
    payload_spare_bytes: int         # fresh: the most made ahead beyond the I/O threads' own
    verify: bool
    max_batch: int                   # requests in flight per rank
    scheduling: str                  # "fifo" or "priority"
    watchdog_s: float                # an operation in flight this long ends the phase; 0: never


class Stalled(RuntimeError):
    """An operation has been in flight longer than the watchdog allows: the device (or a
    file system behind it) stopped answering."""


class StopReason(enum.Enum):
    """Why a replay ended."""

    SHARE = "share"          # the trace or max_requests is done
    DEADLINE = "deadline"    # the phase's time is up
    STOPPED = "stopped"      # stop() said so (another rank failed, or the stonewall fell)


#: Called when a prefill-only request is done: the request, the (key, slot, checksum)
#: of its chunks on the write level, its intended arrival and its prefill I/O time (ns).
OnPrefilled = Callable[[Request, list[tuple[int, int, int]], int, int], None]

_Slot = tuple[int, int]          # (tier index in the pool, slot)


def cpu_s() -> float:
    """CPU seconds of the whole process so far (every thread)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Stage:
    """One step of a request: a set of concurrent operations, a simulated compute
    time, or a mark (the end of prefill)."""

    kind: str                        # "io", "sleep" or "prefilled"
    phase: str = ""                  # io: the phase its figures are recorded under
    ops: list[Op] = field(default_factory=list)
    in_prefill: bool = False         # io: counts toward the request's prefill I/O time
    sleep_ns: int = 0


@dataclass
class Flight:
    """A request in flight and how far it got (``req`` None: work outside any request)."""

    req: Request | None
    intended: int
    start: int
    stages: deque[Stage]
    keys: list[int]                  # the prompt's object keys
    stage: Stage | None = None
    stage_start: int = 0
    done: list[Op] = field(default_factory=list)      # the stage's ops done, in completion order
    results: list[Done] = field(default_factory=list)  # ... and what each did
    outstanding: int = 0             # the stage's ops submitted and not yet done
    parked: int = 0                  # the stage's ops waiting for earlier-planned ones
    prefill_io_ns: int = 0
    abandoned: bool = False
    retired: bool = False


class Engine:
    """One rank's cache hierarchy, I/O pool and request loop; testable without MPI.

    ``write_level``: where new chunks land (a prefill-only group writes to storage).
    ``sources``: read-only tiers of other ranks (decode side of disaggregated serving),
    read after this rank's own. ``on_prefilled``: makes this a prefill-only server that
    hands every request on after its prefill. ``trace``: the I/O trace log the recorder
    writes a row per operation to (while the log records).
    """

    def __init__(self, s: EngineSettings, tiers: Sequence[Tier],
                 policy: Callable[[], EvictionPolicy], *, write_level: int = 0,
                 sources: Sequence[Tier] = (), on_prefilled: OnPrefilled | None = None,
                 trace: IoTraceLog | None = None) -> None:
        self.s = s
        self.tiers = list(tiers)
        self.names = [t.level for t in self.tiers]
        obj = s.geometry.object_bytes
        levels = watermark_levels(self.names, [t.slots for t in self.tiers], s.high_watermark,
                                  s.low_watermark, [policy() for _ in self.tiers])
        self.cache = Hierarchy(levels, obj)
        # trace mode: no tier does I/O, so a stage is done the moment it starts, and the
        # engine runs on a virtual clock: nothing to wait for, so it jumps to the next
        # arrival or timer, and every time (the log's, latencies, series) is trace time
        self._inline = all(t.instant for t in [*self.tiers, *sources])
        # ... and no write takes a payload: the smallest ring, filled once, no generator
        self.payload = (PayloadSource(obj, 1, "reuse", ring_bytes=0) if self._inline
                        else PayloadSource(obj, s.io_depth, s.payload,
                                              spare_bytes=s.payload_spare_bytes))
        self.pool = IOPool([*self.tiers, *sources], obj, s.io_depth, self.payload, s.verify)
        self._vnow = time.perf_counter_ns()
        self._now: Callable[[], int] = (lambda: self._vnow) if self._inline else time.perf_counter_ns
        self.recorder = Recorder([*self.names, *(t.level for t in sources)],
                                 s.geometry.chunk_tokens, s.geometry.objects_per_chunk, s.verify,
                                 self._now(), trace=trace, clock=self._now)
        self.write_level = write_level
        self.on_prefilled = on_prefilled
        self._readers = {i for i, t in enumerate(self.tiers) if t.share == "reader"}
        self._user_done_ns: dict[int, int] = {}
        self._seq = 0
        self._stop: Callable[[], object] = lambda: None
        self.stalled = False                     # the watchdog fired: a thread is stuck
        self._phase0 = (cpu_s(), 0.0, 0, 0, 0)
        self.completed = 0
        self.peak_used = [0] * len(self.tiers)
        # requests in flight and the operations they planned
        self._flights: list[Flight] = []
        self._users: set[int] = set()                        # users with a request in flight
        self._queued: dict[int, int] = {}                    # user -> its requests in ``arrived``
        self._events: queue.SimpleQueue = queue.SimpleQueue()  # (op, Done | exception)
        self._report = lambda op, result: self._events.put((op, result))   # one, not one per op
        self._owner: dict[Op, Flight] = {}                   # submitted op -> its flight
        self._access: dict[_Slot, list[tuple[Op, bool]]] = {}  # slot -> planned (op, writes) in order
        self._parked: dict[_Slot, list[Op]] = {}             # slot -> ops waiting on it
        self._waiting: dict[Op, Flight] = {}                 # parked op -> its flight
        self._crc: dict[_Slot, int] = {}                     # checksum of what a slot holds
        self._timers: list[tuple[int, int, Flight]] = []     # (wake ns, tie, flight)
        self._tick = 0
        self._max_inflight = 0                   # most requests in flight this phase
        self._inflight_since = self._now()
        self._trace_start: int | None = None     # where trace time 0 is (the first phase)
        self._log: list[tuple[int, Op, str]] = []   # replay: (recorded start ns, op, phase)
        self._arrived: list[Request] = []        # due but not admitted when a phase ended
        self._head: Request | None = None        # taken from the trace, not yet due
        self._chains: dict[tuple, Chain] = {}    # a request's context after it -> its chain

    @property
    def metrics(self) -> Metrics:
        """This phase's figures so far."""
        return self.recorder.metrics

    # -- phases -----------------------------------------------------------------------
    def start_phase(self, start_ns: int) -> None:
        """Starts a fresh measurement (after set-up or warm-up) at the agreed ``start_ns``.
        The trace goes on where the warm-up left it: its clock keeps the first phase's
        start, users keep their last completion, and requests taken but not served come
        first, so the measured phase neither idles nor skips a turn. On the virtual clock
        (trace mode) the trace's times move with it to ``start_ns``: no gap between phases."""
        if self._inline:
            shift, self._vnow = start_ns - self._vnow, start_ns
            if self._trace_start is not None:
                self._trace_start += shift
            self._user_done_ns = {u: t + shift for u, t in self._user_done_ns.items()}
            self._timers = [(t + shift, n, f) for t, n, f in self._timers]
        self.recorder.start_phase(start_ns)
        if self._trace_start is None:
            self._trace_start = start_ns
        self.completed = 0
        self._max_inflight = len(self._flights)
        self._inflight_since = start_ns
        p = self.payload
        self._phase0 = (cpu_s(), p.generator_cpu_s, p.generated_bytes, p.stalls, p.stall_ns)

    def end_phase(self) -> None:
        """Records what the phase cost: process and payload CPU, payload stalls, the peak
        bytes each tier held, and how busy the batch was."""
        cpu0, gen0, bytes0, stalls0, stall_ns0 = self._phase0
        p, r = self.payload, self.recorder
        r.count("cpu.process_us", int((cpu_s() - cpu0) * 1e6))
        r.count("cpu.generation_us", int((p.generator_cpu_s - gen0) * 1e6))
        r.count("payload.generated_bytes", p.generated_bytes - bytes0)
        r.count("payload.stalls", p.stalls - stalls0)
        r.count("payload.stall_ns", p.stall_ns - stall_ns0)
        r.count("payload.ring_bytes", p.ring_bytes)    # grown on stalls: part of peak_rss_bytes
        for name, peak in zip(self.names, self.peak_used, strict=True):
            r.count(names.tier_counter(name, "peak_used_bytes"), peak)
        self._occupancy(self._now())
        r.count("batch.max_inflight", self._max_inflight)
        if self._inline:   # the in-flight integral is in trace time: so is its window
            r.count("batch.clock_ns", self._vnow - r.start_ns)
        r.settle_busy()

    def replay(self, requests: Iterator[Request], deadline_ns: int | None = None,
               max_requests: int = 0, stop: Callable[[], object] = lambda: None,
               progress: Callable[[Engine], None] | None = None) -> StopReason:
        """Serves requests, up to ``max_batch`` at once, until a limit; says which. The
        requests in flight when it is reached finish (on a stop they are abandoned).

        Requests are taken from the trace in order; one is due at its intended arrival,
        and a closed-loop user's next turn only once its previous turn is done. Due
        requests wait in ``arrived`` until a batch slot is free."""
        self._stop = stop
        source = iter(requests)
        arrived = self._arrived            # due, not yet admitted, in trace order
        head, self._head = self._head, None   # the next request of the trace, not yet due
        admitted, why, exhausted = 0, None, False
        while True:
            now = self._now()
            if why is None and stop():
                why = StopReason.STOPPED
                self._abandon()
            if why is None and deadline_ns is not None and now >= deadline_ns:
                why = StopReason.DEADLINE
            wake, fresh = None, False
            while why is None and len(arrived) < MAX_ARRIVED:
                if head is None and not exhausted:
                    head = next(source, None)
                    exhausted = head is None
                if head is None or (head.think_s is not None and (head.user in self._users
                                                                   or head.user in self._queued)):
                    break                            # a closed-loop turn waits for the last one
                wake = self._intended_ns(head)
                if wake > now or (deadline_ns is not None and wake >= deadline_ns):
                    break
                arrived.append(head)
                self._queued[head.user] = self._queued.get(head.user, 0) + 1
                head, wake = None, None
            while why is None and arrived and len(self._flights) < self.s.max_batch \
                    and not (max_requests and admitted >= max_requests):
                req = arrived.pop(self._pick(arrived))
                if self._queued[req.user] == 1:
                    del self._queued[req.user]
                else:
                    self._queued[req.user] -= 1
                self._admit(req)
                admitted += 1
                fresh = True
            if why is None and not arrived and not self._flights:
                if (max_requests and admitted >= max_requests) or (exhausted and head is None):
                    why = StopReason.SHARE
                elif deadline_ns is not None and wake is not None and wake >= deadline_ns:
                    why = StopReason.DEADLINE
            elif why is None and max_requests and admitted >= max_requests:
                why = StopReason.SHARE
            if why is not None and not self._flights:
                if why is StopReason.DEADLINE:
                    self._wait_until(deadline_ns)   # the window is the whole duration
                self._head = head                   # the next phase starts with them
                return why
            if wake is not None and deadline_ns is not None:
                wake = min(wake, deadline_ns)
            if fresh and self._inline:
                continue     # virtual clock: what they freed (a user's next turn) is due now
            if self._step(wake) and progress is not None:
                progress(self)

    # -- replay of a recorded I/O trace log -------------------------------------------------
    def load_log(self, rows: Sequence[Row]) -> None:
        """Takes a recorded log's operations (in start order) for ``replay_log``; a tier
        that is off, too small for a slot, or of another object size is a ConfigError."""
        index = {level: i for i, level in enumerate(self.names)}
        obj = self.s.geometry.object_bytes
        ops = []
        for r in rows:
            i = index.get(r.level)
            if i is None:
                raise ConfigError(f"tiers.{r.level}: the log has {r.level} operations but the tier is"
                                  " off; give it a capacity")
            if r.slot >= self.tiers[i].slots:
                raise ConfigError(f"tiers.{r.level}.capacity_gb: the log uses slot {r.slot}, the tier"
                                  f" holds {self.tiers[i].slots}; give it at least"
                                  f" {(r.slot + 1) * obj / 1e9:.6f} GB")
            if r.size != obj:
                raise ConfigError(f"replay: the log's objects are {r.size} bytes, this configuration's"
                                  f" {obj}; replay with the recorded model and kv settings")
            if r.write:
                self._seq += 1
                op = Op(WRITE, r.key, dst=i, dst_slot=r.slot, seq=self._seq)
            else:
                op = Op(READ, r.key, src=i, src_slot=r.slot)
            ops.append((r.t_ns, op, r.stage))
        self._log = ops

    def prime(self) -> int:
        """Writes, unmeasured, every slot the log reads before it writes it (the recorded run
        wrote them before its measured phase), so every replayed read moves its bytes."""
        written: set[_Slot] = set()
        ops = []
        for _, op, _ in self._log:
            if op.kind == WRITE:
                written.add((op.dst, op.dst_slot))
            elif (op.src, op.src_slot) not in written:
                written.add((op.src, op.src_slot))
                ops.append(Op(WRITE, op.key, dst=op.src, dst_slot=op.src_slot))
        self._run_now(Stage("io", "precondition", ops))
        return len(ops)

    def replay_log(self, recorded: bool, stop: Callable[[], object] = lambda: None,
                   progress: Callable[[Engine], None] | None = None) -> StopReason:
        """Issues the loaded log's operations in their recorded order, at most ``io_depth``
        at a time (a few more queued), as fast as they go or, with ``recorded``, each at its
        recorded time after the first. Operations on one slot keep their order."""
        self._stop = stop
        log, start = self._log, self.recorder.start_ns
        t0 = log[0][0] if log else 0
        window = 4 * self.s.io_depth
        pending: list[Flight] = []
        nxt, why = 0, StopReason.SHARE
        while nxt < len(log) or pending:
            if nxt < len(log) and stop():
                why, nxt = StopReason.STOPPED, len(log)
            wake = None
            while nxt < len(log) and len(pending) < window:
                t, op, phase = log[nxt]
                if recorded and start + t - t0 > self._now():
                    wake = start + t - t0
                    break
                flight = Flight(None, 0, 0, deque([Stage("io", phase, [op])]), [])
                for slot, writes in self._slots_of(op) if not self._inline else ():
                    self._access.setdefault(slot, []).append((op, writes))
                self._advance(flight)
                if flight.stage is not None:
                    pending.append(flight)
                nxt += 1
                self.completed += 1
            if pending or wake is not None:
                self._step(wake)
                pending = [f for f in pending if f.stage is not None]
                if progress is not None:
                    progress(self)
        return why

    def _pick(self, arrived: list[Request]) -> int:
        """Which arrived request to admit: the first, or with ``priority`` the first of the
        most urgent QoS class."""
        if self.s.scheduling == "fifo":
            return 0
        return min(range(len(arrived)), key=lambda i: (QOS_CLASSES.index(arrived[i].qos), i))

    def serve(self, req: Request, deadline_ns: int | None = None) -> bool:
        """Serves one request to its end; False when its intended arrival falls after the
        deadline or a stop came while it waited for it."""
        intended = self._intended_ns(req)
        if deadline_ns is not None and intended >= deadline_ns:
            self._wait_until(deadline_ns)
            return False
        if not self._wait_until(intended):
            return False
        self._admit(req)
        self._drain()
        return True

    def precondition(self, share: float, batch: int = 64,
                     stop: Callable[[], object] = lambda: None,
                     progress: Callable[[int, int], None] | None = None) -> int:
        """Fills the storage tier to ``share`` of its slots with objects no request will
        ever ask for (keys outside the 64-bit chain space), so an SSD is measured in
        steady state and the cache starts full. Not measured; returns objects written.
        A ``stop`` ends it after the batch in flight."""
        if "storage" not in self.names:
            return 0
        level = self.names.index("storage")
        target = int(share * self.cache.levels[level].slots)
        written = 0
        while self.cache.levels[level].used < target and not stop():
            n = min(batch, target - self.cache.levels[level].used)
            keys = [(1 << 64) + self._seq + i for i in range(n)]
            plan = self.cache.place(keys, pinned=set(), level=level)
            self._run_now(Stage("io", "precondition", self._write_ops(plan)))
            written += len(plan.placements)
            if progress is not None:
                progress(self.cache.levels[level].used, target)
            if not plan.placements:
                break
        return written

    def serve_handoff(self, req: Request, source: int, chunks: list[tuple[int, int, int]],
                      intended: int, prefill_io_ns: int, written_ns: int) -> None:
        """Decode side of disaggregated serving: reads the ``chunks`` (key, slot, checksum)
        a prefill rank wrote from ``sources[source]`` (its file), loads them into this
        rank's own tiers, decodes, and writes the new chunks. ``written_ns`` (this
        node's perf_counter clock) is when the prefill's writes were done. Never on the
        virtual clock: a null tier cannot be another rank's source, so set-up refuses
        trace mode with prefill groups."""
        src = len(self.tiers) + source
        waited = self._now() - written_ns
        self.cache.now = req.arrival_s
        keys = [k for k, _, _ in chunks]
        self._run_now(Stage("io", "handoff", [Op(READ, k, src, slot, crc=c) for k, slot, c in chunks]))
        self.recorder.handoff_read(written_ns, len(chunks))
        plan = self.cache.place([k for k in keys if k not in self.cache], pinned=set(keys))
        stages = [*self._demotions(plan), Stage("io", "handoff", self._write_ops(plan)),
                  *self._plan_decode(req, keys, self._chain(req.segments)), Stage("end")]
        flight = Flight(req, intended, self._now() - waited, deque(stages), keys,
                        prefill_io_ns=prefill_io_ns)
        self._launch(flight)
        self._drain()

    # -- planning (admission order) -------------------------------------------------------
    def _admit(self, req: Request) -> None:
        """Plans the whole request now, in admission order, and starts it."""
        start = self._now()
        intended = self._intended_ns(req)
        self.cache.now = req.arrival_s
        keys, stages, chain = self._plan_prefill(req)
        if self.on_prefilled is None:
            stages += [*self._plan_decode(req, keys, chain), Stage("end")]
        self._launch(Flight(req, intended, start, deque(stages), keys))

    def _chain(self, segments: tuple[tuple[int, int], ...]) -> Chain:
        """The chunk chain of a prompt: its conversation's last context (kept by
        ``_plan_decode``) extended by the new segment, else hashed from the start."""
        ct = self.s.geometry.chunk_tokens
        before = self._chains.pop(segments[:-1], None)
        if before is None:
            return extend_chain(Chain(), segments, ct)
        return extend_chain(before, segments[-1:], ct)

    def _plan_prefill(self, req: Request) -> tuple[list[int], list[Stage], Chain]:
        s, geo = self.s, self.s.geometry
        chain = self._chain(req.segments)
        chunks = chain.keys
        keys = geo.object_keys(chunks)
        hits = self.cache.lookup(keys)
        self.recorder.lookups(len(chunks), [e.level for _, e in hits])
        promote = [k for k, e in hits if e.level > 0] if s.promotion == "hbm" else []
        promoted = set(promote)
        reads = [Op(READ, k, e.level, e.slot) for k, e in hits if k not in promoted]
        index = self.cache.index
        new = [k for k in keys[len(hits):] if k not in index]
        plan = self.cache.place(new, pinned={k for k, _ in hits}, promote=promote,
                                level=self.write_level)
        stages = self._demotions(plan, in_prefill=True)
        stages.append(Stage("io", "prefill", reads + [self._move_op(mv) for mv in plan.promotions],
                            in_prefill=True))
        hit_tokens = len(hits) // geo.objects_per_chunk * geo.chunk_tokens
        if s.prefill_tokens_per_s > 0:
            stages.append(Stage("sleep", sleep_ns=int(
                (req.prompt_tokens - hit_tokens) / s.prefill_tokens_per_s * 1e9)))
        stages += [Stage("io", "prefill", self._write_ops(plan), in_prefill=True), Stage("prefilled")]
        return keys, stages, chain

    def _plan_decode(self, req: Request, keys: list[int], chain: Chain) -> list[Stage]:
        """``chain``: the prompt's chunk chain, which the output extends."""
        s, geo = self.s, self.s.geometry
        stages = []
        if s.decode_mode == "reference":
            for _ in range(req.output_tokens // s.decode_batch):
                held = self.cache.lookup(keys)
                stages.append(Stage("io", "decode", [Op(READ, k, e.level, e.slot) for k, e in held]))
        if s.time_per_output_token_ms > 0:
            stages.append(Stage("sleep", sleep_ns=int(req.output_tokens * s.time_per_output_token_ms
                                                      * 1e6)))
        chain = extend_chain(chain, ((req.output_id, req.output_tokens),), geo.chunk_tokens)
        self._chains[req.context_after()] = chain    # the next turn's prompt starts with it
        if len(self._chains) > CHAINS:
            del self._chains[next(iter(self._chains))]   # the oldest kept
        after, index = geo.object_keys(chain.keys), self.cache.index
        cached = {k for k in after if k in index}
        plan = self.cache.place([k for k in after if k not in cached], pinned=cached)
        return [*stages, *self._demotions(plan), Stage("io", "decode", self._write_ops(plan))]

    def _demotions(self, plan: Plan, in_prefill: bool = False) -> list[Stage]:
        """The plan's demotion stages (deepest tier first); a drop is I/O only on a tier
        that ``deletes`` (object storage), else the slot is simply reused."""
        self.peak_used = [max(a, b) for a, b in zip(self.peak_used, self.cache.used_bytes(),
                                                      strict=True)]
        stages = []
        for moves in plan.stages:
            ops = []
            for mv in moves:
                if mv.dst_level is None:
                    self.recorder.dropped(mv.src_level)
                    if self.tiers[mv.src_level].deletes:
                        ops.append(Op(DROP, mv.key, src=mv.src_level, src_slot=mv.src_slot))
                elif mv.dst_level in self._readers:
                    self.recorder.left_to_writer(mv.dst_level)
                else:
                    ops.append(self._move_op(mv))
            stages.append(Stage("io", "demote", ops, in_prefill=in_prefill))
        return stages

    def _move_op(self, mv: Move) -> Op:
        return Op(MOVE, mv.key, mv.src_level, mv.src_slot, mv.dst_level, mv.dst_slot)

    def _write_ops(self, plan: Plan) -> list[Op]:
        ops = []
        for p in plan.placements:
            if p.level in self._readers:      # another rank of the group writes it (one_writer)
                self.recorder.left_to_writer(p.level)
                continue
            self._seq += 1
            ops.append(Op(WRITE, p.key, dst=p.level, dst_slot=p.slot, seq=self._seq))
        return ops

    def _intended_ns(self, req: Request) -> int:
        if req.think_s is not None and req.user in self._user_done_ns:
            return self._user_done_ns[req.user] + int(req.think_s * 1e9)
        start = self.recorder.start_ns if self._trace_start is None else self._trace_start
        return start + int(req.arrival_s * 1e9)

    # -- carrying out plans ----------------------------------------------------------------
    def _launch(self, flight: Flight) -> None:
        """Registers every planned slot access of the flight, in plan order, and starts it."""
        for stage in flight.stages if not self._inline else ():
            for op in stage.ops:
                for slot, writes in self._slots_of(op):
                    self._access.setdefault(slot, []).append((op, writes))
        self._occupancy(self._now())
        self._flights.append(flight)
        self._max_inflight = max(self._max_inflight, len(self._flights))
        self._users.add(flight.req.user)
        self._advance(flight)

    @staticmethod
    def _slots_of(op: Op) -> list[tuple[_Slot, bool]]:
        out = []
        if op.kind == DROP:   # it destroys the slot's object: ordered like a write
            out.append(((op.src, op.src_slot), True))
        if op.kind in (READ, MOVE):
            out.append(((op.src, op.src_slot), False))
        if op.kind in (WRITE, MOVE):
            out.append(((op.dst, op.dst_slot), True))
        return out

    def _runnable(self, op: Op) -> bool:
        """Every earlier-planned access that conflicts with ``op`` on its slots is done."""
        for slot, writes in self._slots_of(op):
            for other, other_writes in self._access[slot]:
                if other is op:
                    break
                if writes or other_writes:
                    return False
        return True

    def _advance(self, flight: Flight) -> None:
        """Starts the flight's next stages until one has to wait (I/O or a timer)."""
        while not flight.abandoned and flight.stages:
            stage = flight.stages.popleft()
            now = self._now()
            if stage.kind == "sleep":
                self._tick += 1
                heapq.heappush(self._timers, (now + stage.sleep_ns, self._tick, flight))
                flight.stage = stage
                return
            if stage.kind == "prefilled":
                self.recorder.prefill_done(flight.intended, flight.start, now)
                if self.on_prefilled is not None:
                    held = self._held_at(flight.keys, self.write_level)
                    self.on_prefilled(flight.req, held, flight.intended, flight.prefill_io_ns)
                    self.recorder.handed_off(len(held))
                    self._finish(flight, now, record=False)
                    return
                continue
            if stage.kind == "end":
                self._finish(flight, now, record=True)
                return
            if not stage.ops:
                continue
            if self._inline:
                self._run_inline(flight, stage)
                continue
            flight.stage, flight.stage_start, flight.done, flight.results = stage, now, [], []
            for op in stage.ops:
                if self._runnable(op):
                    self._submit(op, flight)
                else:
                    self._waiting[op] = flight
                    flight.parked += 1
                    for slot, _ in self._slots_of(op):
                        self._parked.setdefault(slot, []).append(op)
            return
        if flight.abandoned and flight.stage is None and not flight.retired:
            self._retire(flight)

    def _run_inline(self, flight: Flight, stage: Stage) -> None:
        """Trace mode: records the stage's operations as done now, in plan order, with no
        I/O (so nothing can overtake anything and no slot needs tracking)."""
        self.recorder.stage_instant(stage.ops, self._vnow, self.s.geometry.object_bytes,
                                    stage.phase, flight.req)

    def _submit(self, op: Op, flight: Flight) -> None:
        if 0 <= op.src < len(self.tiers):   # what verify checks the read against
            op.crc = -1 if op.src in self._readers else self._crc.get((op.src, op.src_slot), 0)
        self._owner[op] = flight
        flight.outstanding += 1
        self.pool.submit(op, self._report)

    def _step(self, wake_ns: int | None) -> bool:
        """Waits for the next completion, timer or ``wake_ns`` (at most 0.2 s, so a stop is
        seen) and handles everything that is ready; True when a request finished. On the
        virtual clock nothing is in flight: it jumps to the next timer or ``wake_ns``."""
        before = self.completed
        if self._inline and (self._timers or wake_ns is not None):   # virtual clock: jump
            due = [t for t in (wake_ns, self._timers[0][0] if self._timers else None) if t is not None]
            self._vnow = max(self._vnow, min(due))
            self._fire_timers(self._vnow)
            return self.completed > before
        now = time.perf_counter_ns()
        until = now + 200_000_000
        if self._timers:
            until = min(until, self._timers[0][0])
        if wake_ns is not None:
            until = min(until, wake_ns)
        try:
            events = [self._events.get(timeout=max(0.0, (until - now) / 1e9))]
        except queue.Empty:
            events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        for op, result in events:
            self._completed(op, result)
        now = self._now()
        self._watch(now)
        self._fire_timers(now)
        return self.completed > before

    def _fire_timers(self, now: int) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, flight = heapq.heappop(self._timers)
            if not flight.retired:
                flight.stage = None
                self._advance(flight)

    def _completed(self, op: Op, result: Done | BaseException) -> None:
        if isinstance(result, BaseException):
            raise result
        flight = self._owner.pop(op)
        slots = self._slots_of(op)
        for slot, writes in slots:
            accesses = self._access[slot]
            accesses.remove((op, writes))
            if not accesses:
                del self._access[slot]
            if writes:
                self._crc[slot] = result.crc
        for slot, _ in slots:
            for other in list(self._parked.get(slot, ())):
                if other in self._waiting and self._runnable(other):
                    self._unpark(other)
                    waiting = self._waiting.pop(other)
                    waiting.parked -= 1
                    self._submit(other, waiting)
        flight.outstanding -= 1
        flight.done.append(op)
        flight.results.append(result)
        if flight.outstanding == 0 and flight.parked == 0:
            stage = flight.stage
            if stage.in_prefill:
                flight.prefill_io_ns += max(d.end for d in flight.results) - flight.stage_start
            self.recorder.stage(flight.done, flight.results, stage.phase, flight.req)
            flight.stage = None
            self._advance(flight)
            if self.recorder.unsettled() > SETTLE_SPANS:   # what is yet to come starts after
                # the earliest stage with an operation running or parked, of any flight (a log
                # replay's and a set-up stage's too, which are not requests in ``_flights``)
                busy = itertools.chain(self._owner.values(), self._waiting.values())
                self.recorder.settle_busy(min((f.stage_start for f in busy), default=self._now()))

    def _unpark(self, op: Op) -> None:
        for slot, _ in self._slots_of(op):
            parked = self._parked[slot]
            parked.remove(op)
            if not parked:
                del self._parked[slot]

    def _finish(self, flight: Flight, now: int, record: bool) -> None:
        req = flight.req
        self._user_done_ns[req.user] = now
        self.completed += 1
        if record:
            self.recorder.request_done(req, flight.intended, now, flight.prefill_io_ns,
                                       flight.start - flight.intended)
        self._retire(flight)

    def _retire(self, flight: Flight) -> None:
        self._occupancy(self._now())
        flight.retired = True
        self._flights.remove(flight)
        self._users.discard(flight.req.user)

    def _abandon(self) -> None:
        """A stop: no flight starts another stage, and the operations they have not
        submitted are forgotten (so nothing waits on them); those already running finish.
        The cache still lists what the forgotten writes and moves would have put in place,
        so the engine must serve nothing after a stop (a run's stop is final: it ends the
        phase, and ``stop_requested`` stays set, so a later phase stops at once)."""
        for flight in list(self._flights):
            flight.abandoned = True
            unstarted = [op for st in flight.stages for op in st.ops]
            unstarted += [op for op, f in self._waiting.items() if f is flight]
            for op in unstarted:
                if self._waiting.pop(op, None) is not None:
                    self._unpark(op)
                for slot, writes in self._slots_of(op):
                    accesses = self._access.get(slot, [])
                    if (op, writes) in accesses:
                        accesses.remove((op, writes))
                    if not accesses:
                        self._access.pop(slot, None)
            flight.stages.clear()
            flight.parked = 0
            if flight.outstanding == 0:
                flight.stage = None
                self._retire(flight)

    def _drain(self) -> None:
        """Handles events until no request is in flight."""
        while self._flights:
            self._step(None)

    def _run_now(self, stage: Stage) -> None:
        """Runs one stage of operations outside any request (preconditioning, handoff reads),
        after everything planned before it."""
        if not stage.ops:
            return
        flight = Flight(None, 0, 0, deque([stage]), [])
        for op in stage.ops if not self._inline else ():
            for slot, writes in self._slots_of(op):
                self._access.setdefault(slot, []).append((op, writes))
        self._advance(flight)
        while flight.stage is not None:
            self._step(None)

    def _held_at(self, keys: list[int], level: int) -> list[tuple[int, int, int]]:
        index = self.cache.index
        return [(k, e.slot, self._crc.get((level, e.slot), 0)) for k in keys
                if (e := index.get(k)) is not None and e.level == level]

    def _occupancy(self, now: int) -> None:
        """Adds the requests in flight since the last change times its length (called just
        before the number changes)."""
        if now > self._inflight_since:
            self.recorder.count("batch.inflight_ns", len(self._flights) * (now - self._inflight_since))
            self._inflight_since = now

    def _watch(self, now: int) -> None:
        """The watchdog: raises ``Stalled`` when an operation has been running longer than
        ``watchdog_s``, naming its tier and slot (the phase then ends on every rank)."""
        limit = self.s.watchdog_s
        oldest = self.pool.oldest() if limit else None
        if oldest is None or now - oldest[1] <= limit * 1e9:
            return
        op, since = oldest
        self.stalled = True
        what = {READ: "read", WRITE: "write", MOVE: "move", DROP: "delete"}[op.kind]
        where = self.pool.tiers[op.dst if op.kind == WRITE else op.src].level
        slot = op.dst_slot if op.kind == WRITE else op.src_slot
        raise Stalled(f"watchdog: a {where} {what} (slot {slot}) has been in flight for"
                      f" {(now - since) / 1e9:.0f} s, over run.watchdog_s={limit:g}; check the"
                      " device, or raise run.watchdog_s")

    def _wait_until(self, t_ns: int) -> bool:
        """Sleeps until ``t_ns`` in short slices, so a stop request is seen; False if stopped.
        On the virtual clock it moves the clock there."""
        if self._inline:
            self._vnow = max(self._vnow, t_ns)
            return True
        while (now := time.perf_counter_ns()) < t_ns:
            if self._stop():
                return False
            time.sleep(min(0.2, (t_ns - now) / 1e9))
        return True

    def close(self) -> None:   # idempotent
        self.pool.close(wait=not self.stalled)
        self.payload.close()
