"""Every shipped config in configs/ is valid (trace workloads given a trace file)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mpi_kvbench import config
from mpi_kvbench.workloads.qos import DEFAULT_MIX
from mpi_kvbench.workloads.synthetic import SyntheticWorkload
from mpi_kvbench.workloads.tracefile import TraceParams

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


def test_the_core_defaults_live_only_in_default_yaml() -> None:
    """No section dataclass carries a default of its own (a second value that could drift),
    and default.yaml gives every field of every section."""
    raw = config.default_dict()
    for name, cls in config.SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, \
                f"{name}.{f.name} has a dataclass default"
            assert f.name in raw[name], f"default.yaml lacks {name}.{f.name}"


def test_a_core_key_missing_from_the_defaults_is_an_error_not_a_silent_value() -> None:
    raw = config.default_dict()
    del raw["io"]["io_depth"]
    with pytest.raises(config.ConfigError, match=r"io\.io_depth: missing"):
        config.validate(raw)


def test_every_workload_draws_qos_from_the_one_default_mix() -> None:
    assert SyntheticWorkload.Params().qos_mix == TraceParams().qos_mix == DEFAULT_MIX
    assert sum(DEFAULT_MIX.values()) == pytest.approx(1.0)
