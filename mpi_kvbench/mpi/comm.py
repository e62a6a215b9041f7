"""MPI, behind one small wrapper. The only module that imports mpi4py.

``world()`` gives an MPI-backed ``Comm`` when mpi4py is installed (under mpirun or as a
singleton) and a ``SerialComm`` otherwise, so a laptop without MPI still runs one rank.
Everything else (engine, tiers, metrics) takes plain values and never sees MPI.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from mpi_kvbench.context import RankContext
from mpi_kvbench.errors import ConfigError

TAG_STOP = 7001        # "stop now": a rank failed, or the stonewall fell
TAG_TRACE = 7002       # batches of requests from rank 0
TAG_HANDOFF = 7003     # disaggregated serving: prefill -> decode


class Comm(Protocol):
    """What the pipeline needs from a communicator; ``SerialComm`` and ``MpiComm`` have it."""

    rank: int
    size: int

    def barrier(self) -> None: ...
    def quiet_barrier(self) -> None: ...
    def bcast(self, obj: Any) -> Any: ...
    def allgather(self, obj: Any) -> list: ...
    def gather(self, obj: Any) -> list | None: ...
    def allreduce(self, value: Any, op: str = "sum") -> Any: ...
    def union(self, items: Any) -> list: ...
    def reduce_array(self, arr: np.ndarray, op: str = "sum") -> np.ndarray | None: ...
    def gather_array(self, arr: np.ndarray) -> np.ndarray | None: ...
    def split(self, color: int, key: int) -> Comm: ...
    def node_comm(self) -> Comm: ...
    def send(self, obj: Any, dest: int, tag: int = TAG_TRACE) -> None: ...
    def recv(self, source: int = 0, tag: int = TAG_TRACE) -> Any: ...
    def post(self, obj: Any, dest: int, tag: int) -> None: ...
    def poll(self, tag: int) -> Any: ...
    def notify_stop(self, reason: str) -> None: ...
    def stop_requested(self) -> str | None: ...
    def watch(self, check: Callable[[], str | None]) -> None: ...
    def drain(self) -> None: ...
    def abort(self, status: int) -> None: ...
    def exit_now(self, status: int) -> None: ...
    @property
    def library(self) -> str: ...


class SerialComm:
    """A world of one rank: every collective is the identity."""

    rank, size = 0, 1
    _stop_reason: str | None = None
    _check: Callable[[], str | None] | None = None

    def barrier(self) -> None:
        pass

    def bcast(self, obj: Any) -> Any:
        return obj

    def quiet_barrier(self) -> None:
        pass

    def allgather(self, obj: Any) -> list:
        return [obj]

    def gather(self, obj: Any) -> list | None:
        return [obj]

    def allreduce(self, value: Any, op: str = "sum") -> Any:
        return value

    def union(self, items: Any) -> list:
        """The sorted union of every rank's ``items`` (names), on every rank."""
        return sorted(set(items))

    def reduce_array(self, arr: np.ndarray, op: str = "sum") -> np.ndarray | None:
        return arr.copy()

    def gather_array(self, arr: np.ndarray) -> np.ndarray | None:
        return arr[None, ...].copy()

    def split(self, color: int, key: int) -> SerialComm:
        return self

    def node_comm(self) -> SerialComm:
        return self

    def send(self, obj: Any, dest: int, tag: int = TAG_TRACE) -> None:
        raise RuntimeError("a world of one rank has nobody to send to")

    def recv(self, source: int = 0, tag: int = TAG_TRACE) -> Any:
        raise RuntimeError("a world of one rank has nobody to receive from")

    def post(self, obj: Any, dest: int, tag: int) -> None:
        raise RuntimeError("a world of one rank has nobody to post to")

    def poll(self, tag: int) -> Any:
        return None

    def notify_stop(self, reason: str) -> None:
        self._stop_reason = self._stop_reason or reason

    def stop_requested(self) -> str | None:
        """The first stop reason: this rank's own (a signal, seen through ``watch``) or
        one another rank sent."""
        if self._stop_reason is None and self._check is not None and (reason := self._check()):
            self.notify_stop(reason)
        return self._stop_reason

    def watch(self, check: Callable[[], str | None]) -> None:
        """``check`` (a reason or None) is asked on every ``stop_requested``; a reason it
        gives is sent to every rank as a stop."""
        self._check = check

    def drain(self) -> None:
        pass

    def abort(self, status: int) -> None:
        """Ends every rank now: for a rank that must leave alone (the others would wait
        for it forever). Returns only in a world of one rank."""

    def exit_now(self, status: int) -> None:
        """Ends this process without joining its threads (one is stuck in a stalled device
        call), after MPI's own orderly end."""
        sys.stdout.flush()
        sys.stderr.flush()
        self._finalize()
        os._exit(status)

    def _finalize(self) -> None:
        pass

    @property
    def library(self) -> str:
        return "none (serial)"


