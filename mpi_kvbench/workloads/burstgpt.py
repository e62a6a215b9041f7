"""BurstGPT traces (CSV): ``Timestamp, Model, Request tokens, Response tokens, Total tokens,
Log Type``; version 2 adds ``Session ID`` and ``Elapsed time``.

Timestamps are seconds. Without a ``Session ID`` every row is its own user with a fresh
prompt. With one, the rows of a session are the turns of one conversation: a turn's
prompt is the previous turn's prompt and answer plus new tokens, ``max(1, Request tokens
- previous context)``, so a turn reuses the chain of the one before it (the trace counts
the whole context in ``Request tokens``). Rows with missing or zero token counts
(failed requests) are skipped and counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from mpi_kvbench.workloads.tracefile import TraceParams, TraceRow, TraceWorkload

OUTPUT = 1 << 63      # identities of generated tokens; new prompt tokens are their row

COLUMNS = ("Timestamp", "Request tokens", "Response tokens")


class BurstgptWorkload(TraceWorkload):
    """BurstGPT CSV (v1, or v2 with sessions): bursty arrivals of real token counts."""

    FORMAT_KIND = "burstgpt"

    @dataclasses.dataclass(frozen=True)
    class Params(TraceParams):
        FORMAT = "BurstGPT CSV"

    def rows(self) -> Iterator[TraceRow]:
        sessions: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = {}   # id -> (user, context)
        for n, rec in self.csv_records(COLUMNS):
            has_sessions = self._info["sessions"] = "Session ID" in self.columns
            try:
                t = float(rec["Timestamp"])
                req, resp = int(float(rec["Request tokens"])), int(float(rec["Response tokens"]))
            except (ValueError, TypeError):
                self.skip("rows with an unreadable field")
                continue
            if req < 1 or resp < 1:
                self.skip("rows with zero tokens (failed requests)")
                continue
            sid = (rec.get("Session ID") or "").strip() if has_sessions else ""
            user, context = sessions.get(sid, (n, ())) if sid else (n, ())
            held = sum(k for _, k in context)
            segs = (*context, (n, max(1, req - held)))
            if sid:
                sessions[sid] = (user, (*segs, (OUTPUT | n, resp)))
            yield TraceRow(t, user, user, segs, resp, OUTPUT | n)
