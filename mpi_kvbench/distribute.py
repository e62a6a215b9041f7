"""Which replica (TP group) serves which request.

A user's requests all go to one replica, so a conversation's prefix reuse stays where
its KV is. Every rank of a TP group gets the same requests. For trace files, rank 0's
``Router`` (routing.py) picks the replica by ``workload.routing``: ``user % replicas``
(the default), round robin, or the replica that holds the longest prefix.

Partitionable workloads (synthetic users) generate each replica's share on its own
ranks, with no messages. Trace files are read once, on rank 0, and sent to the ranks of
each group in batches of ``BATCH`` requests, so no message is giant and rank 0 holds
only one batch per replica at a time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from mpi_kvbench.context import RankContext
from mpi_kvbench.mpi.comm import TAG_TRACE, Comm
from mpi_kvbench.routing import Router
from mpi_kvbench.workloads.base import Request, Workload

BATCH = 2000
END = "end"          # after the last batch


def replica_requests(workload: Workload, ctx: RankContext, comm: Comm,
                     serving: int | None, chunk_tokens: int) -> Iterator[Request]:
    """This rank's requests, in trace order. Only the first ``serving`` groups (default
    all) take requests from the trace: with disaggregated serving, the prefill groups.
    ``chunk_tokens`` (``kv.chunk_tokens``) is the chunk the ``prefix`` routing keys by."""
    serving = serving or ctx.replicas
    if workload.partitionable:
        return workload.requests(ctx.group, serving) if ctx.group < serving else iter(())
    if comm.size == 1:
        return workload.requests()
    if comm.rank == 0:
        try:
            mine = _scatter(workload, ctx, comm, trace_router(workload, serving, chunk_tokens))
        except BaseException:   # release every receiver; the caller reports the error
            for dest in range(1, comm.size):
                comm.send(END, dest)
            raise
    else:
        mine = []
        while (batch := _next_batch(comm)) is not None:
            mine.extend(batch)
    return iter(mine)


def _next_batch(comm: Comm) -> list[Request] | None:
    """Rank 0's next batch, None after the last, waiting without spinning a core (MPI's
    blocking receive busy-polls, which starves rank 0 where ranks outnumber cores)."""
    while (batch := comm.poll(TAG_TRACE)) is None:
        time.sleep(0.001)
    return None if batch == END else batch


def trace_router(workload: Workload, serving: int, chunk_tokens: int) -> Router:
    """The router of ``workload.routing`` over the serving groups; "user" for a workload
    without that setting (a third-party trace reader)."""
    return Router(getattr(workload.params, "routing", "user"), serving, chunk_tokens)


def _scatter(workload: Workload, ctx: RankContext, comm: Comm, router: Router) -> list[Request]:
    tp = ctx.tp_size
    pending: list[list[Request]] = [[] for _ in range(ctx.replicas)]
    mine: list[Request] = []

    def flush(group: int) -> None:
        for dest in range(group * tp, (group + 1) * tp):
            if dest == 0:
                mine.extend(pending[group])
            else:
                comm.send(pending[group], dest)
        pending[group] = []

    for req in workload.requests():
        group = router.route(req)
        pending[group].append(req)
        if len(pending[group]) >= BATCH:
            flush(group)
    for group in range(ctx.replicas):
        flush(group)
        for dest in range(group * tp, (group + 1) * tp):
            if dest != 0:
                comm.send(END, dest)
    return mine