class MpiComm(SerialComm):
    """The same API over an mpi4py communicator."""

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self._ops = {"sum": MPI.SUM, "min": MPI.MIN, "max": MPI.MAX}
        self._sent: list = []
        self._stop_reason: str | None = None

    def barrier(self) -> None:
        self.comm.Barrier()

    def bcast(self, obj: Any) -> Any:
        return self.comm.bcast(obj, root=0)

    def quiet_barrier(self) -> None:
        """A barrier that waits in 1 ms sleeps: MPI's own busy-polls, and a rank that is
        done first must not take a core from ranks still measuring (more ranks than cores)."""
        req = self.comm.Ibarrier()
        while not req.Test():
            time.sleep(0.001)

    def allgather(self, obj: Any) -> list:
        return self.comm.allgather(obj)

    def gather(self, obj: Any) -> list | None:
        return self.comm.gather(obj, root=0)

    def allreduce(self, value: Any, op: str = "sum") -> Any:
        return self.comm.allreduce(value, op=self._ops[op])

    def union(self, items: Any) -> list:
        """A tree reduction of sets (mpi4py's object reduce pairs ranks level by level):
        each level carries one set of names, not every rank's list as an allgather does."""
        return sorted(self.comm.allreduce(frozenset(items), op=self._MPI.BOR))

    def reduce_array(self, arr: np.ndarray, op: str = "sum") -> np.ndarray | None:
        arr = np.ascontiguousarray(arr)
        out = np.empty_like(arr) if self.rank == 0 else None
        self.comm.Reduce(arr, out, op=self._ops[op], root=0)
        return out

    def gather_array(self, arr: np.ndarray) -> np.ndarray | None:
        arr = np.ascontiguousarray(arr)
        out = np.empty((self.size, *arr.shape), dtype=arr.dtype) if self.rank == 0 else None
        self.comm.Gather(arr, out, root=0)
        return out

    def split(self, color: int, key: int) -> MpiComm:
        return MpiComm(self.comm.Split(color, key))

    def node_comm(self) -> MpiComm:
        return MpiComm(self.comm.Split_type(self._MPI.COMM_TYPE_SHARED, key=self.rank))

    def send(self, obj: Any, dest: int, tag: int = TAG_TRACE) -> None:
        self.comm.send(obj, dest=dest, tag=tag)

    def recv(self, source: int = 0, tag: int = TAG_TRACE) -> Any:
        return self.comm.recv(source=source, tag=tag)

    def post(self, obj: Any, dest: int, tag: int) -> None:
        """Sends without waiting; ``drain`` completes it."""
        self._sent.append(self.comm.isend(obj, dest=dest, tag=tag))
        if len(self._sent) > 256:   # keep the list short on long runs
            self._sent = [r for r in self._sent if not r.Test()]

    def poll(self, tag: int) -> Any:
        """A message with ``tag`` from anyone, or None when none has arrived."""
        if self.comm.Iprobe(source=self._MPI.ANY_SOURCE, tag=tag):
            return self.comm.recv(source=self._MPI.ANY_SOURCE, tag=tag)
        return None

    def notify_stop(self, reason: str) -> None:
        """Tells every other rank to stop (non-blocking); they see it in ``stop_requested``."""
        self._stop_reason = self._stop_reason or reason
        for dest in range(self.size):
            if dest != self.rank:
                self._sent.append(self.comm.isend(reason, dest=dest, tag=TAG_STOP))

    def stop_requested(self) -> str | None:
        """The first stop reason, this rank's own or one another rank sent; a cheap Iprobe."""
        if self._stop_reason is None and self.comm.Iprobe(source=self._MPI.ANY_SOURCE,
                                                          tag=TAG_STOP):
            self._stop_reason = self.comm.recv(source=self._MPI.ANY_SOURCE, tag=TAG_STOP)
        return super().stop_requested()

    def drain(self) -> None:
        """Completes sent stop notices and receives unread ones, so MPI finalizes cleanly."""
        self.barrier()
        while self.comm.Iprobe(source=self._MPI.ANY_SOURCE, tag=TAG_STOP):
            self.comm.recv(source=self._MPI.ANY_SOURCE, tag=TAG_STOP)
        for req in self._sent:
            req.wait()
        self._sent.clear()
        self.barrier()

    def abort(self, status: int) -> None:
        self._MPI.COMM_WORLD.Abort(status)

    def _finalize(self) -> None:
        self._MPI.Finalize()

    @property
    def library(self) -> str:
        return self._MPI.Get_library_version().splitlines()[0].strip()


