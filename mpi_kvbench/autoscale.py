"""Autoscaling: which load to measure next, and what the measured points say. No MPI and
no runs here: ``campaign`` measures each load this asks for and hands back the summary.

``qos``: the largest load at which ``storage_health`` passes. The load doubles from
``start`` while it passes (halves while it fails, when even ``start`` fails), which
brackets the answer between a passing and a failing load; bisection then narrows the
bracket to ``resolution``. The answer is the largest passing load, and the bracket
[largest pass, smallest fail] is its confidence.

``capacity``: the load at which storage throughput stops growing. The load doubles while
a doubling raises throughput by more than ``margin``; then the knee is the smallest load
whose throughput is within ``margin`` of the best seen (the plateau), bracketed between
the largest load below it that is not and itself, and bisected to ``resolution``.

Both assume the measured figure is monotone in the load, as it is for a device that
queues; a noisy point can only mislead bisection within the bracket it was measured in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mpi_kvbench.errors import ConfigError

MODES = ("qos", "capacity")


@dataclass
class Point:
    load: float
    verdict: str                 # storage_health verdict
    throughput: float            # storage_throughput_tokens_per_s (capacity mode's figure)
    figures: dict[str, Any]      # the curve's other figures


@dataclass
class Search:
    mode: str
    start: float
    limit: float
    resolution: float
    margin: float = 0.05
    integer: bool = False
    points: list[Point] = field(default_factory=list)
    phase: str = "climb"         # climb, then bisect, then done
    why: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--mode {self.mode}: use qos or capacity")
        if not 0 < self.start <= self.limit:
            raise ConfigError(f"--start {self.start:g}, --limit {self.limit:g}: need 0 < start <= limit")
        if self.resolution <= 0 or self.margin <= 0:
            raise ConfigError("--resolution and --margin: give values above 0")
        if self.integer and (self.start != int(self.start) or self.limit != int(self.limit)):
            raise ConfigError("--start and --limit: this key takes whole numbers")

    # -- what the points say ------------------------------------------------------------
    def passes(self, p: Point) -> bool:
        if self.mode == "qos":
            return p.verdict == "PASS"
        best = max(q.throughput for q in self.points)
        return p.throughput >= best / (1 + self.margin)   # at the plateau

    def bracket(self) -> tuple[float | None, float | None]:
        """qos: (largest pass, smallest fail above it); capacity: (largest load below the
        plateau, smallest load on it)."""
        pts = sorted(self.points, key=lambda p: p.load)
        if self.mode == "qos":
            ok = [p.load for p in pts if self.passes(p)]
            lo = max(ok) if ok else None
            fails = [p.load for p in pts if not self.passes(p) and (lo is None or p.load > lo)]
            return lo, (min(fails) if fails else None)
        on = [p.load for p in pts if self.passes(p)]
        hi = min(on) if on else None
        below = [p.load for p in pts if hi is not None and p.load < hi]
        return (max(below) if below else None), hi

    def found(self) -> float | None:
        lo, hi = self.bracket()
        return lo if self.mode == "qos" else hi

    # -- what to measure next ---------------------------------------------------------------
    def _round(self, x: float) -> float:
        return float(math.floor(x)) if self.integer else x

    def next_load(self) -> float | None:
        """The next load to measure, or None when the search is done (``why`` says why)."""
        if self.phase == "climb":
            nxt = self._climb()
            if nxt is not None:
                return nxt
            self.phase = "bisect"
        if self.phase == "bisect":
            nxt = self._bisect()
            if nxt is not None:
                return nxt
            self.phase = "done"
        return None

    def _climb(self) -> float | None:
        if not self.points:
            return self.start
        last = self.points[-1]
        if self.mode == "qos":
            lo, hi = self.bracket()
            if lo is not None and hi is not None:
                return None                             # bracketed: a pass below a fail
            if lo is not None:                          # everything so far passes: go up
                if lo >= self.limit:
                    self.why = "passes at the limit"
                    return None
                return min(self.limit, self._round(2 * lo))
            down = self._round(last.load / 2)          # even the start fails: go down
            if down <= 0 or (self.integer and down == last.load) or down < self.start / 1024:
                self.why = "fails at the smallest load tried"
                return None
            return down
        if len(self.points) >= 2:
            prev = self.points[-2]
            if last.throughput < (1 + self.margin) * prev.throughput:
                return None                             # the doubling grew too little
        if last.load >= self.limit:
            self.why = "still growing at the limit"
            return None
        return min(self.limit, self._round(2 * last.load))

    def _bisect(self) -> float | None:
        if self.why:
            return None
        lo, hi = self.bracket()
        if lo is None or hi is None:
            self.why = "no bracket"
            return None
        if hi - lo <= self.resolution:
            self.why = f"bracket [{lo:g}, {hi:g}] within the resolution {self.resolution:g}"
            return None
        mid = self._round((lo + hi) / 2)
        if mid <= lo or mid >= hi:
            self.why = f"bracket [{lo:g}, {hi:g}] has no load between"
            return None
        return mid

    def record(self, point: Point) -> None:
        self.points.append(point)

    def result(self) -> dict[str, Any]:
        lo, hi = self.bracket()
        return {"mode": self.mode, "found": self.found(), "bracket": [lo, hi], "why": self.why,
                "start": self.start, "limit": self.limit, "resolution": self.resolution,
                "margin": self.margin,
                "curve": [{"load": p.load, "verdict": p.verdict, "throughput": p.throughput,
                           "passes": self.passes(p), **p.figures}
                          for p in sorted(self.points, key=lambda p: p.load)],
                "order": [p.load for p in self.points]}
