"""Synthetic multi-turn users: the reference's templates and QoS mix, with shared prefixes.

Each user picks a template (chatbot, coding, document) and a QoS class, then holds
conversations of up to ``max_turns`` turns: the first prompt is one of
``system_prompts`` shared system prompts plus new context; each later turn is the
previous prompt and answer plus a follow-up message. With ``rag_documents`` > 0 each
conversation also opens with ``rag_per_conversation`` documents from a shared corpus,
picked by a Zipf law (``rag_zipf_s``; popular documents are shared prefixes across users)
or uniformly, placed after the system prompt. Users are closed loop by default:
a request is due ``think`` seconds after the user's previous one completed. With a
``request_rate`` > 0 requests are due at Poisson arrival times instead (open loop).

Trace order is the order of nominal send times (users' think times added up), which
depends only on the seed, so every run replays the same sequence.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterator
from typing import Any

import numpy as np

from mpi_kvbench.errors import ConfigError
from mpi_kvbench.params import non_negative
from mpi_kvbench.workloads.base import Request, Workload
from mpi_kvbench.workloads.qos import QOS_CLASSES, default_mix, user_classes, weights

# (context tokens, output tokens, think seconds): ranges from DESIGN.md section 9
TEMPLATES = {
    "chatbot": ((512, 4096), (50, 200), (0.1, 0.5)),
    "coding": ((4096, 25000), (100, 500), (0.2, 1.0)),
    "document": ((4096, 16384), (200, 800), (0.3, 1.5)),
}

MAX_USERS = 10_000


class SyntheticWorkload(Workload):
    """Multi-turn users from the reference's templates, shared system prompts, QoS mix."""

    partitionable = True

    @dataclasses.dataclass(frozen=True)
    class Params:
        users: int = 20
        templates: dict = dataclasses.field(
            default_factory=lambda: {"chatbot": 0.5, "coding": 0.25, "document": 0.25})
        qos_mix: dict = dataclasses.field(default_factory=default_mix)
        system_prompts: int = 8
        system_prompt_tokens: int = 1024
        follow_up_tokens_min: int = 64
        follow_up_tokens_max: int = 512
        max_turns: int = 6
        request_rate: float = 0.0      # > 0: open loop, Poisson arrivals (per s, all users)
        rag_documents: int = 0
        rag_document_tokens: int = 2048
        rag_per_conversation: int = 1
        rag_law: str = "zipf"
        rag_zipf_s: float = 1.1

        def check(self) -> None:
            if self.users < 1:
                raise ConfigError(f"workload.users={self.users}: need at least 1 user")
            if self.users > MAX_USERS:   # set-up makes every user on every rank
                raise ConfigError(f"workload.users={self.users}: more than {MAX_USERS:,} users take"
                                  " longer to set up than a run lasts; use fewer users, or a"
                                  " trace")
            weights(self.templates, list(TEMPLATES), "templates")
            weights(self.qos_mix, QOS_CLASSES, "qos_mix")
            non_negative(self, "workload", ("system_prompts", "system_prompt_tokens",
                                            "follow_up_tokens_min", "max_turns"))
            if self.follow_up_tokens_max < self.follow_up_tokens_min:
                raise ConfigError("workload.follow_up_tokens_max: must be >= follow_up_tokens_min")
            if self.rag_documents < 0 or self.rag_document_tokens < 1 or self.rag_per_conversation < 0:
                raise ConfigError("workload.rag_*: documents >= 0, document tokens >= 1,"
                                  " per conversation >= 0")
            if self.rag_law not in ("zipf", "uniform"):
                raise ConfigError(f"workload.rag_law={self.rag_law!r}: use zipf or uniform")
            if self.rag_zipf_s <= 0:
                raise ConfigError(f"workload.rag_zipf_s={self.rag_zipf_s}: must be > 0")
            if self.request_rate < 0:
                raise ConfigError(f"workload.request_rate={self.request_rate}: give a rate >= 0"
                                  " (0 = closed-loop users)")

    def info(self) -> dict[str, Any]:
        p = self.params
        return {"kind": "synthetic", "users": p.users,
                "arrival": "poisson" if p.request_rate > 0 else "closed",
                "templates": dict(p.templates), "qos_mix": dict(p.qos_mix),
                "system_prompts": p.system_prompts, "max_turns": p.max_turns,
                "rag_documents": p.rag_documents, "rag_law": p.rag_law}

    def requests(self, replica: int = 0, replicas: int = 1) -> Iterator[Request]:
        p = self.params
        tnames, tw = weights(p.templates, list(TEMPLATES), "templates")
        classes = user_classes(p.users, p.qos_mix, self.seed)
        rag_p = None
        if p.rag_documents:
            w = (np.arange(1, p.rag_documents + 1, dtype=float) ** -p.rag_zipf_s
                 if p.rag_law == "zipf" else np.ones(p.rag_documents))
            rag_p = w / w.sum()
        users = []
        heap: list[tuple[float, int]] = []
        for u in range(p.users):
            rng = np.random.default_rng([self.seed, u])
            if u % replicas != replica:
                users.append(None)
                continue
            template = TEMPLATES[tnames[rng.choice(len(tnames), p=tw)]]
            gap = self._gap(rng, template)
            users.append({"rng": rng, "t": template, "qos": classes[u], "turn": p.max_turns,
                          "ctx": (), "session": -1, "n": 0, "i": 0, "gap": gap})
            heapq.heappush(heap, (gap, u))
        while heap:
            nominal, u = heapq.heappop(heap)
            st = users[u]
            rng, (ctx_range, out_range, think_range) = st["rng"], st["t"]
            if st["turn"] >= p.max_turns:      # start a new conversation
                st["turn"], st["session"] = 0, u + p.users * st["n"]
                st["n"] += 1
                sys_id = int(rng.integers(p.system_prompts)) if p.system_prompts else None
                body = int(rng.integers(*ctx_range, endpoint=True))
                segs = []
                if sys_id is not None and p.system_prompt_tokens:
                    segs.append((_ident(1, sys_id), p.system_prompt_tokens))
                    body -= p.system_prompt_tokens   # the template's context includes it
                if rag_p is not None and p.rag_per_conversation:
                    docs = rng.choice(p.rag_documents, size=p.rag_per_conversation, p=rag_p)
                    segs += [(_ident(4, int(d)), p.rag_document_tokens) for d in docs]
                segs.append((_ident(2, st["session"], 0), max(1, body)))
                st["ctx"] = tuple(segs)
            else:
                follow = int(rng.integers(p.follow_up_tokens_min, p.follow_up_tokens_max,
                                          endpoint=True))
                st["ctx"] = (*st["ctx"], (_ident(2, st["session"], st["turn"]), max(1, follow)))
            out = int(rng.integers(*out_range, endpoint=True))
            think = float(rng.uniform(*think_range))
            # think_s is the pause BEFORE this turn (the gap that made its nominal time), so a
            # device that serves instantly sees every turn due at its nominal time, in trace
            # order; the think drawn now is the pause before the next turn
            req = Request(index=(u << 32) + st["i"], user=u, session=st["session"],
                          arrival_s=nominal, think_s=None if p.request_rate > 0 else st["gap"],
                          qos=st["qos"], segments=st["ctx"], output_tokens=out,
                          output_id=_ident(3, st["session"], st["turn"]))
            yield req
            st["i"] += 1
            st["ctx"] = req.context_after()
            st["turn"] += 1
            st["gap"] = gap = self._gap(rng, st["t"]) if p.request_rate > 0 else think
            heapq.heappush(heap, (nominal + gap, u))

    def _gap(self, rng: np.random.Generator, template: tuple) -> float:
        """Seconds to a user's next nominal send: think time, or a Poisson gap (open loop).

        Each user's Poisson stream has rate request_rate / users; together they make a
        Poisson stream of request_rate."""
        p = self.params
        if p.request_rate > 0:
            return float(rng.exponential(p.users / p.request_rate))
        return float(rng.uniform(*template[2]))


def _ident(kind: int, a: int, b: int = 0) -> int:
    """A 64-bit content identity; ``kind`` keeps system prompts, messages and outputs apart."""
    return (kind << 56) ^ (a << 20) ^ b
