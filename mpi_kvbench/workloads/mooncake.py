"""Mooncake traces (JSONL): ``{timestamp (ms), input_length, output_length, hash_ids}``.

What it models: Kimi's production requests with their real prefix sharing. Each
``hash_ids`` entry names one 512-token block of the prompt, and equal ids are equal
blocks, so the prompt becomes one segment ``(identity of the id, 512)`` per block, the
last holding the rest (``input_length - 512 x (blocks - 1)``), and shared ids become
shared chunk-chain prefixes, exactly. Ids beyond ``ceil(input_length / 512)`` name
blocks the prompt does not have and are dropped, so a prompt always has
``input_length`` tokens; with too few ids the last block holds everything after the
others (more than 512 tokens). Each line is its own user.

Parameters: those of every trace (see tracefile.py); timestamps are milliseconds.
Lines that are not a JSON object, lack a field, or have zero tokens are skipped and
counted.

Limits: outputs are never reused (the trace names only prompt blocks), and each line is
its own user, so a conversation's turns may land on different replicas.

``prefix_reuse(records, chunk_tokens)`` computes from the hash ids alone what an
unbounded cache would hit: a check of the chunk-key code, which it does not use.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mpi_kvbench.layout import MASK64
from mpi_kvbench.workloads.tracefile import (
    OUTPUT,
    JsonlTrace,
    Record,
    Skip,
    TraceParams,
    mix64,
    seconds,
    tokens,
)

BLOCK_TOKENS = 512


def block_segments(input_length: int, hash_ids: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """One segment per 512-token block; the last one holds whatever tokens remain. A
    block's identity is its hash id itself: it already is one (hashing it again cost a
    third of the parse)."""
    ids = hash_ids[: -(-input_length // BLOCK_TOKENS)]
    last = len(ids) - 1
    return tuple((h & MASK64, BLOCK_TOKENS if i < last else input_length - BLOCK_TOKENS * last)
                 for i, h in enumerate(ids))


def prefix_reuse(records: Iterable[Mapping[str, Any] | tuple[int, Sequence[int]]],
                 chunk_tokens: int) -> float:
    """The share of full prompt chunks whose whole prefix an earlier request already had.

    ``records``: Mooncake records (mappings with ``input_length`` and ``hash_ids``) or
    ``(input_length, hash_ids)`` pairs, in trace order. Chunk i of a prompt (tokens
    [i*C, (i+1)*C)) is a hit when an earlier prompt of at least (i+1)*C tokens had the
    same blocks under tokens [0, (i+1)*C): the same hash ids for the 512-blocks covering
    them and, where the range reaches into a last block of more than 512 tokens (too few
    hash ids), the same last block. Prefixes are nodes of a trie of hash ids; each node
    remembers the longest prompt that went through it.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens}: give a positive number")
    trie: dict[tuple[int, Any], int] = {}      # (parent node, hash id) -> node
    longest: dict[int, int] = {}               # node -> longest prompt through it
    hits = total = 0
    for rec in records:
        if isinstance(rec, Mapping):
            length, ids = int(rec["input_length"]), list(rec["hash_ids"])
        else:
            length, ids = int(rec[0]), list(rec[1])
        blocks = -(-length // BLOCK_TOKENS)
        ids = ids[:blocks]                     # ids past the prompt name nothing
        if length < 1 or not ids:
            continue
        nodes = [0]
        for h in ids:
            nodes.append(trie.setdefault((nodes[-1], h), len(trie) + 1))
        if blocks > len(ids):                  # the last block runs past 512 tokens
            nodes += [trie.setdefault((nodes[-1], "longer"), len(trie) + 1)] * (blocks - len(ids))
        for i in range(length // chunk_tokens):
            end = (i + 1) * chunk_tokens
            total += 1
            hits += longest.get(nodes[-(-end // BLOCK_TOKENS)], 0) >= end
        for node in nodes[1:]:
            longest[node] = max(longest.get(node, 0), length)
    return hits / total if total else 0.0


class MooncakeWorkload(JsonlTrace):
    """Mooncake JSONL: timestamps in ms and 512-token block hash ids (shared prefixes)."""

    KIND = "mooncake"

    @dataclasses.dataclass(frozen=True)
    class Params(TraceParams):
        FORMAT = "Mooncake JSONL"

    def parse(self, raw: Any) -> Record:
        try:
            rec = json.loads(raw)
        except ValueError:
            raise Skip("a line that is not JSON (cut off?)") from None
        if not isinstance(rec, dict):
            raise Skip("a line that is not a JSON object")
        missing = [k for k in ("timestamp", "input_length", "output_length", "hash_ids")
                   if k not in rec]
        if missing:
            raise Skip(f"a record without {missing[0]}")
        ids = rec["hash_ids"]
        if not isinstance(ids, list) or not ids or not all(
                isinstance(h, int) and not isinstance(h, bool) for h in ids):
            raise Skip("hash_ids that are not a list of integers")
        return Record(seconds(rec["timestamp"], "timestamp") / 1000.0, None,
                      (tokens(rec["input_length"], "input_length"), ids),
                      tokens(rec["output_length"], "output_length"))

    def build(self, rec: Record, pos: int, context: tuple[tuple[int, int], ...]
              ) -> tuple[tuple[tuple[int, int], ...], int, int]:
        length, ids = rec.prompt
        return block_segments(length, ids), rec.output_tokens, mix64(OUTPUT, pos)
