"""The headline figures, each named for what it measures, and the console table.

Rates divide bytes by the measured window: the longest rank's measured phase, which
every rank starts at the same barrier (so it runs from the first start to the last
stop, as IOR does). ``gbps_busy`` is each rank's bytes over the time its tier had I/O
in flight, summed over ranks (``busy_s`` is the mean busy time of a rank). Figures that
every shard of a TP group shares (requests, hits, tokens) are counted once per group:
from the group leaders, and requests only when every shard of the group completed them.
Percentiles come from the merged histograms: pooled over every rank, never a maximum or
mean of per-rank percentiles; a pooled mean is the merged histograms' exact sum over their
count. Token rates count operations, not bytes (an object is rounded up to 4 KiB): one
storage operation moves one object, ``chunk_tokens / objects_per_chunk`` tokens' worth of
KV, counted on the group leaders only because every shard of a group moves the same tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml

from mpi_kvbench import SCHEMA_VERSION, __version__
from mpi_kvbench.devstats import compare
from mpi_kvbench.metrics import PERCENTILES, Histogram
from mpi_kvbench.results import names
from mpi_kvbench.results.collected import Collected

# Recorded by the engine per rank (plain names, as ``prompt_tokens``): the integral over the
# measured phase of the requests in flight (request x ns), and the most in flight at once.
BATCH_INFLIGHT_NS = "batch.inflight_ns"
BATCH_MAX_INFLIGHT = "batch.max_inflight"
# ... and, in trace mode only, the phase's length on its virtual clock: the in-flight
# integral is on that clock, while ``elapsed_ns`` is the wall time the phase took
BATCH_CLOCK_NS = "batch.clock_ns"
VERIFY_FAILED = 3    # exit status: a read returned what was not written (see README)


@dataclass(frozen=True)
class RunFacts:
    """What the run was (not what it measured): stored in summary.json and result.h5."""

    run_name: str
    run_id: str
    command_line: str
    config_yaml: str
    seed: int
    start_time: str                  # ISO 8601, UTC
    tensor_parallel: int
    replicas: int
    nodes: int
    model: str
    bytes_per_token_per_rank: int
    object_bytes: int
    chunk_tokens: int                # tokens per chunk (kv.chunk_tokens)
    objects_per_chunk: int           # model layers with kv.layout "layer", else 1
    mla_mode: str | None             # None: not an MLA model
    layout: str
    workload: str
    workload_info: dict
    payload_mode: str
    tiers: list[str]                 # levels, fastest first
    calibration: list                # per rank: its calibration figures, or None
    prefill_groups: int
    stonewall: bool
    qos_metric: str
    qos_targets_ms: dict
    verify: bool = False             # io.verify: every read checked in full
    device_fill: dict | None = None  # run.precondition_device_fills: bytes, seconds, GB/s


def pcts_ms(h: Histogram | None) -> dict[str, float | None]:
    if h is None or h.count == 0:
        return {k: None for k in PERCENTILES}
    return {k: round(h.percentile(q) / 1e6, 4) for k, q in PERCENTILES.items()}


def mean_ms(h: Histogram | None) -> float | None:
    """Exact pooled mean (the merged sum over the count): the bucket midpoints would bias it."""
    if h is None or h.count == 0:
        return None
    return round(h.sum_ns / h.count / 1e6, 4)


def _rate(amount: float, window_s: float, digits: int = 2) -> float | None:
    """``amount`` per second of the window; None when nothing was measured (no window)."""
    return round(amount / window_s, digits) if window_s > 0 else None


def groups(data: Collected) -> list[dict[str, Any]]:
    """One entry per TP group, in group order, from its leader's counters: a group's requests
    and batch occupancy are figures the whole group shares, so its leader holds them.
    Occupancy is None when the engine did not record it (``batch.*`` counters absent)."""
    occupancy = BATCH_INFLIGHT_NS in data.counter_names
    peak = BATCH_MAX_INFLIGHT in data.counter_names
    completed = data.per_rank_counter(names.group("requests_completed"))
    inflight_ns = data.per_rank_counter(BATCH_INFLIGHT_NS)
    max_inflight = data.per_rank_counter(BATCH_MAX_INFLIGHT)
    clock_ns = data.per_rank_counter(BATCH_CLOCK_NS)   # zeros when absent (timed runs)
    leaders = sorted((e.get("group", i), i) for i, e in enumerate(data.env) if e.get("tp_rank", 0) == 0)
    out = []
    for group, i in leaders:
        elapsed = int(data.elapsed_ns[i]) if i < data.elapsed_ns.size else 0
        if clock_ns[i] > 0:   # trace mode: the integral's own clock
            elapsed = int(clock_ns[i])
        out.append({
            "group": group,
            "leader_rank": data.env[i].get("rank", i),
            "requests_completed": int(completed[i]),
            "batch_occupancy_mean": round(int(inflight_ns[i]) / elapsed, 4)
            if occupancy and elapsed > 0 else None,
            "batch_occupancy_max": int(max_inflight[i]) if peak else None,
        })
    return out


def _count(data: Collected, name: str) -> int:
    return int(data.merged[data.hist_names.index(name)].sum()) if name in data.hist_names else 0


def _tier_facts(data: Collected, level: str) -> list[dict[str, Any]]:
    """Every rank's ``info()`` of its tier at ``level``."""
    return [t for e in data.env for t in e["tiers"] if t["level"] == level]


