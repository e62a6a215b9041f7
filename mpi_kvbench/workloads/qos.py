"""QoS classes and weighted mixes, shared by every workload (DESIGN.md section 9)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mpi_kvbench.errors import ConfigError
from mpi_kvbench.params import did_you_mean

QOS_CLASSES = ("interactive", "responsive", "batch")
DEFAULT_MIX = {"interactive": 0.15, "responsive": 0.35, "batch": 0.50}


def default_mix() -> dict[str, float]:
    """A fresh copy of the reference's mix, as a dataclass default factory."""
    return dict(DEFAULT_MIX)


def weights(mix: dict, valid: Sequence[str], field: str) -> tuple[list[str], np.ndarray]:
    """The names with a positive weight and their shares (summing to 1); checks ``mix``."""
    for name, w in mix.items():
        if name not in valid:
            raise ConfigError(f"workload.{field}.{name}: unknown; {did_you_mean(name, valid)}")
        if isinstance(w, bool) or not isinstance(w, int | float) or not w >= 0:
            raise ConfigError(f"workload.{field}.{name}={w!r}: give a weight >= 0")
    names = [n for n in mix if mix[n] > 0]
    total = sum(mix[n] for n in names)
    if not names or not math.isfinite(total):
        raise ConfigError(f"workload.{field}: give at least one positive, finite weight")
    return names, np.array([mix[n] / total for n in names], dtype=float)


def parse_mix(mix: dict) -> tuple[list[str], list[float]]:
    """The QoS classes with a positive weight and their cumulative shares (for ``bisect``)."""
    names, shares = weights(mix, QOS_CLASSES, "qos_mix")
    bounds, acc = [], 0.0
    for share in shares.tolist():
        acc += share
        bounds.append(acc)
    return names, bounds
