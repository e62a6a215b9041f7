"""The live output: what the progress line prints, how often, in place on a terminal and
as new lines elsewhere, and nothing when it is off."""

from __future__ import annotations

import io
from types import SimpleNamespace

from mpi_kvbench.progress import Console, Progress, bar


class Tty(io.StringIO):
    def __init__(self, tty: bool = True) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def engine(moved: int, completed: int) -> SimpleNamespace:
    return SimpleNamespace(completed=completed, recorder=SimpleNamespace(bytes_moved=lambda: moved))


def test_it_prints_elapsed_left_requests_and_the_recent_rate_in_place_on_a_terminal() -> None:
    now = [0]
    out = Tty()
    p = Progress(Console(True, stream=out, clock=lambda: now[0]), 0, 30.0, clock=lambda: now[0])
    now[0] = 1_000_000_000
    p(engine(10**9, 1))                     # before every 2 s: nothing
    assert out.getvalue() == ""
    now[0] = 4_000_000_000
    p(engine(8 * 10**9, 5))                 # 8 GB in 4 s
    assert out.getvalue() == "\r> measured: 4 s, 26 s left, rank 0: 5 requests, 2.00 GB/s   "
    now[0] = 6_000_000_000
    p(engine(9 * 10**9, 6))                 # 1 GB more in the last 2 s
    assert out.getvalue().endswith("\r> measured: 6 s, 24 s left, rank 0: 6 requests, 0.50 GB/s   ")
    p.done()
    assert out.getvalue().endswith("\n")


def test_without_a_duration_it_says_no_time_left() -> None:
    out = Tty()
    p = Progress(Console(True, stream=out), 0, 0.0, clock=lambda: 3_000_000_000)
    p(engine(0, 2))
    assert out.getvalue() == "\r> measured: 3 s, rank 0: 2 requests, 0.00 GB/s   "


def test_off_a_terminal_it_writes_a_new_line_every_5_s() -> None:
    now = [0]
    out = Tty(tty=False)
    console = Console(True, stream=out, clock=lambda: now[0])
    p = Progress(console, 0, 20.0, clock=lambda: now[0])
    for t in range(1, 21):                  # every second for 20 s: lines at 5, 10, 15, 20
        now[0] = t * 1_000_000_000
        p(engine(t * 10**9, t))
    p.done()
    lines = out.getvalue().splitlines()
    assert lines == [f"> measured: {t} s, {20 - t} s left, rank 0: {t} requests, 1.00 GB/s"
                     for t in (5, 10, 15, 20)]
    assert "\r" not in out.getvalue()


def test_a_line_ends_an_open_bar_first() -> None:
    now = [0]
    out = Tty()
    console = Console(True, stream=out, clock=lambda: now[0])
    report = console.bar("trace")
    report(0, 100)                          # starts the clock
    now[0] = 3_000_000_000
    report(45, 100)
    console.line("measured phase: started")
    assert out.getvalue() == (f"\r> trace: 45% {bar(0.45)} (45 of 100)   \n"
                              "> measured phase: started\n")
    assert bar(0.45) == "[#########...........]"


def test_it_is_silent_when_off() -> None:
    for tty in (True, False):
        out = Tty(tty)
        console = Console(False, stream=out, clock=lambda: 9_000_000_000)
        p = Progress(console, 0, 10.0, clock=lambda: 9_000_000_000)
        p(engine(10**9, 1))
        console.line("x")
        console.bar("y")(1, 2)
        p.done()
        assert out.getvalue() == ""
