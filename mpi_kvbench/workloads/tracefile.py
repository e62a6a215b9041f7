"""What the trace-file workloads share: parameters, content identities, two-pass reading,
re-timing, replay cycles and QoS classes.

A format module only turns its records into ``Record``s (``parse``) and a record into a
prompt (``build``); this module does the rest. Reading takes two passes over the file:

1. ``_scan`` checks the format (a wrong file fails at set-up, before anything is
   measured), counts what it skips, and finds the arrival order (a stable sort by time;
   it holds 32 bytes per row while it does so, then only what pass 2 needs).
2. ``_rows`` reads the file again, streaming, in arrival order (sequentially when the
   file is already in time order, by seeking to each row's offset when it is not), and
   yields one cycle of ``TraceRow``s. Memory stays bounded by what the format needs to
   remember (a BurstGPT session's context until its last turn).

Parameters (section ``workload``): ``trace`` (path, required), ``speedup`` (arrival =
(t - t0) / speedup), ``replay_cycles``, ``request_rate`` (> 0: Poisson arrivals at that
rate in trace order instead of the trace's clock; ``speedup`` then has no effect),
``max_requests`` (the first N requests in arrival order; each cycle replays those; 0 =
all), ``qos_mix`` (each user's class is drawn from it with the run's seed) and
``routing`` (which TP group serves which request: ``ROUTINGS``, see routing.py).

Users: a user's number (and session's) is that of its first record in the file,
counting skipped records, so it points back to the trace. Requests are numbered in
arrival order.

Replay cycles: cycle k starts k x (trace span + mean gap) after the first, with new
user, session and index numbers (k x records in the file added to a user's), and with
every content identity (prompt blocks, texts, outputs) mapped to a new one: each cycle
is a fresh copy of the trace with the same sharing inside it, so its hit ratio is the
trace's own and is not inflated by the cache still holding the previous cycle.
Cross-cycle sharing of truly common content (a system prompt all cycles would use) is
lost; that is the price of not inventing free hits.
"""

from __future__ import annotations

import abc
import bisect
import csv
import dataclasses
import hashlib
import math
import os
import random
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, ClassVar, NamedTuple

import numpy as np

from mpi_kvbench.errors import ConfigError
from mpi_kvbench.layout import MASK64
from mpi_kvbench.workloads.base import Request, Workload
from mpi_kvbench.workloads.qos import default_mix, parse_mix

#: values of ``workload.routing`` (routing.py implements them); "user" is user % groups
ROUTINGS = ("user", "round_robin", "prefix")

# first argument of ``mix64`` for identities made from numbers, so kinds never collide
PROMPT, OUTPUT = 1, 2


def mix64(*values: int) -> int:
    """A 64-bit identity of a few integers (splitmix64 steps): cheap and well spread."""
    x = 0x243F6A8885A308D3
    for v in values:
        x = ((x ^ (v & MASK64)) * 0xBF58476D1CE4E5B9) & MASK64
        x = ((x ^ (x >> 31)) * 0x94D049BB133111EB) & MASK64
        x ^= x >> 29
    return x


