"""Azure LLM inference traces (CSV): ``TIMESTAMP, ContextTokens, GeneratedTokens``.

What it models: the arrivals and token counts of Azure's production LLM service (the
2023 ``code`` and ``conv`` traces, and the 2024 week-long ones). TIMESTAMP is a date and
time such as ``2023-11-16 18:15:46.6805900`` (any number of fraction digits, an
optional ``T``, ``Z`` or ``+hh:mm``); arrivals count from the first request. The trace
carries no content, so every row is its own user with one fresh prompt segment: it
measures cache-miss traffic and arrival bursts, never prefix reuse.

Parameters: those of every trace (see tracefile.py). Rows with an unreadable time or
a zero or unreadable token count are skipped and counted.

Limits: no reuse at all, by construction (the trace has no content or sessions); times
are resolved to about a microsecond (seconds since the epoch in a float).
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from typing import Any

from mpi_kvbench.workloads.tracefile import (
    OUTPUT,
    PROMPT,
    CsvTrace,
    Record,
    Skip,
    TraceParams,
    mix64,
    tokens,
)

STAMP = re.compile(r"\s*(\d{4})-(\d{1,2})-(\d{1,2})[ T](\d{1,2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
                   r"\s*(Z|[+-]\d{2}:?\d{2})?\s*$")


def parse_time(text: str) -> float:
    """Seconds since the epoch (UTC when no offset is given; only differences matter).

    Our own parser: ``datetime.fromisoformat`` refuses Azure's 7 fraction digits on
    some Python versions, and ``strptime`` takes at most 6."""
    m = STAMP.match(text)
    if m is None:
        raise ValueError(text)
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    t = datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp()
    if m[7]:
        t += int(m[7]) / 10 ** len(m[7])
    if m[8] and m[8] != "Z":
        sign = -1 if m[8][0] == "-" else 1
        digits = m[8][1:].replace(":", "")
        t -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return t


class AzureWorkload(CsvTrace):
    """Azure LLM inference CSV: timestamps, context and generated token counts."""

    KIND = "azure"
    COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")

    @dataclasses.dataclass(frozen=True)
    class Params(TraceParams):
        FORMAT = "Azure LLM inference CSV"

    def parse(self, raw: Any) -> Record:
        row = self.fields(raw)
        try:
            t = parse_time(row["TIMESTAMP"])
        except ValueError:
            raise Skip("unreadable TIMESTAMP") from None
        return Record(t, None, tokens(row["ContextTokens"], "ContextTokens"),
                      tokens(row["GeneratedTokens"], "GeneratedTokens"))

    def build(self, rec: Record, pos: int, context: tuple[tuple[int, int], ...]
              ) -> tuple[tuple[tuple[int, int], ...], int, int]:
        return ((mix64(PROMPT, pos), rec.prompt),), rec.output_tokens, mix64(OUTPUT, pos)
