"""Disaggregated serving: the first ``prefill_groups`` TP groups prefill, the rest decode.

A prefill group serves a request's prefill and writes its new chunks straight to its
storage tier, then posts a handoff (which slots of which file hold the prompt's chunks)
to rank ``tp_rank`` of a decode group, chosen by user so a conversation always lands on
the same one. The decode rank reads those chunks back through the storage tier, from
the prefill rank's own file, as a real P/D deployment does through shared storage; the
``handoff`` histogram is the time from the prefill's last write to the decode's last
read. Prefill groups are the lowest-numbered groups, so on several nodes the decode
groups sit on other nodes whenever the prefill groups fill whole nodes, and a decode
read cannot come from the writer's page cache. Across nodes the storage path must be a
shared file system, and times cross between nodes by the wall clock (NTP), within a
node by the monotonic clock of both processes.

The prefill side does not wait for the decode side: if its storage tier is so small
that a slot is reused before the decode rank reads it, the read returns the newer
object, which ``io.verify`` counts as a mismatch. Size the tier for the decode lag.

Everything is wired at set-up: every rank publishes where its storage objects are, a
decode rank opens its prefill ranks' files read-only and builds its engine with them as
extra read sources, and a prefill rank builds its engine with a ``Handoff`` hook.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from mpi_kvbench.context import RankContext
from mpi_kvbench.engine.serve import Engine, StopReason
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.mpi.comm import TAG_HANDOFF, Comm
from mpi_kvbench.tiers.base import Tier
from mpi_kvbench.workloads.base import Request

END = "end"


def check(prefill_groups: int, ctx: RankContext, levels: list[str]) -> None:
    if prefill_groups and prefill_groups >= ctx.replicas:
        raise ConfigError(f"engine.prefill_groups={prefill_groups}: {ctx.replicas} TP groups leave no"
                          f" decode group; use at most {ctx.replicas - 1}")
    if prefill_groups and "storage" not in levels:
        raise ConfigError("engine.prefill_groups: the handoff goes through storage; give"
                          " tiers.storage a capacity")


def _offset_ns() -> int:
    """Wall clock minus this process's monotonic clock: converts times between ranks."""
    return time.time_ns() - time.perf_counter_ns()


def is_prefill(ctx: RankContext, prefill_groups: int) -> bool:
    return ctx.group < prefill_groups


def open_sources(comm: Comm, ctx: RankContext, prefill_groups: int, tiers: Sequence[Tier]) -> list[Tier]:
    """Every rank says where its storage objects are; a decode rank opens, read-only, the
    storage of each prefill rank that serves its shard (index = prefill group)."""
    storage = next(t for t in tiers if t.level == "storage")
    where = comm.allgather(storage.location())
    if is_prefill(ctx, prefill_groups):
        return []
    sources: list[Tier] = []
    try:
        for g in range(prefill_groups):
            sources.append(storage.open_peer(where[g * ctx.tp_size + ctx.tp_rank]))
    except BaseException:
        for peer in sources:
            peer.close()
        raise
    return sources


class Handoff:
    """A prefill rank's ``on_prefilled`` hook: posts each request's chunks to rank
    ``tp_rank`` of a decode group, chosen by user so a conversation always lands on the
    same one."""

    def __init__(self, comm: Comm, ctx: RankContext, prefill_groups: int) -> None:
        self.comm, self.ctx, self.prefill_groups = comm, ctx, prefill_groups

    def __call__(self, req: Request, chunks: list[tuple[int, int, int]], intended: int,
                 storage_ns: int) -> None:
        ctx, k = self.ctx, self.prefill_groups
        dest = (k + req.user % (ctx.replicas - k)) * ctx.tp_size + ctx.tp_rank
        off = _offset_ns()
        self.comm.post((req, ctx.group, chunks, intended + off, storage_ns,
                        time.perf_counter_ns() + off), dest, TAG_HANDOFF)

    def finish(self) -> None:
        """Tells every decode rank that serves this rank's shard that no more handoffs come."""
        ctx = self.ctx
        for group in range(self.prefill_groups, ctx.replicas):
            self.comm.post(END, group * ctx.tp_size + ctx.tp_rank, TAG_HANDOFF)


def decode_loop(engine: Engine, comm: Comm, prefill_groups: int) -> StopReason:
    """Serves handoffs until every prefill rank of this shard said it is done."""
    ends = 0
    while ends < prefill_groups:
        if comm.stop_requested():
            return StopReason.STOPPED
        msg = comm.poll(TAG_HANDOFF)
        if msg is None:
            time.sleep(0.0005)
            continue
        if msg == END:
            ends += 1
            continue
        req, source, chunks, intended, storage_ns, written = msg
        off = _offset_ns()
        engine.serve_handoff(req, source, chunks, intended - off, storage_ns, written - off)
    return StopReason.SHARE
