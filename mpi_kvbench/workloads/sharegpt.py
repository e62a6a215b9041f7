"""ShareGPT conversations (JSON): a list of ``{id, conversations: [{from, value}, ...]}``.

Each conversation is one user. Every prompt turn (``human``/``user``) that an answer
(``gpt``, ``chatgpt``, ``bing``, ``bard``, ``assistant``) follows becomes a request whose
prompt is the whole conversation so far plus the new message, so turns extend one chain;
``system`` messages open the prompt. Equal texts are equal content, so conversations
sharing a system prompt share its chunks.

Token counts come from tiktoken (cl100k_base) when it is installed and its encoding can
be loaded, else from about four characters per token; the result says which. ShareGPT
has no timestamps: requests arrive at Poisson ``request_rate`` (default 10 per second),
in file order. Real files are often cut off mid-way: every whole conversation is
loaded, and the result counts what was skipped (malformed entries, a truncated tail).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

from mpi_kvbench.errors import ConfigError
from mpi_kvbench.workloads.tracefile import TraceParams, TraceRow, TraceWorkload, text_id

PROMPT_ROLES = {"human", "user"}
ANSWER_ROLES = {"gpt", "chatgpt", "bing", "bard", "assistant", "model"}


def tokenizer() -> tuple[str, Callable[[str], int]]:
    """tiktoken when it can load its encoding here (it may need the network), else chars/4."""
    try:
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base")
        return "tiktoken", lambda text: len(enc.encode(text, disallowed_special=()))
    except Exception:   # noqa: BLE001 - not installed, or its encoding cannot be fetched
        return "chars/4", lambda text: max(1, math.ceil(len(text) / 4))


def whole_entries(text: str) -> tuple[list[Any], bool]:
    """The complete elements of a JSON array, and whether the text ended early."""
    dec = json.JSONDecoder()
    pos = text.find("[")
    if pos < 0:
        return [], True
    pos += 1
    out = []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            return out, True
        if text[pos] == "]":
            return out, False
        try:
            entry, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError:
            return out, True
        out.append(entry)


class SharegptWorkload(TraceWorkload):
    """ShareGPT JSON conversations as multi-turn users (Poisson arrivals)."""

    FORMAT_KIND = "sharegpt"

    @dataclasses.dataclass(frozen=True)
    class Params(TraceParams):
        FORMAT = "ShareGPT JSON"
        request_rate: float = 10.0

        def check(self) -> None:
            TraceParams.check(self)
            if self.request_rate <= 0:
                raise ConfigError(f"workload.request_rate={self.request_rate}: ShareGPT has no"
                                  " timestamps; give a rate > 0 requests per second")

    def rows(self) -> Iterator[TraceRow]:
        with open(self.params.trace, encoding="utf-8", errors="replace") as fh:
            entries, truncated = whole_entries(fh.read())
        name, count = tokenizer()
        self._info.update(tokenizer=name, truncated=truncated)
        if truncated:
            self.skip("the file ends inside a conversation (truncated)")
        conversations = 0
        for user, entry in enumerate(entries):
            turns = entry.get("conversations") if isinstance(entry, dict) else None
            if not isinstance(turns, list) or not all(
                    isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns):
                self.skip("entries without a conversations list")
                continue
            conversations += 1
            context: tuple[tuple[int, int], ...] = ()
            pending = None
            for turn in turns:
                role, text = str(turn.get("from", "")).lower(), turn["value"]
                seg = (text_id(text), count(text))
                if role in PROMPT_ROLES:
                    pending = seg
                    context = (*context, seg)
                elif role in ANSWER_ROLES and pending is not None:
                    yield TraceRow(0.0, user, user, context, seg[1], seg[0])
                    context, pending = (*context, seg), None
                else:   # system prompts, or an answer with no question before it
                    context = (*context, seg)
        self._info["conversations"] = conversations
