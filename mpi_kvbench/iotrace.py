"""The I/O trace log: one CSV row per operation of the measured phase, per rank.

Why: users of the MLPerf KV-cache reference replay its ``--io-trace-log`` with external
tools (fio, sai3-bench, warp), so the first six columns are the reference's, in its order
and spelling: ``Timestamp`` (Unix epoch seconds, 6 decimals), ``Operation`` (Write/Read),
``Object_Size_Bytes`` (per rank, after TP), ``Tier`` (Tier-0 GPU, Tier-1 CPU, Tier-2
storage), ``Key``, ``Phase`` (Prefill, Decode, Evict). Ours follow (``OUR_COLUMNS``):
rank, TP group, request, QoS class, slot and byte offset in the tier, latency, and the
engine's own phase name (which Evict and handoff rows need to be told apart).

The log must not change what it records: the engine's thread only appends a tuple of
integers per operation; every ``BATCH`` rows go to a writer thread that formats them
(sorted by start time) and writes them, through a streaming zstd compressor (level 3)
when the name ends in ``.zst``. Beside each log a small JSON file (``<log>.json``) holds
what replay needs: the run's resolved configuration, the rank, and per-tier counts.
"""

from __future__ import annotations

import io
import json
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from mpi_kvbench.errors import ConfigError

REFERENCE_COLUMNS = ("Timestamp", "Operation", "Object_Size_Bytes", "Tier", "Key", "Phase")
OUR_COLUMNS = ("Rank", "TP_Group", "Request_Index", "QoS_Class", "Slot", "Offset_Bytes",
               "Latency_ns", "Stage")
COLUMNS = REFERENCE_COLUMNS + OUR_COLUMNS
FORMAT = "mpi_kvbench-io-trace/1"

OPERATIONS = ("Read", "Write")                      # row op code 0, 1
TIER_LABELS = {"hbm": "Tier-0", "dram": "Tier-1", "storage": "Tier-2"}
LEVELS = {v: k for k, v in TIER_LABELS.items()}
#: the engine's phase names (``results.names.PHASES``), in code order, and the reference's word
STAGES = ("prefill", "decode", "demote", "handoff", "precondition")
REFERENCE_PHASE = {"prefill": "Prefill", "decode": "Decode", "demote": "Evict",
                   "handoff": "Decode", "precondition": "Prefill"}
QOS = ("interactive", "responsive", "batch")        # workloads.qos.QOS_CLASSES, by code
BATCH = 4096          # rows handed to the writer thread at once
ZSTD_LEVEL = 3


def rank_path(template: str, rank: int, expand=lambda s: s) -> str:
    """The log of ``rank``: ``{rank}`` (and the other path fields) filled in, or, when the
    template has no ``{rank}``, ``-rank<r>`` put before its extensions
    (``trace.csv.zst`` -> ``trace-rank3.csv.zst``), so ranks never share a file."""
    if "{rank}" in template:
        return expand(template)
    path = expand(template)
    head, name = os.path.split(path)
    stem, dot, ext = name.partition(".")
    return os.path.join(head, f"{stem}-rank{rank}{dot}{ext}")


def meta_path(log: str) -> str:
    return log + ".json"


@dataclass(frozen=True)
class Row:
    """One parsed row, as replay and the fio export use it."""

    t_ns: int            # Unix time of the operation's start, ns
    write: bool
    size: int
    level: str           # hbm, dram or storage
    key: int
    stage: str           # the engine's phase name
    slot: int
    offset: int
    latency_ns: int
    request: int