def text_id(text: str) -> int:
    """A 64-bit identity of a text: equal texts are equal tokens, hence shared chunks."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class Skip(Exception):
    """A record that cannot be used; ``args[0]`` says why (counted per reason)."""


def seconds(value: Any, what: str) -> float:
    """A finite time from a JSON number or a CSV field."""
    try:
        if isinstance(value, bool):
            raise ValueError
        t = float(value)
    except (TypeError, ValueError):
        raise Skip(f"unreadable {what}") from None
    if not math.isfinite(t):
        raise Skip(f"unreadable {what}")
    return t


def tokens(value: Any, what: str) -> int:
    """A token count >= 1 ("12", "12.0", 12); zero means a failed request: skipped."""
    try:
        if isinstance(value, bool):
            raise ValueError
        n = float(value) if isinstance(value, str) else value
        if isinstance(n, float):
            if not n.is_integer():
                raise ValueError
            n = int(n)
        if not isinstance(n, int):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise Skip(f"unreadable {what}") from None
    if n < 1:
        raise Skip(f"zero {what}")
    return n


def open_trace(path: str, binary: bool = False) -> IO[Any]:
    """The trace file, or a one-line error naming it."""
    try:
        if binary:
            return open(path, "rb")
        return open(path, encoding="utf-8", errors="replace")
    except OSError as err:
        raise ConfigError(f"workload.trace: cannot open {path!r} ({err.strerror}); check the path"
                          " and its permissions") from None


@dataclasses.dataclass(frozen=True)
class TraceParams:
    trace: str = ""
    speedup: float = 1.0
    replay_cycles: int = 1
    request_rate: float = 0.0
    max_requests: int = 0
    qos_mix: dict = dataclasses.field(default_factory=default_mix)
    routing: str = "user"
    max_request_tokens: int = 2_000_000   # prompt + output of one record; more is a mistake

    FORMAT = "trace"     # what the messages call the file (a class attribute, not a field)

    def check(self) -> None:
        if not self.trace:
            raise ConfigError(f"workload.trace: give the path of a {self.FORMAT} file (--trace PATH)")
        if not os.path.isfile(self.trace):
            raise ConfigError(f"workload.trace: no such file {self.trace!r}; give the path of a"
                              f" {self.FORMAT} file")
        if not os.access(self.trace, os.R_OK):
            raise ConfigError(f"workload.trace: {self.trace!r} is not readable; check its permissions")
        if not (self.speedup > 0 and math.isfinite(self.speedup)):
            raise ConfigError(f"workload.speedup={self.speedup}: give a factor > 0"
                              " (2 = replay twice as fast)")
        if self.replay_cycles < 1:
            raise ConfigError(f"workload.replay_cycles={self.replay_cycles}: give 1 or more")
        if not (self.request_rate >= 0 and math.isfinite(self.request_rate)):
            raise ConfigError(f"workload.request_rate={self.request_rate}: give a rate >= 0"
                              " (0 = the trace's own timestamps)")
        if self.max_requests < 0:
            raise ConfigError(f"workload.max_requests={self.max_requests}: give 0 (all) or more")
        if self.max_request_tokens < 1:
            raise ConfigError(f"workload.max_request_tokens={self.max_request_tokens}: give a"
                              " positive token count")
        parse_mix(self.qos_mix)
        if self.routing not in ROUTINGS:
            raise ConfigError(f"workload.routing={self.routing!r}: use one of {', '.join(ROUTINGS)}"
                              " (user: user % groups; prefix: the group holding the longest prefix)")


class Record(NamedTuple):
    """One usable record of a line-based trace, as ``parse`` reads it."""

    time_s: float            # the trace's own clock, in seconds
    session: str | None      # conversation it continues (BurstGPT v2); None: its own user
    prompt: Any              # the format's description of the prompt (tokens, hash ids)
    output_tokens: int


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One request of one cycle, before re-timing, QoS and cycle renumbering."""

    time_s: float
    user: int                # the file's number of the user's first record (< Scan.stride)
    segments: tuple[tuple[int, int], ...]
    output_tokens: int
    output_id: int


@dataclass(frozen=True)
class Scan:
    """What pass 1 found: the trace's size and clock, after ``max_requests``."""

    requests: int
    users: int
    stride: int = 0          # user numbers of one cycle are below it (records in the file)
    t_first: float = 0.0
    t_last: float = 0.0


class TraceWorkload(Workload):
    """Base of the trace readers: re-timing, replay cycles, QoS, info; formats add passes."""

    Params = TraceParams
    KIND: ClassVar[str] = "trace"
    CLOCK: ClassVar[bool] = True       # False: the format has no timestamps (ShareGPT)

    def __init__(self, params: Any, seed: int) -> None:
        super().__init__(params, seed)
        self._skips: Counter[str] = Counter()
        self._facts: dict[str, Any] = {}      # format-specific facts for info()
        self._scan_result: Scan | None = None

    @abc.abstractmethod
    def _scan(self) -> Scan:
        """Pass 1: checks the format, counts skips, prepares pass 2."""

    @abc.abstractmethod
    def _rows(self) -> Iterator[TraceRow]:
        """Pass 2: one cycle, in arrival order, at most ``max_requests`` rows."""

    def skip(self, reason: str) -> None:
        self._skips[reason] += 1

    def scanned(self) -> Scan:
        if self._scan_result is None:
            self._scan_result = self._scan()
        return self._scan_result

    def requests(self, replica: int = 0, replicas: int = 1) -> Iterator[Request]:
        """The whole trace (rank 0 reads it; the arguments are ignored). Pass 1 runs now,
        so a bad file fails at set-up; the requests are then made lazily."""
        scan = self.scanned()
        if scan.requests == 0:
            why = "; ".join(f"{n} x {r}" for r, n in self._skips.most_common(3)) or "it is empty"
            raise ConfigError(f"workload.trace: {self.params.trace} holds no usable request ({why});"
                              f" give a {self.params.FORMAT} file")
        return self._replay(scan)

    def _replay(self, scan: Scan) -> Iterator[Request]:
        p = self.params
        names, bounds = parse_mix(p.qos_mix)
        span = scan.t_last - scan.t_first
        gap = span / (scan.requests - 1) if scan.requests > 1 and span > 0 else 1.0
        period = span + gap
        poisson = random.Random(mix64(self.seed, 0x50015)) if p.request_rate > 0 else None
        clock = 0.0
        for cycle in range(p.replay_cycles):
            for pos, row in enumerate(self._rows()):
                user = row.user + cycle * scan.stride
                if poisson is not None:
                    clock += poisson.expovariate(p.request_rate)
                    arrival = clock
                else:
                    arrival = (row.time_s - scan.t_first + cycle * period) / p.speedup
                segments, output_id = row.segments, row.output_id
                if cycle:   # a fresh copy of the trace's content (module docstring)
                    segments = tuple((mix64(ident, cycle), n) for ident, n in segments)
                    output_id = mix64(output_id, cycle)
                draw = mix64(self.seed, user) / 2.0**64
                qos = names[min(bisect.bisect_right(bounds, draw), len(names) - 1)]
                yield Request(index=cycle * scan.requests + pos, user=user, session=user,
                              arrival_s=arrival, think_s=None, qos=qos, segments=segments,
                              output_tokens=row.output_tokens, output_id=output_id)

    def info(self) -> dict[str, Any]:
        p = self.params
        scan = self.scanned()
        out: dict[str, Any] = {
            "kind": self.KIND, "path": os.path.abspath(p.trace),
            "arrival": "poisson" if p.request_rate > 0 else "trace timestamps",
            "speedup": p.speedup, "request_rate": p.request_rate,
            "replay_cycles": p.replay_cycles, "max_requests": p.max_requests, "routing": p.routing,
            "requests": scan.requests * p.replay_cycles, "users": scan.users * p.replay_cycles,
            "skipped": sum(self._skips.values()), "skip_reasons": dict(self._skips),
        }
        if self.CLOCK:
            out["span_s"] = scan.t_last - scan.t_first    # one cycle, on the trace's clock
        return out | self._facts


