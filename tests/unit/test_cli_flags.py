"""Command-line flags reach the config with their types intact."""

from __future__ import annotations

from mpi_kvbench import config
from mpi_kvbench.cli import build_parser, overrides


def load(*argv: str) -> config.Config:
    args = build_parser().parse_args(["run", *argv])
    return config.load(None, overrides(args))


def test_small_and_exponent_floats_stay_numbers() -> None:
    cfg = load("--storage-capacity-gb", "0.00001", "--gpu-mem-gb", "1e-3")
    caps = {t.level: t.capacity_bytes for t in cfg.tiers}
    assert caps["hbm"] == 1_000_000 and caps["storage"] == 10_000   # "1e-05" was a string once


def test_flags_override_and_set_comes_last() -> None:
    cfg = load("--io-depth", "3", "--model", "tiny-1b", "--set", "io.io_depth=5",
               "--tensor-parallel", "2")
    assert cfg.io.io_depth == 5 and cfg.model.name == "tiny-1b" and cfg.kv.tensor_parallel == 2
