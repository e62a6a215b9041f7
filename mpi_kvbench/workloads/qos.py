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


def user_classes(users: int, mix: dict, seed: int) -> list[str]:
    """Each synthetic user's QoS class: the mix's shares as whole numbers of users (every
    class with a positive weight gets at least one user when there are enough users, so
    every SLO gets judged), handed out over a seeded shuffle of the users. A draw per
    user would leave out a 15 % class one time in 25 with 20 users."""
    names, shares = weights(mix, QOS_CLASSES, "qos_mix")
    k = len(names)
    base = [1] * k if users >= k else [0] * k
    ideal = np.maximum(shares * users - np.array(base), 0.0)
    rest = users - sum(base)
    target = ideal / ideal.sum() * rest if ideal.sum() > 0 else shares * rest
    counts = np.floor(target).astype(int)
    for i in np.argsort(-(target - counts), kind="stable")[: rest - int(counts.sum())]:
        counts[i] += 1
    order = np.random.default_rng([seed, 0x905]).permutation(users)
    out = [""] * users
    start = 0
    for name, n in zip(names, (counts + np.array(base)).tolist(), strict=True):
        for u in order[start:start + n]:
            out[int(u)] = name
        start += n
    return out