class LineTrace(TraceWorkload):
    """A trace with one record per line (CSV, JSONL): pass 1 finds the arrival order from
    (time, offset) pairs; pass 2 streams the rows in that order."""

    def __init__(self, params: Any, seed: int) -> None:
        super().__init__(params, seed)
        self._offsets: np.ndarray | None = None   # rows to seek to; None: the file's order
        self._ordinals: np.ndarray | None = None  # their numbers in the file
        self._turns: dict[str, int] = {}           # session -> its requests in the trace

    @abc.abstractmethod
    def _records(self, fh: IO[bytes]) -> Iterator[tuple[int, Any]]:
        """(byte offset, raw record) of every non-blank record."""

    @abc.abstractmethod
    def _read_at(self, fh: IO[bytes], offset: int) -> Any:
        """The raw record at ``offset``."""

    @abc.abstractmethod
    def parse(self, raw: Any) -> Record:
        """A usable record, or ``Skip``."""

    @abc.abstractmethod
    def build(self, rec: Record, pos: int,
              context: tuple[tuple[int, int], ...]) -> tuple[tuple[tuple[int, int], ...], int, int]:
        """(prompt segments, output tokens, output identity) of the ``pos``-th request;
        ``context`` is the session's prompt and answer so far (empty for a new user)."""

    def _scan(self) -> Scan:
        times, offsets, ordinals, keys = array("d"), array("q"), array("q"), array("q")
        sessions: dict[str, int] = {}
        records = 0
        report = getattr(self, "on_progress", None)   # (bytes read, file size), set by the run
        size = os.path.getsize(self.params.trace) if report else 0
        with open_trace(self.params.trace, binary=True) as fh:
            for records, (off, raw) in enumerate(self._records(fh), 1):
                if report and records % 4096 == 0:
                    report(off, size)
                try:
                    rec = self.parse(raw)
                except Skip as why:
                    self.skip(str(why))
                    continue
                self._bounded(rec, records)
                times.append(rec.time_s)
                offsets.append(off)
                ordinals.append(records - 1)
                keys.append(-1 if rec.session is None
                            else sessions.setdefault(rec.session, len(sessions)))
        if not times:
            return Scan(0, 0)
        t = np.frombuffer(times, dtype=np.float64)
        order = np.argsort(t, kind="stable")
        if self.params.max_requests:
            order = order[: self.params.max_requests]
        in_order = bool(np.array_equal(order, np.arange(len(order))))
        if not in_order:
            self._offsets = np.frombuffer(offsets, dtype=np.int64)[order]
            self._ordinals = np.frombuffer(ordinals, dtype=np.int64)[order]
        k = np.frombuffer(keys, dtype=np.int64)[order]
        counts = np.bincount(k[k >= 0], minlength=len(sessions))
        names = list(sessions)
        self._turns = {names[i]: int(c) for i, c in enumerate(counts) if c}
        self._facts["in_time_order"] = in_order
        return Scan(requests=len(order), users=int((k < 0).sum()) + len(self._turns),
                    stride=records, t_first=float(t[order[0]]), t_last=float(t[order[-1]]))

    def _bounded(self, rec: Record, number: int) -> None:
        """Refuses, at set-up, a record no run could serve in its window (a 2e9-token
        prompt would keep the chunk-key code busy for minutes)."""
        prompt = rec.prompt[0] if isinstance(rec.prompt, tuple) else rec.prompt
        size = (prompt if isinstance(prompt, int) else 0) + rec.output_tokens
        limit = self.params.max_request_tokens
        if size > limit:
            raise ConfigError(f"workload.trace: record {number} of {self.params.trace} asks for"
                              f" {size:,} tokens, over workload.max_request_tokens={limit:,}; drop"
                              " the record or raise the limit")

    def _ordered(self, fh: IO[bytes], n: int) -> Iterator[tuple[int, Record]]:
        """(number in the file, record) of the first ``n`` usable records by time."""
        if self._offsets is None or self._ordinals is None:
            seen = 0
            for ordinal, (_, raw) in enumerate(self._records(fh)):
                if seen == n:
                    return
                try:
                    rec = self.parse(raw)
                except Skip:
                    continue
                seen += 1
                yield ordinal, rec
            return
        for off, ordinal in zip(self._offsets, self._ordinals, strict=True):
            try:
                yield int(ordinal), self.parse(self._read_at(fh, int(off)))
            except Skip:
                raise ConfigError(f"workload.trace: {self.params.trace} changed while it was read;"
                                  " replay a file nothing writes to") from None

    def _rows(self) -> Iterator[TraceRow]:
        left = dict(self._turns)
        sessions: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = {}   # -> (user, context)
        with open_trace(self.params.trace, binary=True) as fh:
            for pos, (ordinal, rec) in enumerate(self._ordered(fh, self.scanned().requests)):
                state = sessions.get(rec.session) if rec.session is not None else None
                user, context = state or (ordinal, ())
                segments, out, out_id = self.build(rec, pos, context)
                yield TraceRow(rec.time_s, user, segments, out, out_id)
                if rec.session is not None:   # remember the context until the last turn
                    left[rec.session] -= 1
                    if left[rec.session] > 0:
                        sessions[rec.session] = (user, (*segments, (out_id, out)))
                    else:
                        sessions.pop(rec.session, None)
                        del left[rec.session]


