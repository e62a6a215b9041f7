"""The headline figures, each named for what it measures, and the console table.

Rates divide bytes by the measured window: the longest rank's measured phase, which
every rank starts at the same barrier (so it runs from the first start to the last
stop, as IOR does). ``gbps_busy`` is each rank's bytes over the time its tier had I/O
in flight, summed over ranks (``busy_s`` is the mean busy time of a rank). Figures that
every shard of a TP group shares (requests, hits, tokens) are counted once per group:
from the group leaders, and requests only when every shard of the group completed them.
Percentiles come from the merged histograms: pooled over every rank, never a maximum or
mean of per-rank percentiles.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mpi_kvbench import SCHEMA_VERSION, __version__
from mpi_kvbench.metrics import PERCENTILES, Histogram
from mpi_kvbench.reduce import Collected


def pcts_ms(h: Histogram | None) -> dict[str, float | None]:
    if h is None or h.count == 0:
        return {k: None for k in PERCENTILES}
    return {k: round(h.percentile(q) / 1e6, 4) for k, q in PERCENTILES.items()}


def _merged(data: Collected, prefix: str) -> Histogram | None:
    """The sum of every merged histogram named ``prefix`` or ``prefix.<anything>``."""
    rows = [i for i, n in enumerate(data.hist_names) if n == prefix or n.startswith(prefix + ".")]
    if not rows:
        return None
    out = Histogram()
    for i in rows:
        out = out + data.hist(data.hist_names[i])
    return out


def _count(data: Collected, name: str) -> int:
    return int(data.merged[data.hist_names.index(name)].sum()) if name in data.hist_names else 0


def summarize(data: Collected, run: dict[str, Any]) -> dict[str, Any]:
    """The summary.json dictionary; ``run`` carries the run's facts (model, sizes, ...)."""
    window_s = float(data.elapsed_ns.max()) / 1e9 if data.elapsed_ns.size else 0.0
    per_s = 1.0 / window_s if window_s > 0 else math.nan
    leaders = [i for i, e in enumerate(data.env) if e.get("tp_rank", 0) == 0]
    col = data.counter_names

    def per_rank(name: str) -> np.ndarray:
        if name not in col:
            return np.zeros(len(data.env), dtype=np.int64)
        return data.counters[:, col.index(name)]

    tiers: dict[str, Any] = {}
    total_bytes = 0
    for tier in run["tiers"]:
        t: dict[str, Any] = {}
        for op in ("read", "write"):
            nbytes = data.counter(f"{tier}.{op}_bytes")
            total_bytes += nbytes
            t[f"{op}_bytes"] = nbytes
            t[f"{op}_ops"] = data.counter(f"{tier}.{op}_ops")
            t[f"{op}_gbps"] = round(nbytes * per_s / 1e9, 4)
            t[f"{op}_gbps_per_rank"] = [round(float(b) / window_s / 1e9, 4) if window_s else None
                                        for b in per_rank(f"{tier}.{op}_bytes")]
        busy = per_rank(f"{tier}.busy_ns")
        moved = per_rank(f"{tier}.read_bytes") + per_rank(f"{tier}.write_bytes")
        t["busy_s"] = round(float(busy.mean()) / 1e9, 4)
        t["gbps_busy"] = round(float(sum(m / b for m, b in zip(moved, busy, strict=True) if b)), 4) \
            if busy.any() else None
        t["chunk_hits"] = int(per_rank(f"{tier}.chunk_hits")[leaders].sum())
        t["tokens_from_cache_per_s"] = round(
            float(per_rank(f"{tier}.tokens_hit")[leaders].sum()) * per_s, 2)
        t["latency_ms"] = {op: pcts_ms(_merged(data, f"{tier}.{op}")) for op in ("read", "write")}
        tiers[tier] = t

    lookups = int(per_rank("chunk_lookups")[leaders].sum())
    requests = int(per_rank("group.requests_completed")[leaders].sum())
    storage = tiers.get("storage", {})
    cpu_s = data.counter("cpu.process_us") / 1e6
    gen_s = data.counter("cpu.generation_us") / 1e6
    summary = {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "run_name": run["run_name"],
        "complete": not data.errors,
        "errors": data.errors,
        "world_size": len(data.env),
        "tensor_parallel": run["tensor_parallel"],
        "replicas": run["replicas"],
        "nodes": len({e.get("host") for e in data.env}),
        "model": run["model"],
        "bytes_per_token_per_rank": run["bytes_per_token_per_rank"],
        "object_bytes": run["object_bytes"],
        "mla_mode": run.get("mla_mode"),
        "layout": run["layout"],
        "workload": run["workload"],
        "payload_mode": run["payload_mode"],
        "duration_s": round(window_s, 4),
        "requests_completed": requests,
        "requests_per_s": round(requests * per_s, 3),
        "prefix_hit_ratio": round(int(per_rank("chunk_hits")[leaders].sum()) / lookups, 6)
        if lookups else None,
        "chunk_lookups": lookups,
        "o_direct": run.get("o_direct"),
        "hbm_emulated": run.get("hbm_emulated"),
        "potential_caching": run.get("potential_caching"),
        "storage_throughput_gbps": round(
            (storage.get("read_bytes", 0) + storage.get("write_bytes", 0)) * per_s / 1e9, 4),
        "tiers": tiers,
        "demotions": {
            "count": data.counter("demotions"),
            "bytes": data.counter("demotion_bytes"),
            "latency_ms": pcts_ms(_merged(data, "demotion")),
        },
        "promotions": {"count": data.counter("promotions"), "bytes": data.counter("promotion_bytes")},
        "disaggregated": {
            "prefill_groups": run.get("prefill_groups", 0),
            "requests_prefilled": data.counter("requests_prefilled"),
            "handoff_chunks_sent": data.counter("handoff_chunks_sent"),
            "handoff_chunks_read": data.counter("handoff_chunks"),
            "handoff_latency_ms": pcts_ms(_merged(data, "handoff")),
        },
        "latency_ms": {
            "request_e2e": pcts_ms(_merged(data, "request.e2e")),
            "request_queue": pcts_ms(_merged(data, "request.queue")),
            "ttft_proxy": pcts_ms(_merged(data, "request.ttft_proxy")),
            "prefill_storage": pcts_ms(_merged(data, "request.prefill_storage")),
            "group_e2e": pcts_ms(_merged(data, "group.e2e")),
            "group_prefill_storage": pcts_ms(_merged(data, "group.prefill_storage")),
        },
        "qos": {
            cls: {"requests": _count(data, f"group.qos.{cls}.e2e"),
                  "e2e_ms": pcts_ms(_merged(data, f"group.qos.{cls}.e2e")),
                  "prefill_storage_ms": pcts_ms(_merged(data, f"group.qos.{cls}.prefill_storage"))}
            for cls in sorted({n.split(".")[1] for n in col if n.startswith("qos.")})
        },
        "storage_health": storage_health(data, run["qos_metric"], run["qos_targets_ms"]),
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
        },
        "stonewall": {   # IOR-style: the first rank to finish its share stops the others
            "enabled": run.get("stonewall", False),
            "ranks_stopped_early": data.counter("stopped_by_stonewall"),
            "first_rank_done_s": round(float(data.elapsed_ns.min()) / 1e9, 4)
            if data.elapsed_ns.size else None,
            "last_rank_done_s": round(window_s, 4),
        },
        "verify": {"checked": data.counter("verify_checked"),
                   "mismatches": data.counter("verify_mismatches")},
    }
    if run.get("calibration"):
        summary["calibration"] = run["calibration"]
    return summary


