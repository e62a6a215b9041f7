"""The progress line: what it prints, how often, and that it stays quiet off a terminal."""

from __future__ import annotations

import io
from types import SimpleNamespace

from mpi_kvbench.progress import Progress


class Tty(io.StringIO):
    def __init__(self, tty: bool = True) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def engine(moved: int, completed: int) -> SimpleNamespace:
    return SimpleNamespace(completed=completed, recorder=SimpleNamespace(bytes_moved=lambda: moved))


def test_it_prints_elapsed_left_requests_and_the_recent_rate() -> None:
    now = [0]
    out = Tty()
    p = Progress(True, 0, 30.0, stream=out, clock=lambda: now[0])
    now[0] = 1_000_000_000
    p(engine(10**9, 1))                     # before every_s: nothing
    assert out.getvalue() == ""
    now[0] = 4_000_000_000
    p(engine(8 * 10**9, 5))                 # 8 GB in 4 s
    assert out.getvalue() == "\r  4 s, 26 s left, rank 0: 5 requests, 2.00 GB/s   "
    now[0] = 6_000_000_000
    p(engine(9 * 10**9, 6))                 # 1 GB more in the last 2 s
    assert out.getvalue().endswith("\r  6 s, 24 s left, rank 0: 6 requests, 0.50 GB/s   ")
    p.done()
    assert out.getvalue().endswith("\n")


def test_without_a_duration_it_says_no_time_left() -> None:
    out = Tty()
    p = Progress(True, 0, 0.0, stream=out, clock=lambda: 3_000_000_000)
    p(engine(0, 2))
    assert out.getvalue() == "\r  3 s, rank 0: 2 requests, 0.00 GB/s   "


def test_it_is_silent_off_a_terminal_and_on_other_ranks() -> None:
    for stream, enabled in ((Tty(tty=False), True), (Tty(), False)):
        p = Progress(enabled, 0, 10.0, stream=stream, clock=lambda: 9_000_000_000)
        p(engine(10**9, 1))
        p.done()
        assert stream.getvalue() == ""
