"""Rank 0's live output: a banner, each phase as it starts, progress of the long phases,
skipped trace rows and where the result went.

Printed on stdout also when it is not a terminal (a batch job's log): a run of minutes
must not look hung. On a terminal a progress line is rewritten in place (``\\r``) every
couple of seconds; elsewhere it is a new line every few seconds, so a log stays short.
Every live line starts with ``> `` so it is told apart from the summary table; ``--quiet``
turns all of it off.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from mpi_kvbench.engine import Engine

PREFIX = "> "


class Console:
    """Lines and in-place progress bars on rank 0; silent when ``enabled`` is false."""

    def __init__(self, enabled: bool, *, stream: TextIO | None = None,
                 clock: Callable[[], int] = time.perf_counter_ns, every_s: float | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.tty = enabled and _isatty(self.stream)
        self.clock = clock
        self.every_ns = int((every_s if every_s is not None else 2.0 if self.tty else 5.0) * 1e9)
        self._open = False     # a \r line is on screen and needs its newline
        self._last: dict[str, int] = {}

    def line(self, text: str) -> None:
        """One line, now."""
        if not self.enabled:
            return
        self._end_bar()
        self.stream.write(f"{PREFIX}{text}\n")
        self.stream.flush()

    def due(self, key: str) -> bool:
        """True at most every ``every_s`` per ``key`` (the first call only starts the clock)."""
        if not self.enabled:
            return False
        now = self.clock()
        last = self._last.setdefault(key, now)
        if now - last < self.every_ns:
            return False
        self._last[key] = now
        return True

    def update(self, text: str) -> None:
        """A progress line: rewritten in place on a terminal, a new line elsewhere."""
        if not self.enabled:
            return
        if self.tty:
            self.stream.write(f"\r{PREFIX}{text}   ")
            self._open = True
        else:
            self.stream.write(f"{PREFIX}{text}\n")
        self.stream.flush()

    def bar(self, what: str) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback that shows ``what: 45% (done of total)`` now and then."""
        def report(done: int, total: int) -> None:
            if self.due(what):
                share = done / total if total else 0.0
                self.update(f"{what}: {share:.0%} {bar(share)} ({_count(done)} of {_count(total)})")
        return report

    def done(self) -> None:
        """Ends an in-place line (before anything else prints)."""
        self._end_bar()

    def _end_bar(self) -> None:
        if self._open:
            self.stream.write("\n")
            self._open = False


def bar(share: float, width: int = 20) -> str:
    full = max(0, min(width, int(share * width)))
    return "[" + "#" * full + "." * (width - full) + "]"


def _count(n: int) -> str:
    return f"{n:,}"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Elapsed and remaining time, requests served and the recent GB/s of rank 0 during
    the measured phase, through a ``Console`` (silent when it is)."""

    def __init__(self, console: Console, start_ns: int, duration_s: float, *,
                 clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.console = console
        self.clock = clock
        self.start_ns, self.duration_s = start_ns, duration_s
        self.last_ns, self.last_bytes = start_ns, 0

    def __call__(self, engine: Engine) -> None:
        now = self.clock()
        if not self.console.enabled or now - self.last_ns < self.console.every_ns:
            return
        moved = engine.recorder.bytes_moved()
        rate = (moved - self.last_bytes) / (now - self.last_ns)
        el = (now - self.start_ns) / 1e9
        left = f", {max(0.0, self.duration_s - el):.0f} s left" if self.duration_s else ""
        self.console.update(f"measured: {el:.0f} s{left}, rank 0: {engine.completed} requests,"
                            f" {rate:.2f} GB/s")
        self.last_ns, self.last_bytes = now, moved

    def done(self) -> None:
        self.console.done()