def storage_health(data: Collected, metric: str, targets_ms: dict) -> dict[str, Any]:
    """PASS/FAIL per QoS class: each targeted percentile of the class's TP-group latency
    against its target. A percentile needs at least 100 / (100 - q) samples to mean
    anything (20 for P95, 10,000 for P99.99); with fewer it is reported, not judged."""
    classes: dict[str, Any] = {}
    for cls, targets in sorted(targets_ms.items()):
        name = f"group.qos.{cls}.{metric}"
        h = data.hist(name) if name in data.hist_names else None
        n = h.count if h is not None else 0
        if n == 0:
            continue
        checks = {}
        for key, target in targets.items():
            q = PERCENTILES[key]
            measured = h.percentile(q) / 1e6
            judged = n >= 100.0 / (100.0 - q)
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

    lines = [
        f"mpi_kvbench {s['tool_version']}  run {s['run_name']}"
        + ("" if s["complete"] else "  (INCOMPLETE)"),
        f"  {s['world_size']} ranks on {s['nodes']} node(s), TP {s['tensor_parallel']}"
        f" x {s['replicas']} replicas, model {s['model']},"
        f" {s['object_bytes'] / 2**20:.2f} MiB objects",
        f"  {s['requests_completed']} requests in {s['duration_s']:.1f} s"
        f" ({s['requests_per_s']:.2f}/s), prefix hit ratio "
        + ("-" if s["prefix_hit_ratio"] is None else f"{s['prefix_hit_ratio']:.3f}"),
        f"  storage throughput {s['storage_throughput_gbps']:.3f} GB/s (wall clock),"
        f" O_DIRECT {s['o_direct']}, HBM emulated {s['hbm_emulated']}",
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
    health = s["storage_health"]
    lines.append(f"  storage health ({health['metric']} latency per QoS class): {health['verdict']}")
    for cls, c in health["classes"].items():
        checks = ", ".join(
            f"{k} {v['measured_ms']:.1f}/{v['target_ms']} ms" + ("" if v["pass"] is not None else "?")
            for k, v in c["checks"].items())
        lines.append(f"    {cls:12} {c['verdict']:5} ({c['requests']} requests) {checks}")
    if s["errors"]:
        lines.append(f"  errors: {s['errors'][0]}")
    return "\n".join(lines)
