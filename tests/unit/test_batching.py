"""Continuous batching in one process: many requests in flight on one rank, planned in
admission order, their operations ordered per slot, admitted fifo or by priority."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from engine_rig import MICRO, make_config

from mpi_kvbench import config
from mpi_kvbench.engine import StopReason
from mpi_kvbench.registry import WORKLOADS
from mpi_kvbench.workloads.base import Request
from mpi_kvbench.workloads.qos import DEFAULT_MIX, QOS_CLASSES, user_classes

OPEN = {"templates": {"chatbot": 1, "coding": 0, "document": 0}, "request_rate": 1e6,
        "max_turns": 3, "system_prompts": 2}      # open loop: every request due at once


def serve_trace(tmp_path: Path, rig, name: str, n: int, engine: dict, users: int = 12,
                sizes: tuple[int, int, int] = (6, 10, 40), io: dict | None = None, **extra):
    """Serves ``n`` requests of open-loop users on tiers of ``sizes`` 4 KiB objects."""
    hbm, dram, storage = sizes
    cfg = make_config(tmp_path, hbm=hbm, dram=dram, storage=storage, obj=4096,
                      **{**MICRO, "engine": engine, "io": {"io_depth": 4, **(io or {})},
                         "workload": {**OPEN, "users": users}, **extra})
    r = rig(cfg, name)
    workload = WORKLOADS.load(cfg.workload_kind)(cfg.workload, cfg.run.seed)
    r.engine.replay(workload.requests(), None, max_requests=n)
    r.engine.end_phase()
    assert r.engine.completed == n
    return r


def plain(counters: dict) -> dict:
    """The counters that do not depend on timing."""
    return {k: v for k, v in counters.items()
            if not k.endswith("_ns") and not k.startswith(("cpu.", "payload.", "batch."))}


def test_a_batch_plans_the_same_operations_as_one_request_at_a_time(tmp_path: Path, rig) -> None:
    one = serve_trace(tmp_path, rig, "one", 30, {"max_batch": 1})
    many = serve_trace(tmp_path, rig, "many", 30, {"max_batch": 8})
    assert one.c["batch.max_inflight"] == 1 and many.c["batch.max_inflight"] > 1
    assert sorted(one.ops) == sorted(many.ops)          # the same operations, slots and keys
    assert plain(one.c) == plain(many.c)
    assert one.c["demotions"] > 0 and one.c.get("storage.drops", 0) > 0   # eviction was heavy


def test_requests_in_flight_never_see_each_others_slots(tmp_path: Path, rig) -> None:
    """Heavy eviction with eight requests in flight: every read (hits, demotions,
    promotions) returns exactly the object its plan expects, on real memory and files."""
    r = serve_trace(tmp_path, rig, "v", 60, {"max_batch": 8, "promotion": "hbm"}, users=16,
                    sizes=(16, 48, 200), io={"verify": True, "io_depth": 6})
    assert r.c["batch.max_inflight"] > 2
    assert r.c["verify_checked"] > 100
    assert r.c.get("verify_mismatches", 0) == 0
    assert r.c["demotions"] > 20 and r.c["promotions"] > 0 and r.c["storage.drops"] > 0


@pytest.mark.parametrize("scheduling", ["fifo", "priority"])
def test_priority_admits_the_most_urgent_class_first(tmp_path: Path, rig, scheduling: str) -> None:
    """One request at a time on a slow device, 24 requests due at once, batch ones first
    in the trace: with priority every interactive request is done before any batch one
    starts; fifo serves them in trace order."""
    slow = {"tiers": {"hbm": {"capacity_gb": 0}, "dram": {"capacity_gb": 0},
                      "storage": {"kind": "null", "capacity_gb": 1.0, "latency_us": 2000}}}
    cfg = make_config(tmp_path, storage=1000, obj=4096,
                      **{**MICRO, **slow, "engine": {"max_batch": 1, "scheduling": scheduling}})
    r = rig(cfg, scheduling)
    classes = ["batch", "responsive", "interactive"]
    reqs = [Request(index=i, user=i, session=i, arrival_s=0.0, think_s=None, qos=classes[i % 3],
                    segments=((1000 + i, 64),), output_tokens=0, output_id=i) for i in range(24)]
    assert r.engine.replay(iter(reqs)) is StopReason.SHARE
    hist = r.engine.metrics.hist
    urgent_last, batch_first = hist["qos.interactive.e2e"].max_ns, hist["qos.batch.e2e"].min_ns
    if scheduling == "priority":
        assert urgent_last < hist["qos.responsive.e2e"].min_ns and urgent_last < batch_first
        assert hist["qos.responsive.e2e"].max_ns < batch_first
    else:
        assert batch_first < urgent_last      # the first batch request went first


def test_every_qos_class_has_users_in_the_default_run() -> None:
    cfg = config.load()
    workload = WORKLOADS.load(cfg.workload_kind)(cfg.workload, cfg.run.seed)
    seen = Counter(req.qos for req, _ in zip(workload.requests(), range(500), strict=False))
    assert set(seen) == set(QOS_CLASSES)


def test_user_classes_follow_the_mix_in_whole_users() -> None:
    for users in (3, 7, 20, 101):
        got = Counter(user_classes(users, DEFAULT_MIX, 42))
        assert sum(got.values()) == users and set(got) == set(QOS_CLASSES)
        for cls, share in DEFAULT_MIX.items():
            assert abs(got[cls] - share * users) < 1.0 + 1e-9 or got[cls] == 1
    assert Counter(user_classes(2, DEFAULT_MIX, 1)) == {"batch": 1, "responsive": 1}
    assert user_classes(20, DEFAULT_MIX, 1) != user_classes(20, DEFAULT_MIX, 2)   # seeded
    assert user_classes(20, {"interactive": 0, "batch": 1}, 1) == ["batch"] * 20
    assert np.all([c in QOS_CLASSES for c in user_classes(50, DEFAULT_MIX, 3)])
