"""Signals as a stop request: SIGINT, SIGTERM and SIGHUP end the run in order.

The first signal only sets a flag; the run's stop check reads it between requests (and
while waiting), tells the other ranks, and the run then reduces what it measured and
writes a result marked incomplete. A second signal (one second or more after the first:
launchers deliver one signal by several paths at once, e.g. a kill of the process group
that mpirun also forwards) leaves at once: the ``leave`` hook
removes what the run still has named on disk and the process exits with 128 + the
signal's number, the shell's convention (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP).

Handlers are per process by nature; this object is made and installed by the run that
owns them and restored when it ends, so nothing here is module state.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SAME_SIGNAL_S = 1.0    # copies of one signal arriving this close together count once


def status(signum: int) -> int:
    """The exit status for a run ended by ``signum``."""
    return 128 + signum


def name(signum: int) -> str:
    return signal.Signals(signum).name


class Interrupts:
    """The signals this process received, and what to do on the second."""

    def __init__(self, leave: Callable[[], None] = lambda: None) -> None:
        self.received = 0                  # the first signal's number; 0: none yet
        self._first_at = 0.0
        self.leave = leave                 # removes scratch before a hard exit
        self._previous: dict[int, object] = {}

    def install(self) -> Interrupts:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.received:
            self.received, self._first_at = signum, time.monotonic()
            return
        if time.monotonic() - self._first_at < SAME_SIGNAL_S:
            return
        try:   # a second signal: no more waiting
            self.leave()
        finally:
            print(f"error: {name(signum)} again: leaving at once", file=sys.stderr, flush=True)
            os._exit(status(signum))

    def __enter__(self) -> Interrupts:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()