def o_direct(data: Collected) -> bool | None:
    """Every storage tier used O_DIRECT (None: no file-backed storage tier)."""
    storage = [t for e in data.env for t in e["tiers"] if "o_direct" in t]   # at any level
    return all(t["o_direct"] for t in storage) if storage else None


def hbm_emulated(data: Collected) -> bool | None:
    """The HBM level is emulated in host memory (None: no ``hbm`` plug-in at that level;
    another plug-in, e.g. ``null`` or ``dram``, may stand there)."""
    hbm = [t for t in _tier_facts(data, "hbm") if "emulated" in t]
    return any(t["emulated"] for t in hbm) if hbm else None


def potential_caching(data: Collected) -> bool:
    """A node's storage working set (its ranks' peak storage bytes) fits in its memory,
    so the page cache could have served what the benchmark read."""
    working_set: dict[str, int] = {}
    peaks = data.per_rank_counter(names.tier_counter("storage", "peak_used_bytes"))
    for e, peak in zip(data.env, peaks, strict=True):
        working_set[e["host"]] = working_set.get(e["host"], 0) + int(peak)
    memory = {e["host"]: e["memory_bytes"] for e in data.env}
    return any(0 < ws < memory[h] for h, ws in working_set.items())


def calibration(per_rank: list | None) -> dict[str, Any] | None:
    """All ranks calibrated at once: all their bytes over the slowest rank's time."""
    per_rank = [c for c in per_rank or [] if c]
    if not per_rank:
        return None
    out = {"block_bytes": per_rank[0]["block_bytes"], "io_depth": per_rank[0]["io_depth"],
           "ranks": len(per_rank)}
    total = sum(c["bytes"] for c in per_rank)
    for op in ("read", "write"):
        slowest = max(c["bytes"] / c[f"{op}_gbps"] for c in per_rank)
        out[f"{op}_gbps"] = round(total / slowest, 4)
    return out


