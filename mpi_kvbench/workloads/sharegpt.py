"""ShareGPT conversations (JSON): a list of ``{id, conversations: [{from, value}, ...]}``.

What it models: each conversation is one user (and one session) talking to a chatbot.
Every prompt message (``human``, ``user``) that an answer (``gpt``, ``chatgpt``,
``bing``, ``bard``, ``assistant``) directly follows becomes a request whose prompt is
the whole conversation so far (earlier prompts and answers) plus the new message, so
turns extend one prefix chain; its output is the answer. ``system`` messages stay where
they are in the conversation (in practice: first, so they open the prompt). A message's
content identity is a 64-bit hash of its text, so equal texts are equal chunks: two
conversations with the same system prompt (or the same opening question) share them.

Tokens: tiktoken's ``cl100k_base`` when it is installed and its encoding loads, else
ceil(characters / 4); at least 1 per message. ``info()["tokenizer"]`` says which.

Parameters: those of every trace (see tracefile.py); ShareGPT has no timestamps, so
requests arrive as a Poisson stream at ``request_rate`` (default 10 per second), in
file order, and ``speedup`` has no effect.

Limits: real files are often cut off mid-way. The file is read piece by piece (never
whole): every complete conversation is loaded, and ``info()`` counts the conversations
loaded and those skipped (malformed entries, a conversation without an answered prompt,
a truncated tail). Pass 1 stops at ``max_requests`` when one is given.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from typing import IO, Any

from mpi_kvbench.errors import ConfigError
from mpi_kvbench.workloads.tracefile import (
    Scan,
    Skip,
    TraceParams,
    TraceRow,
    TraceWorkload,
    open_trace,
    text_id,
)

PROMPT, ANSWER, SYSTEM = "prompt", "answer", "system"
ROLES = {"human": PROMPT, "user": PROMPT, "gpt": ANSWER, "chatgpt": ANSWER, "bing": ANSWER,
         "bard": ANSWER, "assistant": ANSWER, "system": SYSTEM}
SEPARATORS = " \t\r\n,\ufeff"


def tokenizer() -> tuple[str, Callable[[str], int]]:
    """tiktoken when it can load its encoding here (it may need the network), else chars/4."""
    try:
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base")
    except Exception:   # noqa: BLE001 - not installed, or its encoding cannot be fetched
        return "chars/4", lambda text: max(1, math.ceil(len(text) / 4))
    return "tiktoken", lambda text: max(1, len(enc.encode(text, disallowed_special=())))


class JsonArray:
    """The whole elements of a JSON array, read ``piece_chars`` at a time.

    Iterating yields each complete element; afterwards ``is_array`` says whether the text
    opened an array, ``closed`` whether its ``]`` was reached, and ``partial`` whether an
    element was cut off (or was not valid JSON: after ``max_entry_chars`` characters
    without a whole element, or at the end of the file, the rest is given up).
    """

    def __init__(self, fh: IO[str], piece_chars: int = 1 << 20,
                 max_entry_chars: int = 1 << 26) -> None:
        self.fh = fh
        self.piece = piece_chars
        self.max_entry = max_entry_chars
        self.is_array = self.closed = self.partial = False

    def __iter__(self) -> Iterator[Any]:
        dec = json.JSONDecoder()
        buf, pos, eof = "", 0, False
        while True:
            while pos < len(buf) and buf[pos] in SEPARATORS:
                pos += 1
            if pos == len(buf) and not eof:      # need more text to see the next element
                buf, pos = self.fh.read(self.piece), 0
                eof = not buf
                continue
            if pos == len(buf):                   # the end of the file
                return
            if not self.is_array:                 # before the opening bracket
                if buf[pos] != "[":
                    return
                self.is_array, pos = True, pos + 1
                continue
            if buf[pos] == "]":
                self.closed = True
                return
            try:
                item, end = dec.raw_decode(buf, pos)
            except json.JSONDecodeError:
                end = -1
            if end < 0 or (end == len(buf) and not eof):   # incomplete so far: read more
                if eof or len(buf) - pos > self.max_entry:
                    self.partial = True
                    return
                more = self.fh.read(max(self.piece, len(buf) - pos))   # doubling: linear time
                buf, pos, eof = buf[pos:] + more, 0, not more
                continue
            yield item
            pos = end
            if pos >= self.piece:                  # drop what was consumed
                buf, pos = buf[pos:], 0


def messages(entry: Any) -> list[tuple[str, str]]:
    """(role, text) of a conversation entry, or ``Skip``."""
    turns = entry.get("conversations") if isinstance(entry, dict) else None
    if not isinstance(turns, list):
        raise Skip("an entry without a conversations list")
    out = []
    for msg in turns:
        if not isinstance(msg, dict) or not isinstance(msg.get("value"), str):
            raise Skip("a message without a text value")
        role = ROLES.get(str(msg.get("from", "")).strip().lower())
        if role is None:
            raise Skip("a message from an unknown role")
        out.append((role, msg["value"]))
    return out


def answered(turns: list[tuple[str, str]]) -> list[bool]:
    """For each message: does it end a request (an answer right after a prompt)?"""
    return [role == ANSWER and i > 0 and turns[i - 1][0] == PROMPT
            for i, (role, _) in enumerate(turns)]


class SharegptWorkload(TraceWorkload):
    """ShareGPT JSON conversations as multi-turn users (Poisson arrivals)."""

    KIND = "sharegpt"
    CLOCK = False

    @dataclasses.dataclass(frozen=True)
    class Params(TraceParams):
        request_rate: float = 10.0

        FORMAT = "ShareGPT JSON"

        def check(self) -> None:
            TraceParams.check(self)
            if not self.request_rate > 0:
                raise ConfigError(f"workload.request_rate={self.request_rate}: ShareGPT has no"
                                  " timestamps; give a rate > 0 requests per second")

    def __init__(self, params: Any, seed: int) -> None:
        super().__init__(params, seed)
        self._tokenizer: tuple[str, Callable[[str], int]] | None = None

    def _count(self) -> Callable[[str], int]:
        if self._tokenizer is None:
            self._tokenizer = tokenizer()
            self._facts["tokenizer"] = self._tokenizer[0]
        return self._tokenizer[1]

    def _scan(self) -> Scan:
        self._count()
        limit = self.params.max_requests or math.inf
        requests = conversations = entries = 0
        with open_trace(self.params.trace) as fh:
            reader = JsonArray(fh)
            for entry in reader:
                entries += 1
                try:
                    n = sum(answered(messages(entry)))
                    if n == 0:
                        raise Skip("a conversation without an answered prompt")
                except Skip as why:
                    self.skip(str(why))
                    continue
                conversations += 1
                requests += n
                if requests >= limit:
                    break
        if not reader.is_array:
            raise ConfigError(f"workload.trace: {self.params.trace} is not a JSON array; a ShareGPT"
                              " file is a list of {id, conversations: [{from, value}, ...]}")
        if reader.partial:
            self.skip("a conversation cut off at the end of the file (or not valid JSON)")
        self._facts.update(conversations=conversations, truncated=reader.partial or not (
            reader.closed or requests >= limit))
        return Scan(requests=int(min(requests, limit)), users=conversations, stride=entries)

    def _rows(self) -> Iterator[TraceRow]:
        count = self._count()
        left = self.scanned().requests
        with open_trace(self.params.trace) as fh:
            for user, entry in enumerate(JsonArray(fh)):   # a user is its entry's number
                try:
                    turns = messages(entry)
                except Skip:
                    continue
                ends = answered(turns)
                if not any(ends):
                    continue
                context: tuple[tuple[int, int], ...] = ()
                for (_, text), end in zip(turns, ends, strict=True):
                    segment = (text_id(text), count(text))
                    if end:
                        yield TraceRow(0.0, user, context, segment[1], segment[0])
                        left -= 1
                        if left == 0:
                            return
                    context = (*context, segment)
