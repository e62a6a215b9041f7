"""A one-line status on rank 0's terminal during the measured phase."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from mpi_kvbench.engine import Engine


class Progress:
    """Elapsed and remaining time, requests served and the recent GB/s of this rank, at
    most every ``every_s`` seconds; silent unless ``stream`` is a terminal."""

    def __init__(self, enabled: bool, start_ns: int, duration_s: float, *,
                 stream: TextIO | None = None, clock: Callable[[], int] = time.perf_counter_ns,
                 every_s: float = 2.0) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.clock, self.every_ns = clock, int(every_s * 1e9)
        self.start_ns, self.duration_s = start_ns, duration_s
        self.last_ns, self.last_bytes = start_ns, 0

    def __call__(self, engine: Engine) -> None:
        now = self.clock()
        if not self.enabled or now - self.last_ns < self.every_ns:
            return
        moved = engine.recorder.bytes_moved()
        rate = (moved - self.last_bytes) / (now - self.last_ns)
        el = (now - self.start_ns) / 1e9
        left = f", {max(0.0, self.duration_s - el):.0f} s left" if self.duration_s else ""
        self.stream.write(f"\r  {el:.0f} s{left}, rank 0: {engine.completed} requests,"
                          f" {rate:.2f} GB/s   ")
        self.stream.flush()
        self.last_ns, self.last_bytes = now, moved

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\n")


class FillProgress:
    """A bar for the device fill on rank 0's terminal: blocks done of all, GB, GB/s."""

    def __init__(self, enabled: bool, block_bytes: int, *, stream: TextIO | None = None,
                 clock: Callable[[], int] = time.perf_counter_ns, every_s: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.block_bytes, self.clock, self.every_ns = block_bytes, clock, int(every_s * 1e9)
        self.start_ns = self.last_ns = clock()

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if not self.enabled or (now - self.last_ns < self.every_ns and done < total):
            return
        self.last_ns = now
        gb = done * self.block_bytes / 1e9
        rate = gb / ((now - self.start_ns) / 1e9) if now > self.start_ns else 0.0
        bar = "#" * (30 * done // total)
        self.stream.write(f"\r  precondition [{bar:30}] {100 * done // total:3d}%, rank 0:"
                          f" {gb:.2f} of {total * self.block_bytes / 1e9:.2f} GB, {rate:.2f} GB/s  ")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()
