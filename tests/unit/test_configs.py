"""Every shipped config in configs/ is valid (trace workloads given a trace file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpi_kvbench import config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_is_valid(path: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    trace.write_text("")
    raw = config.read_yaml(str(path))
    over = [{"workload": {"trace": str(trace)}}] if raw.get("workload", {}).get(
        "kind", "synthetic") != "synthetic" else []
    cfg = config.load(str(path), over)
    assert cfg.model.bytes_per_token > 0 and cfg.tiers


def test_there_are_configs_for_every_workload_and_mlperf_option() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"default", "sharegpt", "burstgpt", "mooncake", "azure", "mlperf-option1",
            "mlperf-option2", "mlperf-option3"} <= names
