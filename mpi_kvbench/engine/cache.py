"""The waterfall cache: which tier holds each object, capacity per tier, and eviction.

New objects land in the highest tier with room. A tier that would go over its high
watermark first demotes its least-valuable objects (as its policy says) to the next tier
down until it is under its low watermark; the bottom tier drops them. Planning is pure
bookkeeping, done in trace order, so the same trace gives the same operations; the I/O
pool then carries the plan out, stage by stage:

* ``stages[0]`` holds moves out of the bottom-most tier that moves anything, the last
  stage moves out of the top tier. A slot freed by a stage is only written by a later
  stage, so no move overwrites data another move still has to read.
* Slots freed by a promotion are only reused after the plan (``release``), because the
  promoted object is read after the demotion stages.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from mpi_kvbench.eviction.base import EvictionPolicy


@dataclass(slots=True)
class Entry:
    level: int
    slot: int


@dataclass
class Level:
    name: str
    slots: int
    high: int          # used slots above which the tier demotes
    low: int           # demote down to this many used slots
    policy: EvictionPolicy
    free: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.free = list(range(self.slots - 1, -1, -1))   # pop() hands out slot 0 first

    @property
    def used(self) -> int:
        return self.slots - len(self.free)


class Move(NamedTuple):
    """One object leaving ``src``: to ``dst`` (a demotion or promotion) or dropped (dst None).
    (A named tuple: made per object planned, at half a frozen dataclass's cost.)"""

    key: Hashable
    src_level: int
    src_slot: int
    dst_level: int | None
    dst_slot: int | None


class Placement(NamedTuple):
    key: Hashable
    level: int
    slot: int


@dataclass
class Plan:
    stages: list[list[Move]]            # demotions and drops, run in order
    placements: list[Placement]         # where new objects go (None-placed ones are skipped)
    promotions: list[Move] = field(default_factory=list)


def watermark_levels(names: Sequence[str], slots: Sequence[int], high: float, low: float,
                     policies: Sequence[EvictionPolicy]) -> list[Level]:
    out = []
    for name, n, pol in zip(names, slots, policies, strict=True):
        hi = max(1, int(n * high)) if n else 0
        lo = min(hi, max(0, int(n * low)))
        out.append(Level(name, n, hi, lo, pol))
    return out


class Hierarchy:
    """Index and capacity of every tier of one rank; plans inserts, demotions, promotions."""

    def __init__(self, levels: list[Level], object_bytes: int) -> None:
        self.levels = levels
        self.object_bytes = object_bytes
        self.index: dict[Hashable, Entry] = {}
        self.now = 0.0

    def __contains__(self, key: Hashable) -> bool:
        return key in self.index

    def lookup(self, keys: Iterable[Hashable]) -> list[tuple[Hashable, Entry]]:
        """The longest prefix of ``keys`` held in any tier; each hit counts as an access."""
        hits = []
        for key in keys:
            entry = self.index.get(key)
            if entry is None:
                break
            self.levels[entry.level].policy.on_access(key, self.now)
            hits.append((key, entry))
        return hits

    def place(self, keys: Sequence[Hashable], pinned: set[Hashable],
              promote: Sequence[Hashable] = (), level: int = 0) -> Plan:
        """Plans room for new ``keys`` at ``level`` or below (and moves ``promote`` keys up
        to the top tier)."""
        moves: dict[int, list[Move]] = {}
        pinned = set(pinned) | set(keys) | set(promote)
        placements = []
        for key in keys:
            where = self._alloc(level, pinned, moves)
            if where is not None:
                self._insert(key, *where)
                placements.append(Placement(key, *where))
        promotions, deferred = [], []
        for key in promote:
            entry = self.index[key]
            if entry.level == 0:
                continue
            where = self._alloc(0, pinned, moves, below=entry.level)
            if where is None:
                continue
            self.levels[entry.level].policy.on_remove(key)
            deferred.append((entry.level, entry.slot))
            promotions.append(Move(key, entry.level, entry.slot, *where))
            entry.level, entry.slot = where
            self.levels[where[0]].policy.on_insert(key, self.object_bytes, self.now)
        for level, slot in deferred:
            self.levels[level].free.append(slot)
        stages = [moves[lv] for lv in sorted(moves, reverse=True)]
        return Plan(stages, placements, promotions)

    def _insert(self, key: Hashable, level: int, slot: int) -> None:
        self.index[key] = Entry(level, slot)
        self.levels[level].policy.on_insert(key, self.object_bytes, self.now)

    def _alloc(self, lv: int, pinned: set[Hashable], moves: dict[int, list[Move]],
               below: int | None = None) -> tuple[int, int] | None:
        """A free slot at ``lv`` or the first tier below it with room, demoting as needed."""
        levels = self.levels
        for level_no in range(lv, len(levels) if below is None else below):
            level = levels[level_no]
            if level.slots == 0:
                continue
            used = level.slots - len(level.free)
            if used + 1 > level.high:
                excess = used + 1 - max(level.low, 1)
                for victim in level.policy.victims(excess * self.object_bytes, pinned):
                    self._demote(victim, level_no, pinned, moves)
            if level.free:
                return level_no, level.free.pop()
        return None

    def _demote(self, key: Hashable, lv: int, pinned: set[Hashable],
                moves: dict[int, list[Move]]) -> None:
        entry = self.index[key]
        level = self.levels[lv]
        level.policy.on_remove(key)
        pinned.add(key)   # never move one object twice in a plan
        dst = self._alloc(lv + 1, pinned, moves)
        level.free.append(entry.slot)
        if dst is None:
            moves.setdefault(lv, []).append(Move(key, lv, entry.slot, None, None))
            del self.index[key]
        else:
            moves.setdefault(lv, []).append(Move(key, lv, entry.slot, *dst))
            entry.level, entry.slot = dst
            self.levels[dst[0]].policy.on_insert(key, self.object_bytes, self.now)

    def used_bytes(self) -> list[int]:
        return [lv.used * self.object_bytes for lv in self.levels]
