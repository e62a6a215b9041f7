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
"""

from __future__ import annotations

import time

from mpi_kvbench.comm import TAG_HANDOFF, SerialComm
from mpi_kvbench.context import RankContext
from mpi_kvbench.engine import Engine
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.tiers.storage import PeerFile, StorageTier
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


def attach_prefill(engine: Engine, comm: SerialComm, ctx: RankContext, prefill_groups: int) -> None:
    """Makes ``engine`` a prefill-only server that hands each request to a decode group."""
    storage = engine.names.index("storage")
    engine.write_level = storage
    path = next(t for t in engine.tiers if isinstance(t, StorageTier)).path
    decode_groups = ctx.replicas - prefill_groups

    def handoff(req: Request, keys: list[int], intended: int, storage_ns: int) -> None:
        held = [(k, engine.cache.index[k]) for k in keys
                if k in engine.cache.index and engine.cache.index[k].level == storage]
        dest = (prefill_groups + req.user % decode_groups) * ctx.tp_size + ctx.tp_rank
        off = _offset_ns()
        comm.post((req, path, [e.slot for _, e in held], [k for k, _ in held],
                   [e.checksum for _, e in held], intended + off, storage_ns,
                   time.perf_counter_ns() + off), dest, TAG_HANDOFF)
        engine.metrics.add("handoff_chunks_sent", len(held))

    engine.handoff = handoff


def finish_prefill(comm: SerialComm, ctx: RankContext, prefill_groups: int) -> None:
    """Tells every decode rank that serves this rank's shard that no more handoffs come."""
    for group in range(prefill_groups, ctx.replicas):
        comm.post(END, group * ctx.tp_size + ctx.tp_rank, TAG_HANDOFF)


def decode_loop(engine: Engine, comm: SerialComm, prefill_groups: int, o_direct: bool) -> str:
    """Serves handoffs until every prefill rank of this shard said it is done."""
    peers: dict[str, PeerFile] = {}
    ends = 0
    try:
        while ends < prefill_groups:
            if comm.stop_requested():
                return "stopped"
            msg = comm.poll(TAG_HANDOFF)
            if msg is None:
                time.sleep(0.0005)
                continue
            if msg == END:
                ends += 1
                continue
            req, path, slots, keys, crcs, intended, storage_ns, written = msg
            if path not in peers:
                peers[path] = PeerFile(path, engine.geometry.object_bytes, o_direct)
            off = _offset_ns()
            engine.serve_handoff(req, peers[path], slots, keys, crcs, intended - off, storage_ns,
                                 written - off)
        return "share"
    finally:
        for peer in peers.values():
            peer.close()
