"""The eviction-policy interface: a policy keeps its own ordering and only nominates victims.

The hierarchy tells the policy what was inserted, touched and removed, and asks it for
victims; it never hands the policy its index. ``now`` is trace time (the nominal arrival
of the request being served, in seconds), never wall-clock time, so a replay is
identical from run to run. A policy gets its validated ``Params`` (config section
``engine.policy_params``) when it is built, like tiers and workloads.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Hashable, Set


class EvictionPolicy(abc.ABC):
    """Base of every policy plug-in (one instance per tier per rank)."""

    @dataclasses.dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: object | None = None) -> None:
        self.params = params

    @abc.abstractmethod
    def on_insert(self, key: Hashable, nbytes: int, now: float) -> None: ...

    @abc.abstractmethod
    def on_access(self, key: Hashable, now: float) -> None: ...

    @abc.abstractmethod
    def on_remove(self, key: Hashable) -> None: ...

    @abc.abstractmethod
    def victims(self, need_bytes: int, pinned: Set[Hashable]) -> list[Hashable]:
        """Keys to evict, best first, to free at least ``need_bytes`` (fewer if too much is pinned)."""
