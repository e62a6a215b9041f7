"""Null tier: counts bytes and does no I/O, optionally after an injected delay.

For trace mode (how would this trace hit a cache, at no storage cost) and for tests of
the engine that must not depend on a device.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from mpi_kvbench.context import RankContext
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.tiers.base import Tier


class NullTier(Tier):
    """No I/O; every operation 'moves' its bytes after ``latency_us``."""

    name = "null"
    needs_payload = False

    @dataclasses.dataclass(frozen=True)
    class Params:
        latency_us: float = 0.0

        def check(self) -> None:
            if self.latency_us < 0:
                raise ConfigError(f"latency_us={self.latency_us}: must not be negative")

    def open(self, ctx: RankContext) -> None:
        self._delay_s = self.params.latency_us / 1e6
        self.instant = self._delay_s == 0

    def write(self, slot: int, data: memoryview) -> int:
        if self._delay_s:
            time.sleep(self._delay_s)
        return len(data)

    def read(self, slot: int, out: memoryview) -> int:
        if self._delay_s:
            time.sleep(self._delay_s)
        return len(out)

    def close(self) -> None:
        pass

    def info(self) -> dict[str, Any]:
        return {**super().info(), "latency_us": self.params.latency_us}