def summarize(data: Collected, run: RunFacts) -> dict[str, Any]:
    """The summary.json dictionary."""
    window_s = float(data.elapsed_ns.max()) / 1e9 if data.elapsed_ns.size else 0.0
    per_s = 1.0 / window_s if window_s > 0 else math.nan
    leaders = [i for i, e in enumerate(data.env) if e.get("tp_rank", 0) == 0]
    per_rank = data.per_rank_counter

    tiers: dict[str, Any] = {}
    total_bytes = 0
    for tier in run.tiers:
        t: dict[str, Any] = {}
        for op in names.OPS:
            nbytes = data.counter(names.tier_counter(tier, f"{op}_bytes"))
            total_bytes += nbytes
            t[f"{op}_bytes"] = nbytes
            t[f"{op}_ops"] = data.counter(names.tier_counter(tier, f"{op}_ops"))
            t[f"{op}_iops"] = _rate(t[f"{op}_ops"], window_s)
            t[f"{op}_gbps"] = round(nbytes * per_s / 1e9, 4)
            t[f"{op}_gbps_per_rank"] = [round(float(b) / window_s / 1e9, 4) if window_s else None
                                        for b in per_rank(names.tier_counter(tier, f"{op}_bytes"))]
        busy = per_rank(names.tier_counter(tier, "busy_ns"))
        moved = sum(per_rank(names.tier_counter(tier, f"{op}_bytes")) for op in names.OPS)
        t["busy_s"] = round(float(busy.mean()) / 1e9, 4)
        t["gbps_busy"] = round(float(sum(m / b for m, b in zip(moved, busy, strict=True) if b)), 4) \
            if busy.any() else None
        t["chunk_hits"] = int(per_rank(names.tier_counter(tier, "chunk_hits"))[leaders].sum())
        t["tokens_from_cache_per_s"] = round(
            float(per_rank(names.tier_counter(tier, "tokens_hit"))[leaders].sum()) * per_s, 2)
        pooled = {op: data.pooled(names.tier_op(tier, op)) for op in names.OPS}
        t["latency_ms"] = {op: {**pcts_ms(h), "mean": mean_ms(h)} for op, h in pooled.items()}
        deletes = data.counter(names.tier_counter(tier, "delete_ops"))
        if deletes:   # evictions deleted on a tier where that is I/O (object storage)
            t["delete_ops"] = deletes
            h = data.pooled(names.tier_op(tier, "delete"))
            t["latency_ms"]["delete"] = {**pcts_ms(h), "mean": mean_ms(h)}
        t.update(capacity(data, tier, run.object_bytes))
        tiers[tier] = t

    lookups = int(per_rank("chunk_lookups")[leaders].sum())
    requests = int(per_rank(names.group("requests_completed"))[leaders].sum())
    storage = tiers.get("storage", {})
    storage_ops = sum(int(per_rank(names.tier_counter("storage", f"{op}_ops"))[leaders].sum())
                      for op in names.OPS)
    tokens_done = sum(int(per_rank(n)[leaders].sum()) for n in ("prompt_tokens", "output_tokens"))
    cpu_s = data.counter("cpu.process_us") / 1e6
    gen_s = data.counter("cpu.generation_us") / 1e6
    summary = {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "run_name": run.run_name,
        "complete": not data.errors,
        "errors": data.errors,
        "world_size": len(data.env),
        "tensor_parallel": run.tensor_parallel,
        "replicas": run.replicas,
        "nodes": len({e.get("host") for e in data.env}),
        "model": run.model,
        "bytes_per_token_per_rank": run.bytes_per_token_per_rank,
        "object_bytes": run.object_bytes,
        "mla_mode": run.mla_mode,
        "layout": run.layout,
        "workload": run.workload,
        "payload_mode": run.payload_mode,
        "duration_s": round(window_s, 4),
        "requests_completed": requests,
        "requests_per_s": round(requests * per_s, 3),
        "prefix_hit_ratio": round(int(per_rank("chunk_hits")[leaders].sum()) / lookups, 6)
        if lookups else None,
        "chunk_lookups": lookups,
        "o_direct": o_direct(data),
        "storage_memory_backed": memory_backed(data),
        "hbm_emulated": hbm_emulated(data),
        "potential_caching": potential_caching(data),
        "storage_throughput_gbps": round(
            (storage.get("read_bytes", 0) + storage.get("write_bytes", 0)) * per_s / 1e9, 4),
        "storage_throughput_tokens_per_s": _rate(
            storage_ops * run.chunk_tokens / run.objects_per_chunk, window_s),
        "avg_throughput_tokens_per_s": _rate(tokens_done, window_s),
        "tiers": tiers,
        "groups": groups(data),
        "demotions": {
            "count": data.counter("demotions"),
            "bytes": data.counter("demotion_bytes"),
            "latency_ms": pcts_ms(data.pooled("demotion")),
        },
        "promotions": {"count": data.counter("promotions"), "bytes": data.counter("promotion_bytes")},
        "disaggregated": {
            "prefill_groups": run.prefill_groups,
            "requests_prefilled": data.counter("requests_prefilled"),
            "handoff_chunks_sent": data.counter("handoff_chunks_sent"),
            "handoff_chunks_read": data.counter("handoff_chunks"),
            "handoff_latency_ms": pcts_ms(data.pooled(names.HANDOFF)),
        },
        "latency_ms": {
            "request_e2e": pcts_ms(data.pooled(names.REQUEST_E2E)),
            "request_queue": pcts_ms(data.pooled(names.REQUEST_QUEUE)),
            "ttft_proxy": pcts_ms(data.pooled(names.REQUEST_TTFT)),
            "prefill_storage": pcts_ms(data.pooled(names.REQUEST_PREFILL_STORAGE)),
            "group_e2e": pcts_ms(data.pooled(names.group("e2e"))),
            "group_prefill_storage": pcts_ms(data.pooled(names.group("prefill_storage"))),
        },
        "qos": {
            cls: {"requests": _count(data, names.group_qos(cls, "e2e")),
                  "e2e_ms": pcts_ms(data.pooled(names.group_qos(cls, "e2e"))),
                  "prefill_storage_ms": pcts_ms(data.pooled(names.group_qos(cls, "prefill_storage")))}
            for cls in names.qos_classes(data.counter_names)
        },
        "storage_health": storage_health(data, run.qos_metric, run.qos_targets_ms),
        "cpu": {
            "process_s": round(cpu_s, 3),
            "generation_s": round(gen_s, 3),
            "generated_bytes": data.counter("payload.generated_bytes"),
            "io_path_s_per_gb": round((cpu_s - gen_s) / (total_bytes / 1e9), 4)
            if total_bytes else None,
            "process_s_per_gb": round(cpu_s / (total_bytes / 1e9), 4) if total_bytes else None,
            "generation_s_per_gb": round(gen_s / (data.counter("payload.generated_bytes") / 1e9), 4)
            if data.counter("payload.generated_bytes") else None,
            "payload_stalls": data.counter("payload.stalls"),
            "payload_stall_s": round(data.counter("payload.stall_ns") / 1e9, 3),
        },
        "stonewall": {   # IOR-style: the first rank to finish its share stops the others
            "enabled": run.stonewall,
            "ranks_stopped_early": data.counter("stopped_by_stonewall"),
            "first_rank_done_s": round(float(data.elapsed_ns.min()) / 1e9, 4)
            if data.elapsed_ns.size else None,
            "last_rank_done_s": round(window_s, 4),
        },
        "verify": verify(data, run.verify),
        "device_io": device_io(data),
    }
    if run.device_fill:
        summary["precondition_device_fill"] = run.device_fill
    calibrated = calibration(run.calibration)
    if calibrated:
        summary["calibration"] = calibrated
    summary["provenance"] = provenance(data, run)
    summary.update(footprint(data))
    return summary


