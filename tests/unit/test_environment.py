"""What each rank records of its machine, against the system's own accounts of it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import pytest

from mpi_kvbench import environment
from mpi_kvbench.context import RankContext


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="no /proc/meminfo")
def test_memory_is_the_kernels_memtotal() -> None:
    line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal:"))
    assert environment.memory_bytes() == int(line.split()[1]) * 1024


def test_describe_names_this_rank_and_its_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "PACKAGES", ("numpy", "no-such-package-kvbench"))
    ctx = RankContext(rank=3, world_size=4, local_rank=1, node=1, group=1, tp_rank=1, host="h7")
    env = environment.describe(ctx, "lib 1.0", [{"kind": "null"}])
    assert (env["rank"], env["host"], env["node"], env["local_rank"], env["group"], env["tp_rank"]) \
        == (3, "h7", 1, 1, 1, 1)
    assert env["pid"] == os.getpid() and env["python"] == platform.python_version()
    assert env["packages"] == {"numpy": np.__version__, "no-such-package-kvbench": None}
    assert env["mpi_library"] == "lib 1.0" and env["tiers"] == [{"kind": "null"}]
    if Path("/proc/cpuinfo").exists() and "model name" in Path("/proc/cpuinfo").read_text():
        assert env["cpu_model"] in Path("/proc/cpuinfo").read_text()
