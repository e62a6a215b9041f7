"""Least-recently-used: the key touched longest ago goes first."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Set

from mpi_kvbench.eviction.base import EvictionPolicy


class LruPolicy(EvictionPolicy):
    """Evicts the least recently inserted or accessed key first."""

    def __init__(self, params: object | None = None) -> None:
        super().__init__(params)
        self._order: OrderedDict[Hashable, int] = OrderedDict()

    def on_insert(self, key: Hashable, nbytes: int, now: float) -> None:
        self._order[key] = nbytes
        self._order.move_to_end(key)

    def on_access(self, key: Hashable, now: float) -> None:
        self._order.move_to_end(key)

    def on_remove(self, key: Hashable) -> None:
        del self._order[key]

    def victims(self, need_bytes: int, pinned: Set[Hashable]) -> list[Hashable]:
        out, freed = [], 0
        for key, nbytes in self._order.items():
            if freed >= need_bytes:
                break
            if key not in pinned:
                out.append(key)
                freed += nbytes
        return out