def provenance(data: Collected, run: RunFacts) -> dict[str, Any]:
    """What ran, where and when, so summary.json stands alone: the command line, every
    setting in force, the UTC start and end, hosts, software, and per tier level the
    plug-in, the capacity per rank, paths and file-system types."""
    env = data.env
    tiers: dict[str, Any] = {}
    for level in run.tiers:
        facts = _tier_facts(data, level)
        tiers[level] = {
            "kind": sorted({t.get("kind") or "?" for t in facts}),
            "capacity_gb_per_rank": sorted({round(t.get("capacity_bytes", 0) / 1e9, 6) for t in facts}),
            "slots_per_rank": sorted({t.get("slots", 0) for t in facts}),
            "paths": [t["path"] for t in facts if t.get("path")],
            "fs_types": sorted({t["fs_type"] for t in facts if t.get("fs_type")}),
        }
    first = env[0] if env else {}
    return {
        "command_line": run.command_line,
        "config": yaml.safe_load(run.config_yaml) if run.config_yaml else None,
        "start_utc": run.start_time,
        "end_utc": datetime.now(UTC).isoformat(),
        "hosts": sorted({e.get("host") for e in env}),
        "tool_version": __version__,
        "python": first.get("python"),
        "mpi_library": first.get("mpi_library"),
        "packages": first.get("packages"),
        "tiers": tiers,
    }


def capacity(data: Collected, level: str, object_bytes: int) -> dict[str, Any]:
    """Per rank, what the config asked of a tier and what the smallest rank used (whole
    objects, after free space and the TP group's smallest cut it)."""
    facts = [t for t in _tier_facts(data, level) if "slots" in t]
    if not facts:   # facts of an older result, or none of this tier
        return {}
    slots = min(int(t["slots"]) for t in facts)
    requested = max(int(t.get("requested_bytes", t["capacity_bytes"])) for t in facts)
    return {"capacity_gb_requested": round(requested / 1e9, 6),
            "capacity_gb_used": round(slots * object_bytes / 1e9, 6), "slots": slots}


