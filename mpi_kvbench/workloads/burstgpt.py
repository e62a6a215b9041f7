"""BurstGPT traces (CSV): ``Timestamp, Model, Request tokens, Response tokens, Total tokens,
Log Type``; version 2 adds ``Session ID`` and ``Elapsed time``.

What it models: the bursty arrivals of a real LLM service and its real prompt and
answer lengths. ``Timestamp`` is in seconds. The trace carries no content, so:

- without a ``Session ID`` (or with an empty one) every row is its own user, with one
  fresh prompt segment: no reuse between requests;
- with one, the rows of a session are the turns of one conversation (one user), in time
  order. A turn's prompt is the previous turn's prompt and answer (the chain it reuses)
  plus new tokens, ``max(1, Request tokens - previous context)``: we read ``Request
  tokens`` as the whole context the client sent. When it is smaller than the context so
  far (a client that trimmed its history), the chain still only grows, by one token, so
  that prompt is longer than the trace says; the chain never restarts mid-session.

Parameters: those of every trace (see tracefile.py). Rows with a zero or unreadable
``Request tokens``, ``Response tokens`` or ``Timestamp`` (failed requests) are skipped
and counted.

Limits: the model name and log type are not used; a session's context is held in
memory until its last turn.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mpi_kvbench.workloads.tracefile import (
    OUTPUT,
    PROMPT,
    CsvTrace,
    Record,
    Scan,
    TraceParams,
    mix64,
    seconds,
    tokens,
)


class BurstgptWorkload(CsvTrace):
    """BurstGPT CSV (v1, or v2 with sessions): bursty arrivals of real token counts."""

    KIND = "burstgpt"
    COLUMNS = ("Timestamp", "Request tokens", "Response tokens")
    OPTIONAL = ("Session ID",)

    @dataclasses.dataclass(frozen=True)
    class Params(TraceParams):
        FORMAT = "BurstGPT CSV"

    def parse(self, raw: Any) -> Record:
        row = self.fields(raw)
        session = row.get("Session ID", "").strip() or None
        return Record(seconds(row["Timestamp"], "Timestamp"), session,
                      tokens(row["Request tokens"], "Request tokens"),
                      tokens(row["Response tokens"], "Response tokens"))

    def build(self, rec: Record, pos: int, context: tuple[tuple[int, int], ...]
              ) -> tuple[tuple[tuple[int, int], ...], int, int]:
        held = sum(n for _, n in context)
        segments = (*context, (mix64(PROMPT, pos), max(1, rec.prompt - held)))
        return segments, rec.output_tokens, mix64(OUTPUT, pos)

    def _scan(self) -> Scan:
        scan = super()._scan()
        self._facts.update(sessions="Session ID" in self.columns, conversations=len(self._turns))
        return scan
