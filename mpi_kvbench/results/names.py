"""Metric names: made and pooled here, and nowhere else.

The engine records under these names, the summary and the analysis module read them
back, so the convention lives in one place. A name is dotted: ``<tier>.<op>.<phase>``
for per-operation latency (``storage.read.prefill``), ``<tier>.<what>`` for a tier's
counters (``storage.read_bytes``), ``<family>.<tier>`` for waterfall moves
(``demotion.hbm``), ``qos.<class>.<what>`` and ``group.qos.<class>.<what>`` per QoS
class. A report "pools" a prefix: it sums the histograms named ``prefix`` and
``prefix.<anything>`` (``storage.read`` pools every phase).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

OPS = ("read", "write")
MOVES = ("demotion", "promotion")          # families of waterfall moves, by source tier
PHASES = ("prefill", "decode", "demote", "handoff", "precondition")

REQUEST_E2E = "request.e2e"
REQUEST_QUEUE = "request.queue"
REQUEST_TTFT = "request.ttft_proxy"
REQUEST_PREFILL_STORAGE = "request.prefill_storage"
HANDOFF = "handoff"
GROUP_METRICS = ("e2e", "prefill_storage")   # per-request TP-group maxima
SERIES_MAX = ("queue_delay_ms_max",)         # 1-s series merged over ranks by MAX, not SUM


def tier_op(tier: str, op: str, phase: str | None = None) -> str:
    """A tier's per-operation latency: ``storage.read.prefill``, or pooled ``storage.read``."""
    return f"{tier}.{op}" if phase is None else f"{tier}.{op}.{phase}"


def tier_counter(tier: str, what: str) -> str:
    """A tier's counter: read_bytes, write_ops, busy_ns, chunk_hits, tokens_hit, drops,
    peak_used_bytes, writes_left_to_writer."""
    return f"{tier}.{what}"


def move(family: str, src_tier: str) -> str:
    """Latency of one demotion or promotion out of ``src_tier`` (read + write)."""
    return f"{family}.{src_tier}"


def qos(cls: str, what: str) -> str:
    """Per-shard figure of one QoS class: ``qos.batch.e2e``, ``qos.batch.requests``."""
    return f"qos.{cls}.{what}"


def group(what: str) -> str:
    """TP-group figure (the slowest shard per request): ``group.e2e``."""
    return f"group.{what}"


def group_qos(cls: str, what: str) -> str:
    return f"group.qos.{cls}.{what}"


def pooled_rows(names: Sequence[str], prefix: str) -> list[int]:
    """Indices of the names a report pools under ``prefix``: itself and ``prefix.*``."""
    return [i for i, n in enumerate(names) if n == prefix or n.startswith(prefix + ".")]


def qos_classes(counter_names: Iterable[str]) -> list[str]:
    """The QoS classes that completed requests (``qos.<class>.requests``), sorted."""
    return sorted({n.split(".")[1] for n in counter_names
                   if n.startswith("qos.") and n.endswith(".requests")})


def split(name: str, tiers: Sequence[str]) -> tuple[str | None, str | None, str | None]:
    """(tier, op, phase) of a histogram name where they apply; a move's op is its family."""
    parts = name.split(".")
    if parts[0] in tiers and len(parts) >= 2 and parts[1] in OPS:
        return parts[0], parts[1], parts[2] if len(parts) > 2 else "all"
    if parts[0] in MOVES:
        return (parts[1] if len(parts) > 1 else None), parts[0], None
    return None, None, None


def rollups(names: Sequence[str], tiers: Sequence[str]) -> list[str]:
    """The pooled names a report shows that are not stored themselves (``storage.read``)."""
    wanted = [tier_op(t, op) for t in tiers for op in OPS] + list(MOVES)
    return [r for r in wanted if r not in names and pooled_rows(names, r)]


def guess_tiers(names: Iterable[str]) -> list[str]:
    """Tier names from histogram names, for a result without a summary."""
    return sorted({n.split(".")[0] for n in names if n.count(".") == 2 and n.split(".")[1] in OPS})