def world() -> Comm:
    try:
        from mpi4py import MPI
    except ImportError:
        return SerialComm()
    return MpiComm(MPI.COMM_WORLD)


#: Where launchers say how many tasks they started, the closest launcher first: an MPI
#: process manager's own count (``mpirun -n 1`` inside an 8-task job is one task), then
#: the Slurm step's, then the job's (a plain ``python`` in an 8-task batch script).
TASK_COUNT_VARS = ("PMI_SIZE", "PMIX_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE",
                   "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
IGNORE_LAUNCH = "MPI_KVBENCH_IGNORE_LAUNCH"


def check_launch(size: int, environ: dict[str, str]) -> None:
    """Refuses a one-rank MPI world where the launcher started several tasks: each task
    then runs alone (``srun`` without the right ``--mpi=``, or an MPI library other than
    the one mpi4py was built with), and N copies of a one-rank run all exit 0."""
    if size != 1 or environ.get(IGNORE_LAUNCH):
        return
    for var in TASK_COUNT_VARS:
        value = environ.get(var, "")
        if not value.isdigit():
            continue
        if int(value) > 1:
            slurm = var.startswith("SLURM")
            fix = ("start it with `srun --mpi=pmix` (or the plug-in `srun --mpi=list` shows that"
                   " matches mpi4py's MPI)" if slurm else
                   "start it with the mpirun of the MPI that mpi4py was built with"
                   " (launch/mpirun.sh does)")
            raise ConfigError(f"launch: {var}={value} tasks were started but MPI sees a world of one"
                              f" rank, so each would run alone; {fix}, or set {IGNORE_LAUNCH}=1"
                              " to run one-rank copies on purpose")
        return


def topology(comm: Comm, tp: int, run_id: str) -> tuple[RankContext, Comm]:
    """This rank's place: TP group (a Split of consecutive ranks), node, local rank.

    Returns the context and the TP-group communicator. The same error is raised on
    every rank when TP does not divide the world size.
    """
    if comm.size % tp:
        raise ConfigError(f"kv.tensor_parallel={tp} does not divide the {comm.size} ranks; use a"
                          f" divisor of {comm.size} or start a multiple of {tp} ranks")
    group, tp_rank = divmod(comm.rank, tp)
    group_comm = comm.split(group, tp_rank)
    node_comm = comm.node_comm()
    leaders = comm.allgather(comm.rank if node_comm.rank == 0 else -1)
    node_leader = node_comm.bcast(comm.rank if node_comm.rank == 0 else None)
    node_ids = sorted(r for r in leaders if r >= 0)
    ctx = RankContext(rank=comm.rank, world_size=comm.size, local_rank=node_comm.rank,
                      node=node_ids.index(node_leader), nodes=len(node_ids), group=group,
                      replicas=comm.size // tp, tp_rank=tp_rank, tp_size=tp, run_id=run_id,
                      host=socket.gethostname())
    return ctx, group_comm