class _Lines:
    """Decoded lines of a binary file that know the byte offset of the next one."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.pos = fh.tell()

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.fh.readline()
        if not line:
            raise StopIteration
        self.pos += len(line)
        return line.decode("utf-8", "replace")


class CsvTrace(LineTrace):
    """A CSV trace with a header naming at least ``COLUMNS``."""

    COLUMNS: ClassVar[tuple[str, ...]] = ()
    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Any, seed: int) -> None:
        super().__init__(params, seed)
        self.columns: list[str] = []
        self._index: dict[str, int] = {}

    def _records(self, fh: IO[bytes]) -> Iterator[tuple[int, Any]]:
        lines = _Lines(fh)
        reader = csv.reader(lines)
        header = next(reader, None) or []
        self.columns = [h.strip().lstrip("\ufeff") for h in header]
        missing = [c for c in self.COLUMNS if c not in self.columns]
        if missing:
            raise ConfigError(
                f"workload.trace: {self.params.trace} has no column {missing[0]!r}; a"
                f" {self.params.FORMAT} file starts with the header {','.join(self.COLUMNS)}")
        self._index = {c: self.columns.index(c) for c in (*self.COLUMNS, *self.OPTIONAL)
                       if c in self.columns}
        while True:
            off = lines.pos
            try:
                row = next(reader, None)
            except csv.Error:   # binary garbage: a NUL, a bare CR inside a field
                self.skip("a row that is not CSV text")
                continue
            if row is None:
                return
            if any(cell.strip() for cell in row):
                yield off, row

    def _read_at(self, fh: IO[bytes], offset: int) -> Any:
        fh.seek(offset)
        return next(csv.reader(_Lines(fh)))

    def fields(self, row: list[str]) -> dict[str, str]:
        """The columns this format reads, by name."""
        try:
            return {c: row[i] for c, i in self._index.items()}
        except IndexError:
            raise Skip("a row with missing fields") from None


class JsonlTrace(LineTrace):
    """A trace of one JSON object per line."""

    def _records(self, fh: IO[bytes]) -> Iterator[tuple[int, Any]]:
        off = 0
        for line in fh:
            if line.strip():
                yield off, line
            off += len(line)

    def _read_at(self, fh: IO[bytes], offset: int) -> Any:
        fh.seek(offset)
        return fh.readline()
