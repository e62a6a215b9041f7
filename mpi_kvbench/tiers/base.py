"""The tier interface: a tier stores fixed-size objects in numbered slots.

Every object of a run has the same size (a chunk, or a chunk's layer, of one TP shard), so
a tier is an array of slots: ``write(slot, data)`` and ``read(slot, out)`` move one object.
The tier never decides what to keep: the cache hierarchy owns the index, capacity
accounting, slot allocation and eviction, and the I/O pool owns timing. A tier moves
bytes and releases the GIL while it does (system calls, numpy or torch copies), so
``io_depth`` threads really overlap.

What the core needs to know about a plug-in is a read-only class flag or a method here,
never a type check: ``needs_payload`` (False: writes need no fresh bytes), ``shareable``
(the ranks of a TP group can share one copy: a writer and readers), ``location`` and
``open_peer`` (another rank reads this tier's objects: disaggregated serving), and
``unlink`` and ``cleanup`` (the names a tier made on disk, removed once every rank has
opened what it reads of the others', at the end of set-up).

Optional fast paths (defaults keep a tier on the plain ``write``/``read`` path; the I/O
pool asks, a tier that does not answer is used as before):

* ``makes_payload`` (set at ``open``) and ``produce``: the tier makes a new object's bytes
  where they live (KV born on the GPU), stamped exactly as the host payload is, instead of
  being handed host bytes.
* ``host_slot``: the slot is host memory another tier may copy straight to or from.
* ``copy_to`` / ``copy_from``: one call moves an object between this tier and another
  (e.g. a device-to-host copy into a DRAM slot); None: not between these two.
* ``staging_buffer``: host memory (pinned) to bounce through when no direct copy exists.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

from mpi_kvbench.context import RankContext
from mpi_kvbench.errors import ConfigError

SHARES = ("private", "writer", "reader")


class Tier(abc.ABC):
    """Base of every tier plug-in.

    ``level`` is where the tier sits (hbm, dram, storage). ``share`` is "private" (this
    rank's own objects) or, for a ``shareable`` tier, "writer" or "reader": one copy per
    TP group that the writer creates and writes and every rank of the group reads.
    """

    name: ClassVar[str]
    needs_payload: ClassVar[bool] = True   # False for tiers that never look at the bytes
    shareable: ClassVar[bool] = False      # True: honours share="writer"/"reader"
    deletes = False        # dropping an object is I/O (``drop``), timed like the others
    makes_payload: bool = False            # True (set at open): WRITE calls ``produce``
    instant: bool = False                  # True (set at open): no I/O and no delay (trace mode)

    @dataclasses.dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: Any, capacity_bytes: int, object_bytes: int, *, level: str,
                 share: str = "private") -> None:
        if share not in SHARES or (share != "private" and not self.shareable):
            raise ValueError(f"{type(self).__name__} cannot be opened with share={share!r}")
        self.params = params
        self.object_bytes = object_bytes
        self.capacity_bytes = capacity_bytes
        self.requested_bytes = capacity_bytes   # what the config asked; capacity_bytes may shrink
        self.capped: str | None = None          # why open() gave less than asked (free space ...)
        self.level = level
        self.share = share

    @property
    def slots(self) -> int:
        """How many objects fit; a tier may lower ``capacity_bytes`` in ``open``."""
        return self.capacity_bytes // self.object_bytes

    def limit_capacity(self, capacity_bytes: int) -> None:
        """Uses no more than ``capacity_bytes`` (a TP group plans with its smallest tier)."""
        self.capacity_bytes = min(self.capacity_bytes, capacity_bytes)

    @abc.abstractmethod
    def open(self, ctx: RankContext) -> None:
        """Allocates memory or creates files; called once per rank before any I/O."""

    @abc.abstractmethod
    def write(self, slot: int, data: memoryview) -> int:
        """Stores ``data`` (one object) in ``slot``; returns bytes moved."""

    @abc.abstractmethod
    def read(self, slot: int, out: memoryview) -> int:
        """Reads the object in ``slot`` into ``out``; returns bytes moved."""

    @abc.abstractmethod
    def close(self) -> None:
        """Frees memory and removes every file this tier created (and nothing else).
        Safe to call twice: tear-down after a failure may reach it again."""

    def info(self) -> dict[str, Any]:
        """Facts for the result file: what backs the tier and how."""
        return {"kind": self.name, "capacity_bytes": self.capacity_bytes, "slots": self.slots,
                "level": self.level, "requested_bytes": self.requested_bytes, "capped": self.capped}

    def location(self) -> str | None:
        """Where another rank finds this tier's objects (see ``open_peer``); None: nowhere."""
        return None

    def open_peer(self, location: str) -> Tier:
        """A read-only view of another rank's tier of this kind at ``location``."""
        raise ConfigError(f"tiers.{self.level}: a {self.name} tier cannot be read by another rank;"
                          " use a file-backed storage tier")

    def drop(self, slot: int) -> None:  # noqa: B027 - only tiers that say ``deletes``
        """Deletes the object in ``slot``, evicted from the bottom of the hierarchy (a DELETE
        on object storage); a file tier just reuses the slot."""

    def unlink(self) -> None:  # noqa: B027 - optional: most tiers name nothing on disk
        """Called on every rank once every rank has opened what it needs of the others'
        tiers (the end of set-up): removes the names this tier made on disk. Its data stays
        reachable through its open descriptors, so a run killed by anything, SIGKILL
        included, leaves nothing behind."""

    def cleanup(self) -> None:  # noqa: B027 - optional: most tiers leave nothing shared
        """Called on every rank after every rank's ``unlink`` (and again at tear-down):
        removes what ranks made for each other (a shared directory)."""

    # -- optional fast paths (see the module docstring); the defaults opt out ---------------
    def produce(self, slot: int, key: int, seq: int) -> int:
        """Fills ``slot`` with a new object's bytes, stamped like ``payload.stamp`` (key,
        write sequence, offset in every 4 KiB block); returns bytes written. Called only
        when ``makes_payload`` is True."""
        raise NotImplementedError(f"{type(self).__name__} does not make its own payload")

    def host_slot(self, slot: int) -> memoryview | None:
        """The slot's bytes as host memory that another tier may copy into or out of
        directly (DRAM); None: the slot is not addressable host memory."""
        return None

    def copy_to(self, slot: int, dst: Tier, dst_slot: int) -> int | None:
        """Moves the object in ``slot`` into ``dst``'s ``dst_slot`` in one call; returns
        bytes moved, or None when this tier has no direct path to ``dst``."""
        return None

    def copy_from(self, slot: int, src: Tier, src_slot: int) -> int | None:
        """Loads ``src``'s object in ``src_slot`` into ``slot`` in one call; returns bytes
        moved, or None when this tier has no direct path from ``src``."""
        return None

    def staging_buffer(self) -> Any:
        """A page-aligned host buffer of one object to bounce this tier's copies through
        (pinned for a GPU); None: any host buffer is as good. The caller keeps one per
        thread; the tier frees them at ``close``."""
        return None