def memory_backed(data: Collected) -> str | None:
    """The memory file system (tmpfs ...) under a storage tier that allow_memory let through."""
    kinds = sorted({t["memory_backed"] for t in _tier_facts(data, "storage") if t.get("memory_backed")})
    return ", ".join(kinds) or None


def truncated_slabs(data: Collected) -> int:
    """Storage slabs shorter at the end of the run than their furthest write."""
    return sum(1 for t in _tier_facts(data, "storage")
               if t.get("slab_bytes") is not None and t["slab_bytes"] < t.get("written_end", 0))


def verify(data: Collected, enabled: bool) -> dict[str, Any]:
    """Full checks (``io.verify``), the stamp check of every read, and the slab sizes;
    ``verdict`` fail when any of them found a read of what was not written."""
    out = {"enabled": enabled, "checked": data.counter("verify_checked"),
           "mismatches": data.counter("verify_mismatches"),
           "stamps_checked": data.counter("stamp_checked"),
           "stamp_mismatches": data.counter("stamp_mismatches"),
           "slabs_truncated": truncated_slabs(data)}
    bad = out["mismatches"] + out["stamp_mismatches"] + out["slabs_truncated"]
    out["verdict"] = "fail" if bad else "pass" if enabled else "off"
    return out


def verify_failure(v: dict[str, Any]) -> str:
    """The console's one line about a failed verdict."""
    said = []
    if v["mismatches"]:
        said.append(f"{v['mismatches']} of {v['checked']} verified reads differ from what was written")
    if v["stamp_mismatches"]:
        said.append(f"{v['stamp_mismatches']} of {v['stamps_checked']} reads returned a region"
                    " never written or truncated (stamps missing)")
    if v["slabs_truncated"]:
        said.append(f"{v['slabs_truncated']} slab file(s) shorter than written")
    return "; ".join(said) + "; the storage returned wrong data, so its figures do not count"


def device_io(data: Collected) -> dict[str, Any] | None:
    """The storage disks' own counters over the measured window (read by the first rank of
    each node) beside the tool's storage bytes of that node's ranks. None: no storage tier."""
    reads = data.per_rank_counter(names.tier_counter("storage", "read_bytes"))
    writes = data.per_rank_counter(names.tier_counter("storage", "write_bytes"))
    nodes = []
    for e in data.env:
        d = e.get("device_io")
        if not d:
            continue
        mates = [i for i, f in enumerate(data.env) if f.get("node") == e.get("node")]
        nodes.append({"host": e.get("host"), "devices": d["devices"],
                      "read_bytes": d["read_bytes"], "write_bytes": d["write_bytes"],
                      "tool_read_bytes": int(sum(reads[i] for i in mates)),
                      "tool_write_bytes": int(sum(writes[i] for i in mates)), "n/a": d["n/a"]})
    if not nodes:
        return None
    seen = [n for n in nodes if n["n/a"] is None]
    if not seen:
        return {"n/a": nodes[0]["n/a"], "read_bytes": None, "write_bytes": None,
                "tool_read_bytes": None, "tool_write_bytes": None, "read_ratio": None,
                "write_ratio": None, "ratio": None, "warning": None, "nodes": nodes}
    out = {k: sum(n[k] for n in seen)
           for k in ("read_bytes", "write_bytes", "tool_read_bytes", "tool_write_bytes")}
    return {"n/a": None, **out, **compare(out["read_bytes"], out["write_bytes"],
                                          out["tool_read_bytes"], out["tool_write_bytes"]),
            "nodes": nodes}


SETUP_PHASES = ("imports", "start", "workload", "calibration", "tiers", "engine",
                "trace_distribution", "precondition", "warmup", "sync")   # in pipeline order


