"""Mooncake traces (JSONL): ``{timestamp (ms), input_length, output_length, hash_ids}``.

Each ``hash_ids`` entry names one 512-token block of the prompt, and equal ids are equal
blocks, so the prompt becomes one segment per block (the last one holds the remainder)
and shared ids become shared chunk-chain prefixes, exactly. Each line is its own user.
Lines that are not valid JSON or lack a field are skipped and counted.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence

from mpi_kvbench.workloads.tracefile import MASK64, TraceParams, TraceRow, TraceWorkload

OUTPUT = 1 << 63      # identities of generated tokens; hash ids stay as they are

BLOCK_TOKENS = 512


def block_segments(input_length: int, hash_ids: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """One segment per 512-token block; the last block holds whatever tokens remain."""
    segs = []
    for i, h in enumerate(hash_ids):
        last = i == len(hash_ids) - 1
        n = max(1, input_length - BLOCK_TOKENS * i) if last else BLOCK_TOKENS
        segs.append((h & MASK64, n))
    return tuple(segs)


def prefix_reuse(records: Iterable[tuple[int, Sequence[int]]], chunk_tokens: int) -> float:
    """The share of full prompt chunks whose whole prefix an earlier request already held,
    from ``(input_length, hash_ids)`` alone, in trace order, with an unbounded cache.

    Chunk i (tokens [i*C, (i+1)*C)) of a request is reused when an earlier request had the
    same hash ids for every block that covers tokens [0, (i+1)*C) and a prompt of at least
    (i+1)*C tokens. Independent of the chunk-key code, to check it.
    """
    longest: dict[tuple[int, ...], int] = {}   # block-id prefix -> longest prompt seen with it
    hits = total = 0
    for length, ids in records:
        ids = tuple(ids)
        for i in range(length // chunk_tokens):
            end = (i + 1) * chunk_tokens
            blocks = ids[: -(-end // BLOCK_TOKENS)]
            total += 1
            hits += longest.get(blocks, 0) >= end
        for b in range(1, len(ids) + 1):
            longest[ids[:b]] = max(longest.get(ids[:b], 0), length)
    return hits / total if total else 0.0


class MooncakeWorkload(TraceWorkload):
    """Mooncake JSONL: timestamps in ms and 512-token block hash ids (shared prefixes)."""

    FORMAT_KIND = "mooncake"

    @dataclasses.dataclass(frozen=True)
    class Params(TraceParams):
        FORMAT = "Mooncake JSONL"

    def rows(self) -> Iterator[TraceRow]:
        with open(self.params.trace, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    ts, length = float(rec["timestamp"]), int(rec["input_length"])
                    out, ids = int(rec["output_length"]), [int(h) for h in rec["hash_ids"]]
                except (ValueError, KeyError, TypeError):
                    self.skip("lines that are not a whole JSON record")
                    continue
                if length < 1 or not ids:
                    self.skip("records without prompt tokens")
                    continue
                yield TraceRow(ts / 1000.0, n, n, block_segments(length, ids), max(1, out),
                               OUTPUT | n)
