"""What each rank ran on: host, CPU, memory, MPI library, package versions, tier facts."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from mpi_kvbench.context import RankContext

PACKAGES = ("mpi_kvbench", "numpy", "h5py", "mpi4py", "dgen-py", "torch", "pyyaml")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def describe(ctx: RankContext, mpi_library: str, tiers: list[dict[str, Any]]) -> dict[str, Any]:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "rank": ctx.rank, "host": ctx.host, "node": ctx.node, "local_rank": ctx.local_rank,
        "group": ctx.group, "tp_rank": ctx.tp_rank, "pid": os.getpid(),
        "cpu_model": _cpu_model(), "cpus": os.cpu_count(), "memory_bytes": memory_bytes(),
        "python": platform.python_version(), "platform": platform.platform(),
        "mpi_library": mpi_library, "packages": versions, "tiers": tiers,
    }
