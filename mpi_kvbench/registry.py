"""Plug-ins by name: tiers, eviction policies and workloads (request sources).

Built-ins are a literal name -> "module:Class" table, imported only when chosen, so an
optional dependency (torch for a real HBM tier) loads only when used. Third parties add
plug-ins through the entry-point groups ``mpi_kvbench.tiers``, ``mpi_kvbench.policies``
and ``mpi_kvbench.workloads``; a name that collides with a built-in is refused.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from typing import Any

from mpi_kvbench.errors import ConfigError
from mpi_kvbench.params import build_dataclass, did_you_mean


@functools.cache
def _installed() -> Any:
    """Every installed entry point, read once: each read scans every installed package's
    metadata (about 45 ms here), and there is one registry per kind."""
    return entry_points()


class Registry:
    """A name -> plug-in class table of one kind."""

    def __init__(self, kind: str, builtins: dict[str, str], required: tuple[str, ...]) -> None:
        self.kind = kind
        self._targets = dict(builtins)
        self._required = required
        for ep in _installed().select(group=f"mpi_kvbench.{kind}"):
            if ep.name in self._targets:
                raise ConfigError(f"plug-in {ep.value} tries to replace built-in {kind} {ep.name!r}")
            self._targets[ep.name] = ep.value

    def names(self) -> list[str]:
        return sorted(self._targets)

    def load(self, name: str) -> type:
        """Imports a plug-in class and checks that it has every required operation."""
        if not isinstance(name, str) or name not in self._targets:
            raise ConfigError(f"unknown {self.kind} {name!r}; {did_you_mean(name, self.names())}")
        module_name, _, attr = self._targets[name].partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except ImportError as exc:
            raise ConfigError(
                f"{self.kind} {name!r} needs {exc.name}; install it (pip install -e '.[gpu]' for"
                " torch)") from None
        missing = [op for op in self._required if not callable(getattr(cls, op, None))]
        if missing:
            raise ConfigError(f"{self.kind} {name!r} lacks {', '.join(missing)}")
        return cls

    def params(self, name: str, section: dict[str, Any], where: str) -> Any:
        """Builds the plug-in's ``Params`` dataclass from its config section (minus ``kind``)."""
        cls = self.load(name)
        return build_dataclass(cls.Params, section, where)


TIERS = Registry(
    "tiers",
    {
        "hbm": "mpi_kvbench.tiers.hbm:HbmTier",
        "dram": "mpi_kvbench.tiers.dram:DramTier",
        "storage": "mpi_kvbench.tiers.storage:StorageTier",
        "null": "mpi_kvbench.tiers.null:NullTier",
        "s3": "mpi_kvbench.tiers.s3:S3Tier",
    },
    required=("open", "read", "write", "close", "info"),
)

POLICIES = Registry(
    "policies",
    {"lru": "mpi_kvbench.eviction.lru:LruPolicy"},
    required=("on_insert", "on_access", "on_remove", "victims"),
)

WORKLOADS = Registry(
    "workloads",
    {
        "synthetic": "mpi_kvbench.workloads.synthetic:SyntheticWorkload",
        "sharegpt": "mpi_kvbench.workloads.sharegpt:SharegptWorkload",
        "burstgpt": "mpi_kvbench.workloads.burstgpt:BurstgptWorkload",
        "mooncake": "mpi_kvbench.workloads.mooncake:MooncakeWorkload",
        "azure": "mpi_kvbench.workloads.azure:AzureWorkload",
        "replay": "mpi_kvbench.workloads.replay:ReplayWorkload",
    },
    required=("requests", "info"),
)