class IoTraceLog:
    """One rank's trace log: opened at set-up (so a bad path fails before anything runs),
    recording only between ``start`` and ``close``.

    ``levels`` names the engine's tiers by index; ``meta`` is stored in the JSON beside
    the log (the resolved config, rank, TP size, ...)."""

    def __init__(self, path: str, rank: int, group: int, object_bytes: int,
                 meta: dict[str, Any]) -> None:
        self.path = path
        self.rank, self.group, self.object_bytes = rank, group, object_bytes
        self.meta = dict(meta)
        self.recording = False
        self._rows: list[tuple] = []
        self._counts: dict[str, list[int]] = {}       # "level.op.stage" -> [rows, bytes]
        self._max_slot: dict[str, int] = {}
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._wall0 = self._perf0 = 0
        self._closed = False
        self._raw, self._out = self._open(path)
        self._out.write(",".join(COLUMNS) + "\n")

    @staticmethod
    def _open(path: str):
        zst = path.endswith(".zst")
        if zst:
            try:
                import zstandard
            except ImportError:
                raise ConfigError(f"run.io_trace_log={path!r}: a .zst log needs the zstandard"
                                  " package; pip install zstandard, or drop .zst") from None
        parent = os.path.dirname(path)
        try:
            if parent:
                os.makedirs(parent, exist_ok=True)
            raw = open(path, "xb")    # never overwrite a file this run did not make
        except FileExistsError:
            raise ConfigError(f"run.io_trace_log: {path} exists; choose another path") from None
        except OSError as exc:
            raise ConfigError(f"run.io_trace_log: cannot create {path} ({exc.strerror});"
                              " choose a writable path") from None
        if zst:
            stream = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(raw, closefd=False)
            return raw, io.TextIOWrapper(stream, encoding="ascii", newline="")
        return raw, io.TextIOWrapper(raw, encoding="ascii", newline="", write_through=False)

    def start(self) -> None:
        """Records from now on (the measured phase); the clock offset turns the engine's
        ``perf_counter_ns`` readings into Unix time (in trace mode the engine's virtual
        clock, which starts the phase at the same reading: rows then carry workload time)."""
        self._wall0, self._perf0 = time.time_ns(), time.perf_counter_ns()
        self._thread = threading.Thread(target=self._write_loop, name="io-trace", daemon=True)
        self._thread.start()
        self.recording = True

    def add(self, row: tuple) -> None:
        """One operation: (start ns on the engine's clock, op code, bytes, level, key, stage
        code, request index, QoS code, slot, latency ns). Called on the engine's thread only."""
        rows = self._rows
        rows.append(row)
        if len(rows) >= BATCH:
            self._queue.put(rows)
            self._rows = []

    def extend(self, rows: list[tuple]) -> None:
        """``add`` for several rows at once."""
        mine = self._rows
        mine.extend(rows)
        if len(mine) >= BATCH:
            self._queue.put(mine)
            self._rows = []

    def close(self) -> None:
        """Stops recording, writes what is left, finishes the file and the JSON beside it.
        Idempotent; raises what the writer thread failed with."""
        if self._closed:
            return
        self._closed = True
        self.recording = False
        if self._thread is not None:
            self._queue.put(self._rows)
            self._queue.put(None)
            self._thread.join()
        self._rows = []
        try:
            self._out.flush()
            if self.path.endswith(".zst"):
                self._out.detach().close()        # ends the zstd frame; raw stays open
            self._raw.close()
        finally:
            if self._error is None:
                self._write_meta()
        if self._error is not None:
            raise self._error

    def _write_meta(self) -> None:
        meta = {**self.meta, "format": FORMAT, "columns": list(COLUMNS), "rank": self.rank,
                "tp_group": self.group, "object_bytes": self.object_bytes,
                "rows": sum(rows for rows, _ in self._counts.values()),
                "wall_start_ns": self._wall0,
                "counts": {k: {"rows": v[0], "bytes": v[1]} for k, v in sorted(self._counts.items())},
                "max_slot": self._max_slot}
        try:
            with open(meta_path(self.path), "x") as fh:
                json.dump(meta, fh, indent=1)
        except FileExistsError:
            pass   # someone else's file: leave it

    def _write_loop(self) -> None:
        while (rows := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                self._format(rows)
            except BaseException as exc:   # noqa: BLE001 - close() raises it on the engine's thread
                self._error = exc

    def _format(self, rows: list[tuple]) -> None:
        """Writes a batch, sorted by start time (stable: equal times keep their order). The
        writer shares the engine's GIL, so its time per row is the engine's too: a time's
        text is made once for the rows that share it (trace mode: a whole stage), and the
        per-tier counts are tallied by ``Counter`` at C speed."""
        rows.sort(key=itemgetter(0))
        shift, obj = self._wall0 - self._perf0, self.object_bytes
        mid = f"{self.rank},{self.group}"
        labels = {lv: TIER_LABELS.get(lv, lv) for lv in (*TIER_LABELS, *{r[3] for r in rows})}
        qos_names = {q: QOS[q] if q >= 0 else "" for q in (-1, *range(len(QOS)))}
        stages = [(REFERENCE_PHASE[st], st) for st in STAGES]
        max_slot = self._max_slot
        lines: list[str] = []
        add = lines.append
        last, stamp = None, ""
        for t, op, size, level, key, stage, req, qos, slot, lat in rows:
            if t != last:
                ns = t + shift
                last, stamp = t, f"{ns // 1_000_000_000}.{ns // 1000 % 1_000_000:06d}"
            phase, st = stages[stage]
            add(f"{stamp},{OPERATIONS[op]},{size},{labels[level]},{key:016x},{phase},{mid},{req},"
                f"{qos_names[qos]},{slot},{slot * obj},{lat},{st}\n")
            if slot > max_slot.get(level, -1):
                max_slot[level] = slot
        self._out.write("".join(lines))
        counts = self._counts
        for (level, op, stage, size), n in Counter(map(itemgetter(3, 1, 5, 2), rows)).items():
            c = counts.setdefault(f"{level}.{OPERATIONS[op].lower()}.{STAGES[stage]}", [0, 0])
            c[0] += n
            c[1] += n * size


def open_text(path: str):
    """A log for reading as text, decompressing a ``.zst`` one on the fly."""
    if path.endswith(".zst"):
        import zstandard

        raw = open(path, "rb")
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True),
                                encoding="ascii", newline="")
    return open(path, newline="")


def read_meta(log: str) -> dict[str, Any]:
    """The JSON beside a log ({} when there is none)."""
    try:
        with open(meta_path(log)) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{meta_path(log)}: cannot read it ({exc}); give the log's own .json") from None


def read_rows(path: str) -> Iterator[Row]:
    """The rows of one of our logs, in file order. A log without our columns (the
    reference's own) is refused: replay needs the slot of every operation."""
    try:
        fh = open_text(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such log; give the path of an --io-trace-log file") from None
    with fh:
        header = fh.readline().rstrip("\r\n").split(",")
        if tuple(header[:len(COLUMNS)]) != COLUMNS:
            missing = [c for c in COLUMNS if c not in header]
            raise ConfigError(f"{path}: not an mpi_kvbench I/O trace log (no column"
                              f" {missing[0] if missing else header[0]}); record one with --io-trace-log")
        for n, line in enumerate(fh, 2):
            f = line.rstrip("\r\n").split(",")
            try:
                sec, _, frac = f[0].partition(".")
                yield Row(int(sec) * 1_000_000_000 + int(frac.ljust(6, "0")[:6]) * 1000,
                          f[1] == "Write", int(f[2]), LEVELS.get(f[3], f[3]), int(f[4], 16),
                          f[13], int(f[10]), int(f[11]), int(f[12]), int(f[8]))
            except (ValueError, IndexError):
                raise ConfigError(f"{path}:{n}: not a valid row; give an unmodified log") from None
