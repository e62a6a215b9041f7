"""Azure LLM inference traces (CSV): ``TIMESTAMP, ContextTokens, GeneratedTokens``.

TIMESTAMP is a date-time (``2023-11-16 18:15:46.6805900``: fractions up to 7 digits);
arrivals count from the first row. The trace carries no content, so every request is
its own user with a fresh prompt: it measures cache-miss traffic and arrival bursts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime

from mpi_kvbench.workloads.tracefile import TraceParams, TraceRow, TraceWorkload

OUTPUT = 1 << 63      # identities of generated tokens; a prompt is its row number

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def parse_time(text: str) -> float:
    """Seconds since the epoch of an Azure timestamp (fractions trimmed to microseconds)."""
    text = text.strip().replace("T", " ").rstrip("Z")
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    return datetime.fromisoformat(text).timestamp()


class AzureWorkload(TraceWorkload):
    """Azure LLM inference CSV: timestamps, context and generated token counts."""

    FORMAT_KIND = "azure"

    @dataclasses.dataclass(frozen=True)
    class Params(TraceParams):
        FORMAT = "Azure LLM inference CSV"

    def rows(self) -> Iterator[TraceRow]:
        for n, rec in self.csv_records(COLUMNS):
            try:
                t = parse_time(rec["TIMESTAMP"])
                ctx, gen = int(float(rec["ContextTokens"])), int(float(rec["GeneratedTokens"]))
            except (ValueError, TypeError):
                self.skip("rows with an unreadable field")
                continue
            if ctx < 1:
                self.skip("rows without context tokens")
                continue
            yield TraceRow(t, n, n, ((n, ctx),), max(1, gen), OUTPUT | n)
