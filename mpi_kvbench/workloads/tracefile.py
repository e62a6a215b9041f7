"""What every trace-file workload shares: parameters, content identities, arrival timing.

A reader only turns its format into rows (``TraceRow``: when, who, what prompt, how many
tokens out); ``TraceWorkload`` sorts them by time, re-times them (``speedup``, or Poisson
arrivals at ``request_rate``), repeats them ``replay_cycles`` times and gives each user a
QoS class drawn from the seed. Traces are read on rank 0 only (see distribute.py).

Replay cycles keep the trace's content identities: a second cycle asks for the same
prefixes again, as the trace would if it went on, with new user numbers and arrival
times shifted by the trace's span plus its mean gap.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpi_kvbench.errors import ConfigError
from mpi_kvbench.workloads.base import QOS_CLASSES, Request, Workload

MASK64 = (1 << 64) - 1


def mix64(*values: int) -> int:
    """A 64-bit identity of a few integers (splitmix64 steps): fast, well spread."""
    x = 0x243F6A8885A308D3
    for v in values:
        x = (x ^ (v & MASK64)) * 0xBF58476D1CE4E5B9 & MASK64
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & MASK64
        x ^= x >> 29
    return x


def text_id(text: str) -> int:
    """A 64-bit content identity of a text: equal texts, equal tokens."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def draw(seed: int, user: int) -> float:
    """A uniform number in [0, 1) fixed by seed and user (a QoS class per user)."""
    return mix64(seed, user) / 2.0**64


@dataclass(frozen=True, slots=True)
class TraceRow:
    time_s: float                           # the trace's own clock
    user: int
    session: int
    segments: tuple[tuple[int, int], ...]
    output_tokens: int
    output_id: int


@dataclasses.dataclass(frozen=True)
class TraceParams:
    trace: str = ""
    speedup: float = 1.0
    replay_cycles: int = 1
    request_rate: float = 0.0
    max_requests: int = 0
    qos_mix: dict = dataclasses.field(
        default_factory=lambda: {"interactive": 0.15, "responsive": 0.35, "batch": 0.5})

    FORMAT = "trace"   # what the error messages call the file

    def check(self) -> None:
        if not self.trace:
            raise ConfigError(f"workload.trace: give the path of a {self.FORMAT} file (--trace PATH)")
        if not os.path.isfile(self.trace):
            raise ConfigError(f"workload.trace: no such file {self.trace!r}; give the path of a"
                              f" {self.FORMAT} file")
        if not os.access(self.trace, os.R_OK):
            raise ConfigError(f"workload.trace: {self.trace!r} is not readable; check its permissions")
        if self.speedup <= 0:
            raise ConfigError(f"workload.speedup={self.speedup}: give a factor > 0 (2 = twice as fast)")
        if self.replay_cycles < 1:
            raise ConfigError(f"workload.replay_cycles={self.replay_cycles}: give 1 or more")
        if self.request_rate < 0:
            raise ConfigError(f"workload.request_rate={self.request_rate}: give a rate >= 0"
                              " (0 = the trace's own timestamps)")
        if self.max_requests < 0:
            raise ConfigError(f"workload.max_requests={self.max_requests}: give 0 (all) or more")
        for name, w in self.qos_mix.items():
            if name not in QOS_CLASSES:
                raise ConfigError(f"workload.qos_mix.{name}: unknown; valid: {', '.join(QOS_CLASSES)}")
            if isinstance(w, bool) or not isinstance(w, int | float) or w < 0:
                raise ConfigError(f"workload.qos_mix.{name}={w!r}: give a weight >= 0")
        if not any(w > 0 for w in self.qos_mix.values()):
            raise ConfigError("workload.qos_mix: give at least one positive weight")


class TraceWorkload(Workload):
    """Base of the trace readers: subclasses implement ``rows()``."""

    Params = TraceParams

    def __init__(self, params: Any, seed: int) -> None:
        super().__init__(params, seed)
        self.skipped = 0          # malformed or unusable records
        self.skipped_reason = ""
        self._info: dict[str, Any] = {}

    def rows(self) -> Iterator[TraceRow]:
        raise NotImplementedError

    def csv_records(self, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
        """Numbered rows of a CSV trace, after checking that it has ``columns``."""
        with open(self.params.trace, newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.DictReader(fh)
            self.columns = reader.fieldnames or []
            missing = [c for c in columns if c not in self.columns]
            if missing:
                raise ConfigError(
                    f"workload.trace: {self.params.trace} lacks the column {missing[0]!r}; a"
                    f" {self.params.FORMAT} file has {', '.join(columns)}")
            yield from enumerate(reader)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.skipped_reason = self.skipped_reason or reason

    def _load(self) -> list[TraceRow]:
        rows = list(self.rows())
        rows.sort(key=lambda r: r.time_s)   # stable: equal times keep file order
        if self.params.max_requests:
            rows = rows[: self.params.max_requests]
        return rows

    def requests(self, replica: int = 0, replicas: int = 1) -> Iterator[Request]:
        """Reads the whole file now (so a bad one fails at set-up), yields lazily."""
        p = self.params
        rows = self._load()
        if not rows:
            why = f": {self.skipped_reason}" if self.skipped_reason else ""
            raise ConfigError(f"workload.trace: {p.trace} holds no usable request"
                              f" ({self.skipped} skipped{why}); check its format")
        t0, t1 = rows[0].time_s, rows[-1].time_s
        self._info.update(requests=len(rows) * p.replay_cycles, skipped=self.skipped,
                          users=(max(r.user for r in rows) + 1) * p.replay_cycles,
                          span_s=round((t1 - t0) / p.speedup, 3))
        return self._timed(rows)

    def _timed(self, rows: list[TraceRow]) -> Iterator[Request]:
        p = self.params
        t0, t1 = rows[0].time_s, rows[-1].time_s
        period = (t1 - t0) + ((t1 - t0) / (len(rows) - 1) if len(rows) > 1 else 1.0)
        users = max(r.user for r in rows) + 1
        names = [n for n, w in p.qos_mix.items() if w > 0]
        bounds = list(np.cumsum([p.qos_mix[n] for n in names], dtype=float) / sum(
            p.qos_mix[n] for n in names))
        poisson = np.random.default_rng([self.seed, 7]) if p.request_rate > 0 else None
        clock = 0.0
        qos: dict[int, str] = {}
        for cycle in range(p.replay_cycles):
            for i, row in enumerate(rows):
                user = row.user + cycle * users
                if user not in qos:   # a class per user, from the seed
                    qos[user] = names[min(bisect.bisect_right(bounds, draw(self.seed, user)),
                                          len(names) - 1)]
                if poisson is not None:
                    clock += float(poisson.exponential(1.0 / p.request_rate))
                    arrival = clock
                else:
                    arrival = (row.time_s - t0 + cycle * period) / p.speedup
                yield Request(index=cycle * len(rows) + i, user=user,
                              session=row.session + cycle * users, arrival_s=arrival, think_s=None,
                              qos=qos[user], segments=row.segments,
                              output_tokens=row.output_tokens, output_id=row.output_id)

    def info(self) -> dict[str, Any]:
        p = self.params
        return {"kind": self.FORMAT_KIND, "path": os.path.abspath(p.trace), "speedup": p.speedup,
                "replay_cycles": p.replay_cycles, "request_rate": p.request_rate,
                "skipped": self.skipped, **self._info}

    FORMAT_KIND = "trace"
