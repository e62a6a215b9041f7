"""How much KV a model makes: per token (whole model and one TP rank), per request, per
user session, and the tier sizes that hold a working set of sessions; for sizing tiers
before a run rather than finding out from its drops.

Sizes are the benchmark's own: a request's KV is stored in whole chunks of
``kv.chunk_tokens`` tokens, each chunk one object per rank rounded up to 4 KiB (O_DIRECT),
or one object per layer with ``kv.layout: layer``. A session's KV at its end is its last
prompt and answer: the first prompt plus, per turn, an answer and (after the first) a
follow-up. The working set counts every session's KV apart (no prefix shared between
users, an upper bound); with R replicas each rank holds the sessions of its group.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mpi_kvbench.config import Config
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.workloads.synthetic import TEMPLATES


def first_prompt_mean(p: Any, template: str) -> float:
    """Mean tokens of a conversation's first prompt as the synthetic workload makes it: the
    template's context (uniform, whole tokens) holds the system prompt when there is one,
    and never less than one token besides it; RAG documents come on top."""
    lo, hi = TEMPLATES[template][0]
    system = p.system_prompt_tokens if p.system_prompts else 0
    body = np.maximum(np.arange(lo, hi + 1) - system, 1)
    rag = p.rag_per_conversation * p.rag_document_tokens if p.rag_documents else 0
    return system + float(body.mean()) + rag


def workload_means(cfg: Config) -> dict[str, float]:
    """Mean first-prompt, answer and follow-up tokens and turns of the synthetic users."""
    p = cfg.workload
    weights = {k: float(v) for k, v in p.templates.items() if v}
    total = sum(weights.values())
    return {
        "context_tokens": sum(w * first_prompt_mean(p, k) for k, w in weights.items()) / total,
        "output_tokens": sum(w * sum(TEMPLATES[k][1]) / 2 for k, w in weights.items()) / total,
        "follow_up_tokens": (p.follow_up_tokens_min + p.follow_up_tokens_max) / 2,
        "turns": p.max_turns,
    }


def datasize(cfg: Config, users: int, context_tokens: int | None = None, turns: int | None = None,
             ranks: int | None = None) -> dict[str, Any]:
    """The figures ``datasize`` prints; ``ranks`` (default one TP group) spreads the users."""
    tp = cfg.kv.tensor_parallel
    if ranks is not None and ranks < 1:
        raise ConfigError(f"--ranks {ranks}: give 1 or more (leave it out for one TP group)")
    ranks = ranks or tp
    if users < 1:
        raise ConfigError(f"--users {users}: give 1 or more")
    if ranks % tp:
        raise ConfigError(f"--ranks {ranks}: give a multiple of --tensor-parallel {tp}")
    if cfg.workload_kind == "synthetic":
        means = workload_means(cfg)
    elif context_tokens is None or turns is None:
        raise ConfigError(f"workload.kind={cfg.workload_kind}: give --context-tokens and --turns"
                          " (only synthetic users have known means)")
    else:
        means = {"output_tokens": 0.0, "follow_up_tokens": 0.0}
    context = context_tokens if context_tokens is not None else means["context_tokens"]
    turns = turns if turns is not None else means["turns"]
    if context < 1 or turns < 1:
        raise ConfigError("--context-tokens and --turns: give 1 or more")
    geo = cfg.geometry
    per_rank = cfg.model.bytes_per_token_per_rank(tp)
    session_tokens = context + turns * means["output_tokens"] + (turns - 1) * means["follow_up_tokens"]

    def stored(tokens: float) -> int:   # whole chunks, each objects_per_chunk aligned objects
        return math.ceil(tokens / geo.chunk_tokens) * geo.objects_per_chunk * geo.object_bytes

    replicas = ranks // tp
    users_per_group = math.ceil(users / replicas)
    return {
        "model": cfg.model.name, "tensor_parallel": tp, "ranks": ranks, "users": users,
        "bytes_per_token": cfg.model.bytes_per_token,
        "bytes_per_token_per_rank": per_rank,
        "chunk_tokens": geo.chunk_tokens, "object_bytes": geo.object_bytes,
        "objects_per_chunk": geo.objects_per_chunk,
        "request_tokens": context,
        "request_bytes_per_rank": stored(context),
        "session_tokens": session_tokens, "turns": turns,
        "session_bytes_per_rank": stored(session_tokens),
        "working_set_bytes_per_rank": users_per_group * stored(session_tokens),
        "working_set_bytes_total": users_per_group * replicas * tp * stored(session_tokens),
    }


def render(s: dict[str, Any]) -> str:
    gb = 1e9
    return "\n".join([
        f"{s['model']} at TP {s['tensor_parallel']}: {s['bytes_per_token']:,} KV bytes per token,"
        f" {s['bytes_per_token_per_rank']:,} per rank",
        f"  objects: {s['chunk_tokens']}-token chunks, {s['object_bytes']:,} bytes per object per rank"
        f" ({s['objects_per_chunk']} per chunk)",
        f"  per request ({s['request_tokens']:,.0f} tokens):"
        f" {s['request_bytes_per_rank'] / gb:.4f} GB per rank",
        f"  per user session ({s['turns']} turns, {s['session_tokens']:,.0f} tokens):"
        f" {s['session_bytes_per_rank'] / gb:.4f} GB per rank",
        f"  {s['users']} users on {s['ranks']} ranks: tiers of {s['working_set_bytes_per_rank'] / gb:.3f} GB"
        f" per rank ({s['working_set_bytes_total'] / gb:.3f} GB in all) hold every session",
    ])