def footprint(data: Collected) -> dict[str, Any]:
    """Set-up phase times (the slowest rank's, s) and resident memory per rank (the
    counters ``setup.<phase>_us``, ``peak_rss_bytes``, ``memory.<stage>_rss_bytes``)."""
    total = [n for n in data.counter_names if n.startswith("setup.") and n.endswith("_us")]
    order = {p: i for i, p in enumerate(SETUP_PHASES)}
    total.sort(key=lambda n: order.get(n[len("setup."):-len("_us")], len(order)))
    setup = {n[len("setup."):-len("_us")]: round(float(data.per_rank_counter(n).max()) / 1e6, 3)
             for n in total}
    if total:   # per rank, then the slowest rank: the phases' maxima may be different ranks
        setup["total"] = round(float(sum(data.per_rank_counter(n) for n in total).max()) / 1e6, 3)
    peak = data.per_rank_counter("peak_rss_bytes")
    stages = {n[len("memory."):-len("_rss_bytes")]: int(data.per_rank_counter(n).max())
              for n in data.counter_names if n.startswith("memory.") and n.endswith("_rss_bytes")}
    return {"setup_s": setup,
            "peak_rss_bytes": {"max": int(peak.max()) if peak.size else 0,
                               "per_rank": [int(v) for v in peak]},
            "rss_bytes_after": stages}


def min_samples(q: float) -> int:
    """Samples a q-th percentile needs to mean anything: 100 / (100 - q), a whole number
    (the float quotient for 99.9 is 1000.0000000000568, which would ask for 1,001)."""
    return math.ceil(round(100.0 / (100.0 - q), 6))


def storage_health(data: Collected, metric: str, targets_ms: dict) -> dict[str, Any]:
    """PASS/FAIL per QoS class: each targeted percentile of the class's TP-group latency
    against its target. A percentile needs at least 100 / (100 - q) samples to mean
    anything (20 for P95, 10,000 for P99.99); with fewer it is reported, not judged."""
    classes: dict[str, Any] = {}
    for cls, targets in sorted(targets_ms.items()):
        name = names.group_qos(cls, metric)
        h = data.hist(name) if name in data.hist_names else None
        n = h.count if h is not None else 0
        if n == 0:
            continue
        checks = {}
        for key, target in targets.items():
            q = PERCENTILES[key]
            measured = h.percentile(q) / 1e6
            judged = n >= min_samples(q)
            checks[key] = {"measured_ms": round(measured, 3), "target_ms": target,
                           "pass": measured <= target if judged else None,
                           "samples": n}
        verdicts = [c["pass"] for c in checks.values() if c["pass"] is not None]
        verdict = "NOT ENOUGH SAMPLES" if not verdicts else "PASS" if all(verdicts) else "FAIL"
        classes[cls] = {"verdict": verdict, "requests": n, "checks": checks}
    judged = [c["verdict"] for c in classes.values() if c["verdict"] != "NOT ENOUGH SAMPLES"]
    overall = "NO DATA" if not judged else "PASS" if all(v == "PASS" for v in judged) else "FAIL"
    return {"verdict": overall, "metric": metric, "classes": classes}


