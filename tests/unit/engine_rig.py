"""The engine on real tiers, built as a run builds it: shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

from mpi_kvbench.config import Config, load
from mpi_kvbench.context import RankContext
from mpi_kvbench.engine import Engine
from mpi_kvbench.run import engine_settings, policy_factory
from mpi_kvbench.tiers import open_tiers
from mpi_kvbench.workloads.base import Request

CT = 16
TINY_OBJ = CT * 24_576          # tiny-1b, 16 tokens: 384 KiB, already page-aligned


def gb(objects: int, obj: int = TINY_OBJ) -> float:
    return (objects * obj + 1000) / 1e9


def make_config(tmp_path: Path, hbm: int = 0, dram: int = 0, storage: int = 0,
                obj: int = TINY_OBJ, **extra: dict) -> Config:
    base = {
        "run": {"results_dir": str(tmp_path)},
        "model": {"name": "tiny-1b"},
        "kv": {"chunk_tokens": CT},
        "io": {"io_depth": 2},
        "tiers": {"hbm": {"capacity_gb": gb(hbm, obj), "device": "emulated"},
                  "dram": {"capacity_gb": gb(dram, obj)},
                  "storage": {"capacity_gb": gb(storage, obj), "path": str(tmp_path / "kv")}},
    }
    for zero in [lv for lv, n in (("hbm", hbm), ("dram", dram), ("storage", storage)) if not n]:
        base["tiers"][zero]["capacity_gb"] = 0
    return load(None, [base, extra])


class Rig:
    """An engine on freshly opened tiers, built as a run builds it; closes both."""

    def __init__(self, cfg: Config, run_id: str) -> None:
        obj = cfg.geometry.object_bytes
        self.tiers = open_tiers(cfg.tiers, RankContext(run_id=run_id), obj, one_writer=False,
                                group_bcast=lambda x: x)
        self.engine = Engine(engine_settings(cfg), self.tiers, policy_factory(cfg))
        self.obj = obj
        self.ops: list[tuple] = []
        submit = self.engine.pool.submit

        def recording(op, report):
            self.ops.append((op.kind, op.key, op.src, op.src_slot, op.dst, op.dst_slot, op.seq))
            return submit(op, report)

        self.engine.pool.submit = recording

    @property
    def c(self) -> dict[str, int]:
        return self.engine.metrics.counters

    def serve(self, *reqs: Request) -> None:
        for r in reqs:
            assert self.engine.serve(r)

    def close(self) -> None:
        close_all(self.engine, self.tiers)


def close_all(engine: Engine, tiers: list) -> None:
    """Closes an engine, then the tiers it ran on."""
    engine.close()
    for t in tiers:
        t.close()


def request(i: int, segments, output: int = 0, user: int = 0) -> Request:
    return Request(index=i, user=user, session=user, arrival_s=0.0, think_s=None, qos="batch",
                   segments=tuple(segments), output_tokens=output, output_id=10**9 + i)


MICRO = {"models": {"micro": {"layers": 1, "kv_heads": 1, "head_dim": 64, "dtype": "fp8"}},
         "model": {"name": "micro"}, "kv": {"chunk_tokens": 32}}          # 4 KiB objects