def render(s: dict[str, Any]) -> str:
    """A plain-text table of the headline figures, for the console."""
    def ms(d: dict, key: str = "p50") -> str:
        v = d.get(key)
        return "-" if v is None else f"{v:.3f}"

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    lines = [
        f"mpi_kvbench {s['tool_version']}  run {s['run_name']}"
        + ("" if s["complete"] else "  (INCOMPLETE)"),
        f"  {s['world_size']} ranks on {s['nodes']} node(s), TP {s['tensor_parallel']}"
        f" x {s['replicas']} replicas, model {s['model']},"
        f" {s['object_bytes'] / 1e6:.2f} MB objects",
        f"  {s['requests_completed']} requests in {s['duration_s']:.1f} s"
        f" ({s['requests_per_s']:.2f}/s), prefix hit ratio "
        + ("-" if s["prefix_hit_ratio"] is None else f"{s['prefix_hit_ratio']:.3f}"),
        f"  storage throughput {s['storage_throughput_gbps']:.3f} GB/s (wall clock),"
        f" {num(s.get('storage_throughput_tokens_per_s'))} tokens/s moved,"
        f" {num(s.get('avg_throughput_tokens_per_s'))} tokens/s served",
        f"  O_DIRECT {s['o_direct']}, HBM emulated {s['hbm_emulated']}",
        *_truth(s),
        "",
        f"  {'tier':8} {'read GB/s':>10} {'write GB/s':>10} {'read p50 ms':>12}"
        f" {'read p99 ms':>12} {'write p50 ms':>13} {'write p99 ms':>13}",
    ]
    for name, t in s["tiers"].items():
        lat = t["latency_ms"]
        lines.append(
            f"  {name:8} {t['read_gbps']:>10.3f} {t['write_gbps']:>10.3f}"
            f" {ms(lat['read']):>12} {ms(lat['read'], 'p99'):>12}"
            f" {ms(lat['write']):>13} {ms(lat['write'], 'p99'):>13}")
    lat = s["latency_ms"]
    lines += [
        "",
        f"  request e2e p50/p99 ms: {ms(lat['group_e2e'])} / {ms(lat['group_e2e'], 'p99')}"
        f"   prefill storage p50/p99 ms: {ms(lat['group_prefill_storage'])}"
        f" / {ms(lat['group_prefill_storage'], 'p99')}",
        f"  demotions {s['demotions']['count']} ({s['demotions']['bytes'] / 1e9:.2f} GB),"
        f" p50 {ms(s['demotions']['latency_ms'])} ms",
        f"  CPU: {s['cpu']['io_path_s_per_gb']} s/GB on the I/O path,"
        f" {s['cpu']['generation_s_per_gb']} s/GB generating payload",
    ]
    fill = s.get("precondition_device_fill")
    if fill:
        lines.append(f"  precondition: {fill['fills']:g} device fills, {fill['bytes'] / 1e9:.3f} GB written"
                     f" in {fill['seconds']:.1f} s ({fill['gbps']} GB/s), before measuring")
    setup = s.get("setup_s") or {}
    if setup:
        lines.append(f"  set-up {setup.get('total', 0):.1f} s ("
                     + ", ".join(f"{k} {v:.1f}" for k, v in setup.items() if k != "total")
                     + f"), peak RSS per rank {s['peak_rss_bytes']['max'] / 2**20:,.0f} MiB")
    health = s["storage_health"]
    lines.append(f"  storage health ({health['metric']} latency per QoS class): {health['verdict']}")
    for cls, c in health["classes"].items():
        checks = ", ".join(
            f"{k} {v['measured_ms']:.1f}/{v['target_ms']} ms" + ("" if v["pass"] is not None else "?")
            for k, v in c["checks"].items())
        lines.append(f"    {cls:12} {c['verdict']:5} ({c['requests']} requests) {checks}")
    if any(v["pass"] is None for c in health["classes"].values() for v in c["checks"].values()):
        lines.append("    (measured/target ms; '?' = too few samples to judge that percentile: P95 needs"
                     " 20, P99 100, P99.9 1,000, P99.99 10,000; NOT ENOUGH SAMPLES = no percentile"
                     " of the class could be judged)")
    if s["errors"]:
        lines.append(f"  errors: {s['errors'][0]}")
    return "\n".join(lines)


def _truth(s: dict[str, Any]) -> list[str]:
    """Console lines: memory posing as storage, the device's own count, the verify verdict."""
    out = []
    if s.get("storage_memory_backed"):
        out.append(f"  storage is {s['storage_memory_backed']} (memory), allowed by"
                   " tiers.storage.allow_memory: its figures are RAM, not a device")
    dev = s.get("device_io")
    if dev and dev["n/a"]:
        out.append(f"  device I/O: n/a ({dev['n/a']})")
    elif dev:
        devices = ", ".join(sorted({d for n in dev["nodes"] for d in n["devices"]}))
        ratio = " / ".join("-" if dev[k] is None else f"{dev[k]:.3f}x" for k in ("read_ratio", "write_ratio"))
        out.append(f"  device I/O ({devices}): read {dev['read_bytes'] / 1e9:.3f} GB, write"
                   f" {dev['write_bytes'] / 1e9:.3f} GB; read/write {ratio} the tool's storage bytes")
        if dev["warning"]:
            out.append(f"  warning: {dev['warning']}")
    v = s.get("verify")
    if v:
        out.append(f"  verify {v['verdict']}: {v['checked']} reads checked in full,"
                   f" {v['stamps_checked']} stamp-checked"
                   + (f"; {verify_failure(v)}" if v["verdict"] == "fail" else ""))
    return out
